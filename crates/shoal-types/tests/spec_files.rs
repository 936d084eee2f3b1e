//! Data-driven spec tests: every file in `specs/valid` parses to its
//! `.expected.json`; every file in `specs/invalid` fails with the message
//! its first line (`# error: ...`) names.

// The test harness reads the spec files; the crate itself does no I/O.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::path::Path;

use shoal_types::parse_app;

fn files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/specs")
        .join(dir);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .expect("spec dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| !path.to_string_lossy().ends_with(".expected.json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no spec files in {}", dir.display());
    files
}

#[test]
fn valid_specs_parse_to_their_expected_form() {
    for path in files("valid") {
        let body = fs::read(&path).expect("read spec");
        let spec = parse_app(&body).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let expected_path = path.with_extension("expected.json");
        let expected: serde_json::Value =
            serde_json::from_slice(&fs::read(&expected_path).expect("expected file"))
                .expect("expected JSON");
        assert_eq!(
            serde_json::to_value(&spec).expect("serializes"),
            expected,
            "{}",
            path.display()
        );
        // What shoal prints, it accepts again unchanged.
        let again = parse_app(&serde_json::to_vec(&spec).expect("serializes")).expect("round trip");
        assert_eq!(again, spec, "{} does not round-trip", path.display());
    }
}

#[test]
fn invalid_specs_fail_with_the_named_error() {
    for path in files("invalid") {
        let body = fs::read_to_string(&path).expect("read spec");
        let expected = body
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# error: "))
            .unwrap_or_else(|| panic!("{} lacks its `# error:` line", path.display()));
        let spec_text = if body
            .lines()
            .nth(1)
            .is_some_and(|line| line.starts_with('{'))
        {
            body.split_once('\n')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default()
        } else {
            body.clone()
        };
        match parse_app(spec_text.as_bytes()) {
            Ok(spec) => panic!("{} was accepted: {spec:?}", path.display()),
            Err(error) => assert!(
                error.to_string().contains(expected),
                "{}: expected `{expected}` in:\n{error}",
                path.display()
            ),
        }
    }
}

#[test]
fn a_body_over_the_limit_is_refused_before_parsing() {
    let body = vec![b' '; shoal_types::SPEC_BYTES_MAX + 1];
    let error = parse_app(&body).expect_err("too large");
    assert!(error.to_string().contains("more than the limit"), "{error}");
}

/// Writes the expected form of `SHOAL_SPEC_WRITE` (a file in specs/valid)
/// for review, when that variable is set.
#[test]
fn write_expected_form_on_request() {
    let Ok(name) = std::env::var("SHOAL_SPEC_WRITE") else {
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/specs/valid")
        .join(&name);
    let spec = parse_app(&fs::read(&path).expect("read spec")).expect("valid spec");
    let text = serde_json::to_string_pretty(&spec).expect("serializes");
    fs::write(path.with_extension("expected.json"), text + "\n").expect("write");
}
