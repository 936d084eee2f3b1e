//! The JSON the cluster stores for a spec (log entries, snapshots) and the
//! JSON Schema it serves are fixed documents: nodes of older releases read
//! the one and users' tools the other. `stored/every-field.json` and
//! `app-schema.json` were written by shoal 0.2's code and must stay byte for
//! byte what they are, whatever shape the types take in memory, unless the
//! format moves on (ARCHITECTURE.md, "Versions").

// The test harness reads the fixtures; the crate itself does no I/O.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use shoal_types::{app_schema, parse_app, AppSpec, ContainerSpec, UserSpec, Workload};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

fn stored_bytes() -> String {
    let text = fs::read_to_string(fixture("stored/every-field.json")).expect("stored fixture");
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

fn every_field() -> AppSpec {
    let body = fs::read(fixture("stored/every-field.yaml")).expect("spec fixture");
    parse_app(&body).expect("the fixture is valid")
}

#[test]
fn a_spec_is_stored_as_the_bytes_older_nodes_read() {
    // serde_json::to_vec is how a command and a snapshot are written.
    let written = serde_json::to_string(&every_field()).expect("serializes");
    assert_eq!(written, stored_bytes());
}

#[test]
fn the_stored_form_reads_back_into_the_same_spec_and_bytes() {
    let stored = stored_bytes();
    // Read strictly, as `State::apply` decodes a command.
    let read: AppSpec = serde_json::from_str(&stored).expect("the stored form reads");
    assert_eq!(read, every_field());
    assert_eq!(serde_json::to_string(&read).expect("serializes"), stored);
    // The flat fields land in the container, none lost or swapped.
    assert_eq!(
        read.services[0].workload,
        Workload::Container(ContainerSpec {
            image: "docker.io/library/busybox:1.36".into(),
            command: Some(vec!["/bin/sh".into(), "-c".into()]),
            args: Some(vec![
                "while true; do date; sleep 5; done".into(),
                "--".into()
            ]),
            env: BTreeMap::from([
                ("EMPTY".into(), String::new()),
                ("GREETING".into(), "hello".into()),
            ]),
            working_dir: Some("/srv".into()),
            user: Some(UserSpec {
                uid: 1000,
                gid: 100
            }),
            security: Default::default(),
        })
    );
    assert_eq!(
        read.services[2].workload,
        Workload::Container(ContainerSpec {
            image: "docker.io/library/busybox:latest".into(),
            command: None,
            args: None,
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            security: Default::default(),
        })
    );
}

#[test]
fn the_stored_form_refuses_a_field_it_does_not_know() {
    let stored =
        stored_bytes().replacen("\"name\":\"web\",", "\"name\":\"web\",\"workload\":{},", 1);
    let error = serde_json::from_str::<AppSpec>(&stored).expect_err("unknown field");
    assert!(
        error.to_string().contains("unknown field `workload`"),
        "{error}"
    );
}

/// Set `SHOAL_SCHEMA_WRITE=1` to rewrite `app-schema.json` for review after
/// a change to the spec that users are meant to see.
#[test]
fn the_served_schema_describes_the_same_document() {
    let schema = serde_json::to_string_pretty(&app_schema()).expect("serializes") + "\n";
    let path = fixture("app-schema.json");
    if std::env::var_os("SHOAL_SCHEMA_WRITE").is_some() {
        fs::write(&path, &schema).expect("write");
    }
    let expected = fs::read_to_string(&path).expect("schema fixture");
    assert!(
        schema == expected,
        "the schema at /v1/schema/app.json changed; review it with SHOAL_SCHEMA_WRITE=1:\n{schema}"
    );
}
