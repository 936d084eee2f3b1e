//! Data-driven tests of the state machine: every file in `tests/cases/` is
//! a run of log entries written as YAML, with what applying each one must
//! give and an excerpt of the state they leave.
//!
//! ```yaml
//! # What the case shows (every case file starts with a comment).
//! defs:                  # optional and never read: room for YAML anchors
//!   node: &node {addr: "n1:7950", os: Linux, arch: x86_64, cpus: 2,
//!                memory_total_bytes: 1073741824, started_at_ms: 0, status: alive}
//! steps:
//!   - entry:             # an `Entry` as the log stores it
//!       version: 2
//!       at_ms: 10
//!       proposer: n1
//!       leader: n1
//!       command: {type: register_node, node: {<<: *node, name: n1}}
//!     outcome: {outcome: node_registered}  # the `Outcome`, compared exactly;
//!     # or  error: SUBSTRING  refused: the node goes on applying;
//!     # or  halt: SUBSTRING   the node must stop here: nothing may change.
//!     state: {/nodes/n1/status: alive}     # optional, after this step
//! state:                 # after the last step: JSON pointer (RFC 6901)
//!   /nodes/n1/status: alive                # into the state as JSON: value
//! absent: [/nodes/n2]    # pointers that must lead nowhere
//! len: {/nodes: 1}       # members of an object or array
//! ```
//!
//! Each entry goes YAML → JSON text → [`Entry`], the way a log entry is
//! read, and is applied at index 1, 2, 3, ...; an entry that halts the node
//! takes no index, so the next one is applied at the same index.
//!
//! After every step the harness also checks what must hold whatever the
//! case says: a halted entry left the state byte for byte as it was; a
//! refused one changed nothing but `applied_index` (and `log_version`, the
//! newest format applied); otherwise `applied_index` is the entry's index;
//! the invariants hold; and a snapshot restores to an equal state, indexes
//! derived from it included.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use shoal_state::{Entry, State};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// Anchors for the steps to refer to; not read otherwise.
    #[serde(default, rename = "defs")]
    _defs: serde::de::IgnoredAny,
    steps: Vec<Step>,
    #[serde(default)]
    state: BTreeMap<String, Value>,
    #[serde(default)]
    absent: Vec<String>,
    #[serde(default)]
    len: BTreeMap<String, usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    entry: Value,
    #[serde(default)]
    outcome: Option<Value>,
    #[serde(default)]
    error: Option<Substrings>,
    #[serde(default)]
    halt: Option<Substrings>,
    #[serde(default)]
    state: BTreeMap<String, Value>,
    #[serde(default)]
    absent: Vec<String>,
    #[serde(default)]
    len: BTreeMap<String, usize>,
}

/// Parts of an error message: one, or a list of them all to be found.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Substrings {
    One(String),
    All(Vec<String>),
}

impl Substrings {
    fn parts(&self) -> &[String] {
        match self {
            Substrings::One(part) => std::slice::from_ref(part),
            Substrings::All(parts) => parts,
        }
    }
}

