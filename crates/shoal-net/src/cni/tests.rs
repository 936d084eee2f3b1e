use std::collections::BTreeMap;

use serde_json::json;

use super::*;

// Shaped like what the bridge plugin (with host-local) prints on ADD.
const BRIDGE_RESULT: &str = r#"{
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "shoal0", "mac": "5a:1e:3c:00:00:01"},
        {"name": "veth1234", "mac": "5a:1e:3c:00:00:02"},
        {"name": "eth0", "mac": "5a:1e:3c:00:00:03", "sandbox": "/var/run/netns/shoal-t1"}
    ],
    "ips": [{"interface": 2, "address": "10.42.0.2/24", "gateway": "10.42.0.1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}],
    "dns": {}
}"#;

fn list() -> NetworkConfigList {
    serde_json::from_value(json!({
        "cniVersion": "1.0.0",
        "name": "shoal",
        "plugins": [
            {"type": "bridge", "bridge": "shoal0"},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    }))
    .unwrap()
}

#[test]
fn a_1_0_0_result_is_parsed() {
    let result = parse_result("bridge", "ADD", BRIDGE_RESULT.as_bytes()).unwrap();
    assert_eq!(result.interfaces.len(), 3);
    assert_eq!(result.ips[0].gateway, Some("10.42.0.1".parse().unwrap()));
    assert_eq!(result.routes[0].dst, "0.0.0.0/0");
    assert_eq!(
        result.container_ip("eth0"),
        Some("10.42.0.2".parse().unwrap())
    );
    assert_eq!(result.container_ip("shoal0"), None);
    // Round trip: what we cache is what we read.
    let again: CniResult = serde_json::from_value(json!(result)).unwrap();
    assert_eq!(again, result);
}

#[test]
fn a_result_we_cannot_read_names_the_plugin() {
    let err = parse_result("bridge", "ADD", b"{\"ips\": 3}").unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("CNI plugin `bridge` ADD printed a result we cannot read"),
        "{text}"
    );
}

#[test]
fn a_plugin_error_becomes_a_typed_error() {
    let stdout = br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"bridge name too long"}"#;
    let err = parse_failure("bridge", "ADD", Some(1), stdout, b"");
    match &err {
        CniError::Plugin {
            plugin,
            code,
            msg,
            details,
            ..
        } => {
            assert_eq!((plugin.as_str(), *code), ("bridge", 7));
            assert_eq!(
                (msg.as_str(), details.as_str()),
                ("invalid config", "bridge name too long")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "CNI plugin `bridge` ADD failed with code 7: invalid config (bridge name too long)"
    );
    let err = parse_failure("portmap", "DEL", None, b"panic: oops", b"");
    assert_eq!(
        err.to_string(),
        "CNI plugin `portmap` DEL exited with a signal without a CNI error: panic: oops"
    );
}

#[test]
fn each_plugin_gets_name_version_prev_result_and_only_its_capabilities() {
    let list = list();
    let prev = parse_result("bridge", "ADD", BRIDGE_RESULT.as_bytes()).unwrap();
    let mut caps = BTreeMap::new();
    caps.insert(
        "portMappings".to_owned(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    caps.insert("bandwidth".to_owned(), json!({"ingressRate": 1}));

    let bridge = plugin_stdin_config(&list, 0, None, &caps).unwrap();
    assert_eq!(bridge["cniVersion"], "1.0.0");
    assert_eq!(bridge["name"], "shoal");
    assert_eq!(bridge["bridge"], "shoal0");
    assert!(bridge.get("prevResult").is_none());
    assert!(bridge.get("runtimeConfig").is_none());

    let portmap = plugin_stdin_config(&list, 1, Some(&prev), &caps).unwrap();
    assert_eq!(portmap["prevResult"]["ips"][0]["address"], "10.42.0.2/24");
    assert_eq!(
        portmap["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
}

#[test]
fn port_mappings_use_the_cni_field_names() {
    let a = Attachment::new("t1", "/var/run/netns/x", "eth0").with_port_mappings(&[PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: "tcp".into(),
    }]);
    assert_eq!(
        a.capability_args["portMappings"],
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    );
}

#[test]
fn names_that_would_escape_the_cache_dir_are_refused() {
    let mut bad = list();
    bad.name = "../etc".into();
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("name: `../etc`"));
    let attachment = Attachment::new("a/b", "/x", "eth0");
    assert!(attachment
        .validate()
        .unwrap_err()
        .to_string()
        .contains("container_id"));
    let attachment = Attachment::new("ok", "/x", "a-very-long-interface");
    assert!(attachment
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ifname"));
    let mut bad = list();
    bad.plugins[1] = json!({"type": "../../bin/sh"});
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("plugins[1].type"));
}

#[test]
fn the_cache_is_written_atomically_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let cni = Cni::new(dir.path().join("results"));
    let cached = CachedAttachment {
        kind: CACHE_KIND.into(),
        attachment: Attachment::new("t1", "/var/run/netns/shoal-t1", "eth0"),
        config: list(),
        result: parse_result("bridge", "ADD", BRIDGE_RESULT.as_bytes()).unwrap(),
    };
    cni.write_cache(&cached).unwrap();
    assert_eq!(cni.read_cache("shoal", "t1").unwrap(), Some(cached));
    assert_eq!(cni.cached_containers("shoal").unwrap(), vec!["t1"]);
    assert!(!cni
        .cache_path("shoal", "t1")
        .with_extension("json.tmp")
        .exists());
    cni.remove_cache("shoal", "t1").unwrap();
    cni.remove_cache("shoal", "t1").unwrap();
    assert_eq!(cni.read_cache("shoal", "t1").unwrap(), None);
}

#[test]
fn a_missing_plugin_is_reported_with_the_dirs_searched() {
    let dir = tempfile::tempdir().unwrap();
    let mut cni = Cni::new(dir.path());
    cni.plugin_dirs = vec![dir.path().to_path_buf()];
    let err = cni
        .add(&list(), &Attachment::new("t1", "/nonexistent", "eth0"))
        .unwrap_err();
    assert!(matches!(err, CniError::PluginNotFound { .. }), "{err}");
    // DEL of something never added, with no plugin and no cache: the
    // plugin is still needed to release what it may hold.
    assert!(cni
        .del(&list(), &Attachment::new("t1", "/nonexistent", "eth0"))
        .is_err());
}
