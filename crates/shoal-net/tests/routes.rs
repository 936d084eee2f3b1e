//! Routes and masquerading against the real `ip` and `iptables`, inside a
//! scratch network namespace so the host's tables are never touched.
//! Runs with `SHOAL_E2E=1` as root.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;

use common::{e2e_enabled, sh};
use shoal_net::exec::{InNetns, SystemRunner};
use shoal_net::routes::{HostRoutes, Masquerade, RouteChange};
use shoal_net::subnet::Ipv4Cidr;

/// A scratch namespace with a veth link on 192.168.77.0/24 (the "node
/// network"), deleted with everything in it on drop.
struct ScratchNetns {
    name: String,
}

impl ScratchNetns {
    fn new(tag: &str) -> Self {
        let name = format!("shoaltest-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name]);
        let scratch = Self { name };
        let ns = scratch.name.as_str();
        sh(
            "ip",
            &[
                "-n", ns, "link", "add", "node0", "type", "veth", "peer", "name", "node1",
            ],
        );
        sh("ip", &["-n", ns, "link", "set", "node1", "up"]);
        sh(
            "ip",
            &["-n", ns, "addr", "add", "192.168.77.1/24", "dev", "node0"],
        );
        sh("ip", &["-n", ns, "link", "set", "node0", "up"]);
        scratch
    }

    fn runner(&self) -> InNetns<SystemRunner> {
        InNetns {
            inner: SystemRunner::default(),
            netns: self.name.clone(),
        }
    }

    fn routes(&self) -> Vec<String> {
        sh("ip", &["-n", &self.name, "-4", "route", "show"])
            .lines()
            .map(|l| l.trim().to_owned())
            .collect()
    }

    fn nat_rules(&self) -> String {
        sh(
            "ip",
            &["netns", "exec", &self.name, "iptables", "-t", "nat", "-S"],
        )
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn cidr(text: &str) -> Ipv4Cidr {
    text.parse().unwrap()
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn count_containing(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn routes_are_synced_without_duplicates_and_only_ours_are_touched() {
    if !e2e_enabled() {
        return;
    }
    let ns = ScratchNetns::new("routes");
    // A route someone else made inside the cluster CIDR: never ours.
    sh(
        "ip",
        &[
            "-n",
            &ns.name,
            "route",
            "add",
            "10.42.9.0/24",
            "via",
            "192.168.77.9",
        ],
    );
    let routes = HostRoutes::new(ns.runner(), cidr("10.42.0.0/16"));
    let mut desired = BTreeMap::new();
    desired.insert(cidr("10.42.1.0/24"), ip("192.168.77.2"));
    desired.insert(cidr("10.42.2.0/24"), ip("192.168.77.3"));

    assert_eq!(routes.sync(&desired).unwrap().len(), 2);
    // A restarted agent applies the same map: nothing changes.
    assert_eq!(routes.sync(&desired).unwrap(), vec![]);
    let table = ns.routes();
    assert_eq!(
        count_containing(&table, "10.42.1.0/24 via 192.168.77.2"),
        1,
        "{table:?}"
    );
    assert_eq!(
        count_containing(&table, "10.42.2.0/24 via 192.168.77.3"),
        1,
        "{table:?}"
    );
    assert!(table
        .iter()
        .any(|l| l.contains("10.42.1.0/24") && l.contains("proto 211")));

    // One peer left, another moved.
    let mut desired = BTreeMap::new();
    desired.insert(cidr("10.42.1.0/24"), ip("192.168.77.5"));
    let changes = routes.sync(&desired).unwrap();
    assert_eq!(
        changes,
        vec![
            RouteChange::Replace {
                dst: cidr("10.42.1.0/24"),
                via: ip("192.168.77.5")
            },
            RouteChange::Delete {
                dst: cidr("10.42.2.0/24")
            },
        ]
    );
    let table = ns.routes();
    assert_eq!(count_containing(&table, "10.42.1.0/24"), 1, "{table:?}");
    assert_eq!(
        count_containing(&table, "10.42.1.0/24 via 192.168.77.5"),
        1,
        "{table:?}"
    );
    assert_eq!(count_containing(&table, "10.42.2.0/24"), 0, "{table:?}");

    routes.remove_all().unwrap();
    let table = ns.routes();
    assert_eq!(count_containing(&table, "10.42.1.0/24"), 0, "{table:?}");
    assert_eq!(
        count_containing(&table, "10.42.9.0/24 via 192.168.77.9"),
        1,
        "a route that is not ours must survive: {table:?}"
    );
}

#[test]
fn masquerade_is_added_once_follows_the_cidr_and_is_cleaned_up() {
    if !e2e_enabled() {
        return;
    }
    let ns = ScratchNetns::new("masq");
    let masq = Masquerade::new(ns.runner(), cidr("10.42.0.0/16"));
    assert!(masq.ensure().unwrap(), "the first call adds the rule");
    assert!(!masq.ensure().unwrap(), "the second call finds it in place");
    let rules = ns.nat_rules();
    let masquerades = rules
        .lines()
        .filter(|l| l.contains("-j MASQUERADE"))
        .collect::<Vec<_>>();
    assert_eq!(masquerades.len(), 1, "{rules}");
    assert!(
        masquerades[0].starts_with("-A SHOAL-POSTROUTING -s 10.42.0.0/16 ! -d 10.42.0.0/16"),
        "{rules}"
    );
    assert_eq!(
        rules
            .lines()
            .filter(|l| *l == "-A POSTROUTING -j SHOAL-POSTROUTING")
            .count(),
        1,
        "{rules}"
    );

    // The cluster CIDR changed while the agent was down: the old rule goes.
    let moved = Masquerade::new(ns.runner(), cidr("10.43.0.0/16"));
    assert!(moved.ensure().unwrap());
    let rules = ns.nat_rules();
    assert!(!rules.contains("10.42.0.0/16"), "{rules}");
    assert_eq!(rules.matches("-j MASQUERADE").count(), 1, "{rules}");

    moved.cleanup().unwrap();
    moved.cleanup().unwrap();
    let rules = ns.nat_rules();
    assert!(!rules.contains("SHOAL-POSTROUTING"), "{rules}");
}