/// What a step expects of applying its entry.
enum Expect<'a> {
    Outcome(&'a Value),
    /// Refused, with a message containing these; the node goes on.
    Error(&'a [String]),
    /// The node must stop, with a message containing these.
    Halt(&'a [String]),
}

impl Step {
    fn expect(&self) -> Result<Expect<'_>, String> {
        // An empty part would match any message.
        let usable = |parts: &[String]| !parts.is_empty() && parts.iter().all(|p| !p.is_empty());
        let error = self.error.as_ref().map(Substrings::parts);
        let halt = self.halt.as_ref().map(Substrings::parts);
        match (&self.outcome, error, halt) {
            (Some(outcome), None, None) => Ok(Expect::Outcome(outcome)),
            (None, Some(error), None) if usable(error) => Ok(Expect::Error(error)),
            (None, None, Some(halt)) if usable(halt) => Ok(Expect::Halt(halt)),
            _ => Err(
                "a step needs exactly one of `outcome`, `error` or `halt` (the last two non-empty parts of the message)"
                    .into(),
            ),
        }
    }
}

/// Whether the message holds every part.
fn contains_all(message: &str, parts: &[String]) -> bool {
    parts.iter().all(|part| message.contains(part.as_str()))
}

/// The parts as `a`, `b`.
fn quoted(parts: &[String]) -> String {
    let quoted: Vec<String> = parts.iter().map(|part| format!("`{part}`")).collect();
    quoted.join(", ")
}

/// Runs one case; returns how many steps it has.
fn run_case(file: &str, text: &str) -> Result<usize, String> {
    if !text.trim_start().starts_with('#') {
        return Err(format!(
            "{file}: must start with a comment saying what the case shows"
        ));
    }
    let case: Case =
        serde_saphyr::from_str(text).map_err(|error| format!("{file}: not a case: {error}"))?;
    if case.steps.is_empty() {
        return Err(format!("{file}: has no steps"));
    }
    let mut state = State::default();
    let mut index = 1;
    for (number, step) in case.steps.iter().enumerate() {
        let command = step
            .entry
            .pointer("/command/type")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let took_index = run_step(&mut state, index, step).map_err(|error| {
            format!(
                "{file}: step {} (index {index}, {command}): {error}",
                number + 1
            )
        })?;
        if took_index {
            index += 1;
        }
    }
    check_excerpt(&state, &case.state, &case.absent, &case.len)
        .map_err(|error| format!("{file}: the state after the last step: {error}"))?;
    Ok(case.steps.len())
}

/// Applies one step's entry at `index` and checks it; returns whether the
/// entry took the index (it did unless it halted the node).
fn run_step(state: &mut State, index: u64, step: &Step) -> Result<bool, String> {
    let expect = step.expect()?;
    let json = serde_json::to_string(&step.entry).map_err(|error| error.to_string())?;
    let entry: Entry = serde_json::from_str(&json)
        .map_err(|error| format!("`entry` is not a log entry ({error}): {json}"))?;
    let before = state.clone();
    let result = state.apply(index, &entry);
    let halted = match (expect, result) {
        (Expect::Outcome(want), Ok(got)) => {
            let got = serde_json::to_value(&got).map_err(|error| error.to_string())?;
            if got != *want {
                return Err(format!("expected outcome {want}, got {got}"));
            }
            false
        }
        (Expect::Outcome(want), Err(error)) => {
            return Err(format!(
                "expected outcome {want}, got {} `{error}`",
                refusal_or_halt(&error)
            ))
        }
        (Expect::Error(want), Ok(got)) | (Expect::Halt(want), Ok(got)) => {
            return Err(format!(
                "expected an error containing {}, got outcome {}",
                quoted(want),
                serde_json::to_value(&got).map_err(|error| error.to_string())?
            ))
        }
        (Expect::Error(want), Err(error)) => {
            if error.halts() || !contains_all(&error.to_string(), want) {
                return Err(format!(
                    "expected a refusal containing {}, got {} `{error}`",
                    quoted(want),
                    refusal_or_halt(&error)
                ));
            }
            let mut unchanged = before.clone();
            unchanged.applied_index = index;
            unchanged.log_version = before.log_version.max(entry.version);
            if *state != unchanged {
                return Err(format!(
                    "the refused entry changed the state beyond applied_index: {}",
                    differences(&unchanged, state)
                ));
            }
            false
        }
        (Expect::Halt(want), Err(error)) => {
            if !error.halts() || !contains_all(&error.to_string(), want) {
                return Err(format!(
                    "expected a halt containing {}, got {} `{error}`",
                    quoted(want),
                    refusal_or_halt(&error)
                ));
            }
            if *state != before || state.snapshot() != before.snapshot() {
                return Err(format!(
                    "the halted entry changed the state: {}",
                    differences(&before, state)
                ));
            }
            true
        }
    };
    if !halted {
        if state.applied_index != index {
            return Err(format!(
                "applied_index is {} after applying the entry",
                state.applied_index
            ));
        }
        state
            .check_invariants()
            .map_err(|error| format!("invariant broken: {error}"))?;
        let restored = State::restore(&state.snapshot())
            .map_err(|error| format!("the snapshot does not restore: {error}"))?;
        if restored != *state {
            return Err(format!(
                "the snapshot restores to another state: {}",
                differences(state, &restored)
            ));
        }
    }
    check_excerpt(state, &step.state, &step.absent, &step.len)?;
    Ok(!halted)
}

fn refusal_or_halt(error: &shoal_state::ApplyError) -> &'static str {
    if error.halts() {
        "a halt (halts() == true)"
    } else {
        "a refusal (halts() == false)"
    }
}

