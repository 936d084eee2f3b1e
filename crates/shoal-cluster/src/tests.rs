use shoal_state::Command;
use shoal_types::parse_app;

use super::*;

fn app(replicas: u32) -> Command {
    let yaml = format!(
        "name: web\nservices:\n  - name: hello\n    image: busybox\n    replicas: {replicas}\n"
    );
    Command::PutApp {
        spec: parse_app(yaml.as_bytes()).expect("valid"),
    }
}

#[tokio::test]
async fn acknowledged_entries_survive_a_reopen_across_snapshots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let entries = SNAPSHOT_EVERY_ENTRIES * 2 + 7;
    {
        let consensus = Consensus::open(dir.path()).expect("open");
        for i in 0..entries {
            consensus
                .propose(i, app((i % 5) as u32 + 1))
                .await
                .expect("proposal applies");
        }
    }
    let reopened = Consensus::open(dir.path()).expect("reopen");
    let state = reopened.read();
    assert_eq!(state.applied_index, entries);
    let web = &state.apps["web"];
    assert_eq!(
        web.spec.services[0].replicas,
        ((entries - 1) % 5) as u32 + 1
    );
    assert_eq!(web.version, entries);
}

#[tokio::test]
async fn a_rejected_command_changes_nothing_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let consensus = Consensus::open(dir.path()).expect("open");
    consensus.propose(1, app(1)).await.expect("applies");
    let before = consensus.read().apps.clone();
    let error = consensus
        .propose(
            2,
            Command::RemoveApp {
                name: "nope".into(),
            },
        )
        .await
        .expect_err("unknown app");
    assert_eq!(error.to_string(), "app `nope` not found");
    assert_eq!(consensus.read().apps, before);
}
