//! Host-gateway routes between nodes, and masquerading of traffic that
//! leaves the cluster.
//!
//! Each node holds one subnet; a peer's subnet is reached through the peer's
//! own address (`ip route replace SUBNET via PEER`), which works when nodes
//! share a layer-2 network and needs no encapsulation. Our routes carry a
//! routing protocol number of their own (`proto 211` by default), so that a
//! sync touches only routes we made: it lists them, replaces the missing or
//! changed ones and deletes the ones no longer wanted. A restarted agent
//! makes the same calls and changes nothing that is already right.
//!
//! Traffic from the cluster CIDR to outside it is masqueraded by one rule in
//! a chain of our own (`SHOAL-POSTROUTING`), jumped to from `POSTROUTING`.
//!
//! The planning ([`parse_routes`], [`plan_routes`]) is pure; commands go
//! through [`CommandRunner`], so unit tests check them without root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::exec::{args, run_checked, CommandOutput, CommandRunner, ExecError, RunError};
use crate::subnet::Ipv4Cidr;

/// The routing protocol number that marks our routes (unassigned in
/// iproute2's `rt_protos`).
pub const ROUTE_PROTO_DEFAULT: u8 = 211;
/// Our chain in the `nat` table.
pub const MASQUERADE_CHAIN_DEFAULT: &str = "SHOAL-POSTROUTING";
/// Routes of ours we agree to handle in one sync (one per peer node).
pub const ROUTES_MAX: usize = 65_536;
/// Duplicate jumps to our chain removed at most in one call.
pub const JUMPS_REMOVED_MAX: usize = 64;
/// Seconds iptables waits for the xtables lock held by another program.
const XTABLES_WAIT_S: &str = "5";
const MASQUERADE_COMMENT: &str = "shoal: masquerade cluster traffic leaving the cluster";

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// `ip` or `iptables` could not run, or failed.
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(
        "cannot read the output of `{command}` ({reason}); is iproute2 recent enough for `ip -j`?"
    )]
    Parse { command: String, reason: String },
    #[error("more than {ROUTES_MAX} routes are marked as ours; refusing to sync, check `ip route show proto N`")]
    TooManyRoutes,
    #[error("route to {dst}: it is outside the cluster CIDR {cluster}; only peer subnets of the cluster are routed")]
    OutsideCluster { dst: Ipv4Cidr, cluster: Ipv4Cidr },
}

/// One route the kernel has with our protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelRoute {
    pub dst: Ipv4Cidr,
    pub via: Option<Ipv4Addr>,
}

/// A change to make to the routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteChange {
    Replace { dst: Ipv4Cidr, via: Ipv4Addr },
    Delete { dst: Ipv4Cidr },
}

/// Reads `ip -j -4 route show proto N`. Routes we cannot read (another
/// address family, `default`) are skipped: they are not ours to change.
pub fn parse_routes(json: &str) -> Result<Vec<KernelRoute>, String> {
    #[derive(Deserialize)]
    struct JsonRoute {
        dst: String,
        #[serde(default)]
        gateway: Option<String>,
    }
    let text = json.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let routes: Vec<JsonRoute> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(routes
        .into_iter()
        .filter_map(|r| {
            // A host route is printed without its `/32`.
            let dst = if r.dst.contains('/') {
                r.dst.parse().ok()?
            } else {
                Ipv4Cidr::new(r.dst.parse().ok()?, 32).ok()?
            };
            let via = r.gateway.and_then(|g| g.parse().ok());
            Some(KernelRoute { dst, via })
        })
        .collect())
}

/// What to change so that our routes are exactly `desired` (peer subnet →
/// peer address). Only routes inside `cluster` are ever deleted.
pub fn plan_routes(
    current: &[KernelRoute],
    desired: &BTreeMap<Ipv4Cidr, Ipv4Addr>,
    cluster: Ipv4Cidr,
) -> Vec<RouteChange> {
    let mut changes = Vec::new();
    for (dst, via) in desired {
        let present = current.iter().any(|r| r.dst == *dst && r.via == Some(*via));
        if !present {
            changes.push(RouteChange::Replace {
                dst: *dst,
                via: *via,
            });
        }
    }
    let mut deleted: Vec<Ipv4Cidr> = Vec::new();
    for route in current {
        if !desired.contains_key(&route.dst)
            && cluster.contains_cidr(&route.dst)
            && !deleted.contains(&route.dst)
        {
            deleted.push(route.dst);
            changes.push(RouteChange::Delete { dst: route.dst });
        }
    }
    changes
}

