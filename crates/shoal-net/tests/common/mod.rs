//! What the root-only tests of shoal-net share.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Whether to run: `SHOAL_E2E=1` (and then root is required).
pub fn e2e_enabled() -> bool {
    if std::env::var("SHOAL_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set SHOAL_E2E=1 (and run as root) to run this test");
        return false;
    }
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "SHOAL_E2E=1 needs root"
    );
    true
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Runs a command and returns its stdout, failing the test on error.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