/// Checks the state against pointers to expected values, pointers that
/// must lead nowhere and the sizes of objects or arrays; names every
/// mismatch.
fn check_excerpt(
    state: &State,
    values: &BTreeMap<String, Value>,
    absent: &[String],
    len: &BTreeMap<String, usize>,
) -> Result<(), String> {
    let json = serde_json::to_value(state).map_err(|error| error.to_string())?;
    let mut mismatches = Vec::new();
    let mut look = |pointer: &str| {
        if !pointer.starts_with('/') {
            mismatches.push(format!(
                "`{pointer}` is not a JSON pointer: it must start with `/`"
            ));
            return Err(());
        }
        Ok(json.pointer(pointer))
    };
    let mut found = Vec::new();
    for (pointer, want) in values {
        match look(pointer) {
            Ok(Some(got)) if got == want => {}
            Ok(Some(got)) => found.push(format!("{pointer}: expected {want}, got {}", cut(got))),
            Ok(None) => found.push(format!("{pointer}: expected {want}, found nothing there")),
            Err(()) => {}
        }
    }
    for pointer in absent {
        if let Ok(Some(got)) = look(pointer) {
            found.push(format!(
                "{pointer}: expected nothing there, found {}",
                cut(got)
            ));
        }
    }
    for (pointer, want) in len {
        let size = match look(pointer) {
            Ok(Some(Value::Object(members))) => members.len(),
            Ok(Some(Value::Array(items))) => items.len(),
            Ok(Some(got)) => {
                found.push(format!(
                    "{pointer}: expected {want} members, found {} (not an object or array)",
                    cut(got)
                ));
                continue;
            }
            Ok(None) => {
                found.push(format!(
                    "{pointer}: expected {want} members, found nothing there"
                ));
                continue;
            }
            Err(()) => continue,
        };
        if size != *want {
            found.push(format!("{pointer}: expected {want} members, found {size}"));
        }
    }
    mismatches.extend(found);
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(mismatches.join("; "))
    }
}