/// Keeps the kernel's routes to peer subnets in line with the cluster.
pub struct HostRoutes<R> {
    runner: R,
    cluster: Ipv4Cidr,
    proto: u8,
}

impl<R: CommandRunner> HostRoutes<R> {
    pub fn new(runner: R, cluster: Ipv4Cidr) -> Self {
        Self {
            runner,
            cluster,
            proto: ROUTE_PROTO_DEFAULT,
        }
    }

    /// Marks our routes with another protocol number.
    pub fn with_proto(mut self, proto: u8) -> Self {
        self.proto = proto;
        self
    }

    /// The routes that carry our protocol number.
    pub fn current(&self) -> Result<Vec<KernelRoute>, RouteError> {
        let proto = self.proto.to_string();
        let parts = ["-j", "-4", "route", "show", "proto", &proto];
        let output = run_checked(&self.runner, "ip", &args(&parts))?;
        let routes = parse_routes(&output.stdout_text()).map_err(|reason| RouteError::Parse {
            command: format!("ip {}", parts.join(" ")),
            reason,
        })?;
        if routes.len() > ROUTES_MAX {
            return Err(RouteError::TooManyRoutes);
        }
        Ok(routes)
    }

    /// Makes our routes match `desired` and returns what was changed.
    pub fn sync(
        &self,
        desired: &BTreeMap<Ipv4Cidr, Ipv4Addr>,
    ) -> Result<Vec<RouteChange>, RouteError> {
        if desired.len() > ROUTES_MAX {
            return Err(RouteError::TooManyRoutes);
        }
        if let Some(dst) = desired.keys().find(|d| !self.cluster.contains_cidr(d)) {
            return Err(RouteError::OutsideCluster {
                dst: *dst,
                cluster: self.cluster,
            });
        }
        let changes = plan_routes(&self.current()?, desired, self.cluster);
        for change in &changes {
            self.apply(change)?;
        }
        Ok(changes)
    }

    /// Deletes every route of ours inside the cluster CIDR.
    pub fn remove_all(&self) -> Result<Vec<RouteChange>, RouteError> {
        self.sync(&BTreeMap::new())
    }

    fn apply(&self, change: &RouteChange) -> Result<(), RouteError> {
        let proto = self.proto.to_string();
        match change {
            RouteChange::Replace { dst, via } => {
                let (dst, via) = (dst.to_string(), via.to_string());
                run_checked(
                    &self.runner,
                    "ip",
                    &args(&["-4", "route", "replace", &dst, "via", &via, "proto", &proto]),
                )?;
            }
            RouteChange::Delete { dst } => {
                let dst = dst.to_string();
                run_checked(
                    &self.runner,
                    "ip",
                    &args(&["-4", "route", "del", &dst, "proto", &proto]),
                )?;
            }
        }
        Ok(())
    }
}

/// The masquerade rule for traffic leaving the cluster, in a chain of ours.
pub struct Masquerade<R> {
    runner: R,
    cluster: Ipv4Cidr,
    chain: String,
}

impl<R: CommandRunner> Masquerade<R> {
    pub fn new(runner: R, cluster: Ipv4Cidr) -> Self {
        Self {
            runner,
            cluster,
            chain: MASQUERADE_CHAIN_DEFAULT.into(),
        }
    }

    /// Uses another chain name (tests, or two clusters on one host).
    pub fn with_chain(mut self, chain: &str) -> Self {
        self.chain = chain.to_owned();
        self
    }