/// Where two states differ, as JSON pointers with both values (the first
/// few), the derived subnet index included.
fn differences(expected: &State, got: &State) -> String {
    const SHOWN_MAX: usize = 8;
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        if out.len() >= SHOWN_MAX {
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys = x.keys().chain(y.keys().filter(|key| !x.contains_key(*key)));
                for key in keys {
                    let at = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
                    match (x.get(key), y.get(key)) {
                        (Some(a), Some(b)) => walk(&at, a, b, out),
                        (Some(a), None) => out.push(format!("{at}: {} → absent", cut(a))),
                        (None, Some(b)) => out.push(format!("{at}: absent → {}", cut(b))),
                        (None, None) => {}
                    }
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (at, (a, b)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{path}/{at}"), a, b, out);
                }
            }
            _ if a != b => out.push(format!("{path}: {} → {}", cut(a), cut(b))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match (serde_json::to_value(expected), serde_json::to_value(got)) {
        (Ok(a), Ok(b)) => walk("", &a, &b, &mut out),
        (a, b) => out.push(format!("does not serialize: {a:?} {b:?}")),
    }
    if expected.subnet_holders != got.subnet_holders {
        out.push(format!(
            "subnet_holders: {:?} → {:?}",
            expected.subnet_holders, got.subnet_holders
        ));
    }
    if out.is_empty() {
        "no difference in JSON".into()
    } else {
        out.join("; ")
    }
}

/// A value as JSON, cut short when long (a task is a page of it).
fn cut(value: &Value) -> String {
    const CHARS_MAX: usize = 300;
    let text = value.to_string();
    match text.char_indices().nth(CHARS_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// Runs every case, given as (file name, text); fails when there is none,
/// naming every case that failed. Returns the number of cases and steps.
fn run_all(cases: &[(String, String)]) -> Result<(usize, usize), String> {
    if cases.is_empty() {
        return Err("no case files: a harness without cases tests nothing".into());
    }
    let mut steps = 0;
    let mut failures = Vec::new();
    for (file, text) in cases {
        match run_case(file, text) {
            Ok(count) => steps += count,
            Err(error) => failures.push(error),
        }
    }
    if failures.is_empty() {
        Ok((cases.len(), steps))
    } else {
        Err(format!(
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        ))
    }
}

/// The case files, sorted by name, with their text. Every file there must
/// be a `.yaml` case: one the harness skipped would test nothing.
#[expect(
    clippy::disallowed_methods,
    reason = "the harness reads its case files; the crate itself stays free of I/O"
)]
fn read_cases(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let listing = std::fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut cases = Vec::new();
    for item in listing {
        let path = item
            .map_err(|error| format!("{}: {error}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| format!("{}: not a UTF-8 file name", path.display()))?
            .to_string();
        if !name.ends_with(".yaml") || !path.is_file() {
            return Err(format!(
                "{}: not a .yaml case file; tests/cases/ holds only those",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        cases.push((name, text));
    }
    cases.sort();
    Ok(cases)
}

#[test]
fn cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let cases = read_cases(&dir).unwrap_or_else(|error| panic!("{error}"));
    match run_all(&cases) {
        Ok((count, steps)) => println!("{count} cases, {steps} steps: all as expected"),
        Err(error) => panic!("{error}"),
    }
}

/// The start of a case that registers n1 (index 1), for the tests of the
/// harness itself.
const REGISTER_N1: &str = "# n1 joins.
defs:
  node: &node {addr: 'n1:7950', os: Linux, arch: x86_64, cpus: 2,
               memory_total_bytes: 1073741824, started_at_ms: 0, status: alive}
steps:
  - entry:
      {version: 2, at_ms: 10, proposer: n1, leader: n1,
       command: {type: register_node, node: {<<: *node, name: n1}}}
    outcome: {outcome: node_registered}
";

#[test]
fn a_wrong_expectation_is_reported_with_its_file_step_and_difference() {
    // n1 is alive, so forgetting it is refused: expecting it forgotten is
    // wrong on purpose.
    let wrong = format!(
        "{REGISTER_N1}  - entry: {{version: 2, at_ms: 20, proposer: n1, leader: n1,
             command: {{type: forget_node, name: n1}}}}
    outcome: {{outcome: node_forgotten, tasks: 0}}
"
    );
    let error = run_case("wrong.yaml", &wrong).expect_err("a wrong expectation fails");
    assert_eq!(
        error,
        "wrong.yaml: step 2 (index 2, forget_node): expected outcome \
         {\"outcome\":\"node_forgotten\",\"tasks\":0}, got a refusal (halts() == false) \
         `node `n1` is alive; only a node that is not can be forgotten`"
    );
    // The same case with the right expectation passes: the failure above
    // came from the expectation alone.
    let right = wrong.replace(
        "outcome: {outcome: node_forgotten, tasks: 0}",
        "error: is alive",
    );
    assert_eq!(run_case("right.yaml", &right), Ok(2));
}

#[test]
fn malformed_cases_and_unmet_expectations_fail() {
    let step2 = |step: &str| format!("{REGISTER_N1}{step}");
    let set_dead = "  - entry: {version: 2, at_ms: 20, proposer: n1, leader: n1,
             command: {type: set_node_status, name: n1, status: dead}}
";
    let cases = [
        // Malformed files.
        ("steps: []\n".to_string(), "must start with a comment"),
        ("# nothing\nsteps: []\n".into(), "has no steps"),
        ("# a list\n- 1\n".into(), "not a case"),
        (REGISTER_N1.replace("outcome:", "outcom:"), "not a case"),
        (step2(set_dead), "exactly one of"),
        (
            step2(&format!("{set_dead}    error: x\n    halt: x\n")),
            "exactly one of",
        ),
        (step2(&format!("{set_dead}    error: ''\n")), "exactly one of"),
        (step2(&format!("{set_dead}    error: []\n")), "exactly one of"),
        (
            step2(&format!("{set_dead}    error: [leader, '']\n")),
            "exactly one of",
        ),
        (
            REGISTER_N1.replace("at_ms: 10, ", ""),
            "step 1 (index 1, register_node): `entry` is not a log entry (missing field `at_ms`",
        ),
        // Expectations that do not hold.
        (
            step2(&format!("{set_dead}    error: refused\n")),
            "step 2 (index 2, set_node_status): expected an error containing `refused`, got outcome",
        ),
        (
            step2(&format!("{set_dead}    halt: upgrade\n")),
            "expected an error containing `upgrade`, got outcome",
        ),
        (
            step2(
                "  - entry: {version: 2, at_ms: 20, proposer: n2, leader: n1,
             command: {type: set_node_status, name: n1, status: dead}}
    halt: only the leader
",
            ),
            "expected a halt containing `only the leader`, got a refusal",
        ),
        (
            step2(
                "  - entry: {version: 99, at_ms: 20, command: {type: forget_node, name: n1}}
    error: upgrade
",
            ),
            "expected a refusal containing `upgrade`, got a halt",
        ),
        (
            step2(
                "  - entry: {version: 2, at_ms: 20, proposer: n2, leader: n1,
             command: {type: set_node_status, name: n1, status: dead}}
    error: only node
",
            ),
            "expected a refusal containing `only node`, got a refusal (halts() == false) `only the leader",
        ),
        (
            step2(
                "  - entry: {version: 2, at_ms: 20, proposer: n2, leader: n1,
             command: {type: set_node_status, name: n1, status: dead}}
    error: [only the leader, proposed by `n3`]
",
            ),
            "expected a refusal containing `only the leader`, `proposed by `n3``, got",
        ),
        (
            format!("{REGISTER_N1}state: {{/nodes/n1/status: dead}}\n"),
            "the state after the last step: /nodes/n1/status: expected \"dead\", got \"alive\"",
        ),
        (
            format!("{REGISTER_N1}state: {{/nodes/n2/status: alive}}\n"),
            "/nodes/n2/status: expected \"alive\", found nothing there",
        ),
        (
            format!("{REGISTER_N1}state: {{nodes: {{}}}}\n"),
            "`nodes` is not a JSON pointer",
        ),
        (
            format!("{REGISTER_N1}absent: [/nodes/n1]\n"),
            "/nodes/n1: expected nothing there, found {",
        ),
        (
            format!("{REGISTER_N1}len: {{/nodes: 2}}\n"),
            "/nodes: expected 2 members, found 1",
        ),
        (
            REGISTER_N1.replace(
                "outcome: {outcome: node_registered}",
                "outcome: {outcome: node_registered}\n    state: {/applied_index: 2}",
            ),
            "step 1 (index 1, register_node): /applied_index: expected 2, got 1",
        ),
    ];
    for (text, want) in cases {
        let error = run_case("bad.yaml", &text).expect_err(&text);
        assert!(error.starts_with("bad.yaml: "), "{error}");
        assert!(
            error.contains(want),
            "wanted `{want}` in: {error}\ncase:\n{text}"
        );
    }
    let error = run_all(&[]).expect_err("no cases");
    assert!(error.contains("no case files"), "{error}");
    let error = run_all(&[
        ("a.yaml".into(), REGISTER_N1.into()),
        ("b.yaml".into(), "steps: []".into()),
    ])
    .expect_err("one bad case");
    assert!(
        error.starts_with("1 of 2 cases failed:\nb.yaml: "),
        "{error}"
    );
}

#[test]
fn differences_name_the_pointers_and_the_derived_index() {
    let before = State::default();
    let mut after = before.clone();
    after.settings.voters_max = 3;
    after.applied_index = 7;
    after.subnet_holders.insert(1, "n1".into());
    assert_eq!(
        differences(&before, &after),
        "/applied_index: 0 → 7; /settings/voters_max: 5 → 3; subnet_holders: {} → {1: \"n1\"}"
    );
    assert_eq!(differences(&before, &before), "no difference in JSON");
}