    /// The rule, as given to `iptables -A CHAIN ...`.
    pub fn rule(&self) -> Vec<String> {
        let cluster = self.cluster.to_string();
        args(&[
            "-s",
            &cluster,
            "!",
            "-d",
            &cluster,
            "-m",
            "comment",
            "--comment",
            MASQUERADE_COMMENT,
            "-j",
            "MASQUERADE",
        ])
    }

    /// Makes the chain hold exactly our rule and `POSTROUTING` jump to it
    /// exactly once. Checks before it adds, so calling it again changes
    /// nothing. Returns whether anything was changed.
    pub fn ensure(&self) -> Result<bool, RouteError> {
        let mut changed = false;
        let chain = self.chain.as_str();
        let listing = self.iptables(&["-S", chain])?;
        if !listing.success() {
            self.iptables_checked(&["-N", chain])?;
            changed = true;
        }
        let rules_in_chain = count_rules(&listing.stdout_text(), chain);
        let mut check = args(&["-C", chain]);
        check.extend(self.rule());
        let present = self.iptables_owned(&check)?.success();
        if !(present && rules_in_chain == 1) {
            // Wrong or extra rules (e.g. an older cluster CIDR): start over.
            self.iptables_checked(&["-F", chain])?;
            let mut append = args(&["-A", chain]);
            append.extend(self.rule());
            run_checked(&self.runner, "iptables", &self.nat(&append))?;
            changed = true;
        }
        let jumps = self.jumps()?;
        if jumps == 0 {
            self.iptables_checked(&["-A", "POSTROUTING", "-j", chain])?;
            changed = true;
        }
        for _ in 1..jumps.min(JUMPS_REMOVED_MAX) {
            self.iptables_checked(&["-D", "POSTROUTING", "-j", chain])?;
            changed = true;
        }
        Ok(changed)
    }

    /// Removes the jump and the chain; what is already gone is fine.
    pub fn cleanup(&self) -> Result<(), RouteError> {
        let chain = self.chain.as_str();
        for _ in 0..self.jumps()?.min(JUMPS_REMOVED_MAX) {
            self.iptables_checked(&["-D", "POSTROUTING", "-j", chain])?;
        }
        if self.iptables(&["-S", chain])?.success() {
            self.iptables_checked(&["-F", chain])?;
            self.iptables_checked(&["-X", chain])?;
        }
        Ok(())
    }

    /// How many times `POSTROUTING` jumps to our chain.
    fn jumps(&self) -> Result<usize, RouteError> {
        let listing = self.iptables_checked(&["-S", "POSTROUTING"])?;
        let jump = format!("-A POSTROUTING -j {}", self.chain);
        Ok(listing
            .stdout_text()
            .lines()
            .filter(|l| l.trim() == jump)
            .count())
    }

    fn iptables(&self, parts: &[&str]) -> Result<CommandOutput, RouteError> {
        self.iptables_owned(&args(parts))
    }

    fn iptables_owned(&self, parts: &[String]) -> Result<CommandOutput, RouteError> {
        Ok(self.runner.run("iptables", &self.nat(parts))?)
    }

    fn iptables_checked(&self, parts: &[&str]) -> Result<CommandOutput, RouteError> {
        Ok(run_checked(
            &self.runner,
            "iptables",
            &self.nat(&args(parts)),
        )?)
    }

    /// `iptables` arguments for the nat table, waiting for the lock.
    fn nat(&self, parts: &[String]) -> Vec<String> {
        let mut full = args(&["-w", XTABLES_WAIT_S, "-t", "nat"]);
        full.extend(parts.iter().cloned());
        full
    }
}

fn count_rules(listing: &str, chain: &str) -> usize {
    let prefix = format!("-A {chain} ");
    listing.lines().filter(|l| l.starts_with(&prefix)).count()
}

impl From<ExecError> for RouteError {
    fn from(error: ExecError) -> Self {
        RouteError::Run(RunError::Exec(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::FakeRunner;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn desired(pairs: &[(&str, &str)]) -> BTreeMap<Ipv4Cidr, Ipv4Addr> {
        pairs.iter().map(|(s, a)| (cidr(s), ip(a))).collect()
    }

    #[test]
    fn ip_json_routes_are_parsed() {
        let json = r#"[{"dst":"10.42.1.0/24","gateway":"192.168.1.2","dev":"eth0","protocol":"211","flags":[]},
                       {"dst":"10.42.9.9","gateway":"192.168.1.3","dev":"eth0","flags":[]},
                       {"dst":"default","gateway":"192.168.1.1","dev":"eth0","flags":[]}]"#;
        assert_eq!(
            parse_routes(json).unwrap(),
            vec![
                KernelRoute {
                    dst: cidr("10.42.1.0/24"),
                    via: Some(ip("192.168.1.2"))
                },
                KernelRoute {
                    dst: cidr("10.42.9.9/32"),
                    via: Some(ip("192.168.1.3"))
                },
            ]
        );
        assert_eq!(parse_routes("").unwrap(), vec![]);
        assert!(parse_routes("10.42.1.0/24 via 1.2.3.4").is_err());
    }

    #[test]
    fn the_plan_adds_changes_and_deletes_only_what_differs() {
        let current = vec![
            KernelRoute {
                dst: cidr("10.42.1.0/24"),
                via: Some(ip("192.168.1.2")),
            },
            KernelRoute {
                dst: cidr("10.42.2.0/24"),
                via: Some(ip("192.168.1.3")),
            },
            KernelRoute {
                dst: cidr("10.42.4.0/24"),
                via: Some(ip("192.168.1.5")),
            },
            // Ours by protocol but outside the cluster: left alone.
            KernelRoute {
                dst: cidr("172.16.0.0/24"),
                via: Some(ip("192.168.1.9")),
            },
        ];
        let want = desired(&[
            ("10.42.1.0/24", "192.168.1.2"), // unchanged
            ("10.42.2.0/24", "192.168.1.4"), // peer moved
            ("10.42.3.0/24", "192.168.1.7"), // new peer
        ]);
        assert_eq!(
            plan_routes(&current, &want, cidr("10.42.0.0/16")),
            vec![
                RouteChange::Replace {
                    dst: cidr("10.42.2.0/24"),
                    via: ip("192.168.1.4")
                },
                RouteChange::Replace {
                    dst: cidr("10.42.3.0/24"),
                    via: ip("192.168.1.7")
                },
                RouteChange::Delete {
                    dst: cidr("10.42.4.0/24")
                },
            ]
        );
        let applied: Vec<KernelRoute> = want
            .iter()
            .map(|(dst, via)| KernelRoute {
                dst: *dst,
                via: Some(*via),
            })
            .collect();
        assert!(plan_routes(&applied, &want, cidr("10.42.0.0/16")).is_empty());
    }

    #[test]
    fn sync_runs_ip_with_our_protocol() {
        let fake = FakeRunner::new();
        fake.answer(
            "ip -j -4 route show proto 211",
            CommandOutput::ok(
                r#"[{"dst":"10.42.9.0/24","gateway":"192.168.1.9","dev":"eth0","flags":[]}]"#,
            ),
        );
        let routes = HostRoutes::new(fake.clone(), cidr("10.42.0.0/16"));
        let changes = routes
            .sync(&desired(&[("10.42.1.0/24", "192.168.1.2")]))
            .unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(
            fake.log(),
            vec![
                "ip -j -4 route show proto 211",
                "ip -4 route replace 10.42.1.0/24 via 192.168.1.2 proto 211",
                "ip -4 route del 10.42.9.0/24 proto 211",
            ]
        );
        let err = routes
            .sync(&desired(&[("10.43.1.0/24", "192.168.1.2")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("outside the cluster CIDR"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_ip_command_is_reported_with_its_stderr() {
        let fake = FakeRunner::new();
        fake.answer(
            "ip -4 route replace",
            CommandOutput::failed(2, "Error: Nexthop has invalid gateway.\n"),
        );
        let routes = HostRoutes::new(fake, cidr("10.42.0.0/16"));
        let err = routes
            .sync(&desired(&[("10.42.1.0/24", "192.168.1.2")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`ip -4 route replace 10.42.1.0/24 via 192.168.1.2 proto 211` failed: Error: Nexthop has invalid gateway."
        );
    }

    const NAT: &str = "iptables -w 5 -t nat";

    #[test]
    fn masquerade_on_a_clean_host_makes_the_chain_rule_and_jump() {
        let fake = FakeRunner::new();
        fake.answer(
            &format!("{NAT} -S SHOAL-POSTROUTING"),
            CommandOutput::failed(1, "No chain"),
        );
        fake.answer(
            &format!("{NAT} -C SHOAL-POSTROUTING"),
            CommandOutput::failed(1, "Bad rule"),
        );
        fake.answer(
            &format!("{NAT} -S POSTROUTING"),
            CommandOutput::ok("-P POSTROUTING ACCEPT\n"),
        );
        let masq = Masquerade::new(fake.clone(), cidr("10.42.0.0/16"));
        assert!(masq.ensure().unwrap());
        let rule = "-s 10.42.0.0/16 ! -d 10.42.0.0/16 -m comment --comment shoal: masquerade cluster traffic leaving the cluster -j MASQUERADE";
        assert_eq!(
            fake.log(),
            vec![
                format!("{NAT} -S SHOAL-POSTROUTING"),
                format!("{NAT} -N SHOAL-POSTROUTING"),
                format!("{NAT} -C SHOAL-POSTROUTING {rule}"),
                format!("{NAT} -F SHOAL-POSTROUTING"),
                format!("{NAT} -A SHOAL-POSTROUTING {rule}"),
                format!("{NAT} -S POSTROUTING"),
                format!("{NAT} -A POSTROUTING -j SHOAL-POSTROUTING"),
            ]
        );
    }

    #[test]
    fn masquerade_already_in_place_changes_nothing() {
        let fake = FakeRunner::new();
        fake.answer(
            &format!("{NAT} -S SHOAL-POSTROUTING"),
            CommandOutput::ok("-N SHOAL-POSTROUTING\n-A SHOAL-POSTROUTING -s 10.42.0.0/16 ! -d 10.42.0.0/16 -m comment --comment \"shoal\" -j MASQUERADE\n"),
        );
        fake.answer(
            &format!("{NAT} -S POSTROUTING"),
            CommandOutput::ok("-P POSTROUTING ACCEPT\n-A POSTROUTING -j SHOAL-POSTROUTING\n"),
        );
        let masq = Masquerade::new(fake.clone(), cidr("10.42.0.0/16"));
        assert!(!masq.ensure().unwrap());
        assert!(fake
            .log()
            .iter()
            .all(|l| !l.contains(" -A ") && !l.contains(" -N ")));
    }

    #[test]
    fn duplicate_jumps_are_removed_and_cleanup_removes_all() {
        let fake = FakeRunner::new();
        fake.answer(
            &format!("{NAT} -S SHOAL-POSTROUTING"),
            CommandOutput::ok("-N SHOAL-POSTROUTING\n-A SHOAL-POSTROUTING -s 10.42.0.0/16 ! -d 10.42.0.0/16 -j MASQUERADE\n"),
        );
        fake.answer(
            &format!("{NAT} -S POSTROUTING"),
            CommandOutput::ok("-P POSTROUTING ACCEPT\n-A POSTROUTING -j SHOAL-POSTROUTING\n-A POSTROUTING -j SHOAL-POSTROUTING\n"),
        );
        let masq = Masquerade::new(fake.clone(), cidr("10.42.0.0/16"));
        assert!(masq.ensure().unwrap());
        let deletes = |log: Vec<String>| {
            log.iter()
                .filter(|l| l.ends_with("-D POSTROUTING -j SHOAL-POSTROUTING"))
                .count()
        };
        assert_eq!(deletes(fake.log()), 1);
        fake.clear_log();
        masq.cleanup().unwrap();
        assert_eq!(deletes(fake.log()), 2);
        let log = fake.log();
        assert!(log.contains(&format!("{NAT} -F SHOAL-POSTROUTING")));
        assert!(log.contains(&format!("{NAT} -X SHOAL-POSTROUTING")));
    }
}
