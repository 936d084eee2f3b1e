//! The identity foca gossips about: who a member is, not what it has.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One incarnation of a node in the SWIM sense.
///
/// `addr` is foca's unique address (two identities with the same address
/// are the same node, and the one with the higher `boot` wins).
/// `boot` is chosen per process start (wall clock milliseconds, kept
/// strictly increasing within the process) and bumped by [`renew`] when the
/// cluster declared this node down, so a restarted or rejoining node always
/// replaces its previous self.
///
/// Metadata ([`super::NodeFacts`]) is not part of the identity: it travels in
/// custom broadcasts so it can change without a rejoin.
///
/// [`renew`]: foca::Identity::renew
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct NodeId {
    pub(crate) addr: SocketAddr,
    pub(crate) boot: u64,
    pub(crate) name: String,
}

impl NodeId {
    /// The identity of this process, with a boot id never used before by it.
    pub(crate) fn new_local(name: String, addr: SocketAddr, wall_ms: u64) -> NodeId {
        static LAST_BOOT: AtomicU64 = AtomicU64::new(0);
        let mut boot = wall_ms;
        let mut last = LAST_BOOT.load(Ordering::Relaxed);
        loop {
            // Strictly above any boot id handed out in this process, so two
            // starts within one millisecond (tests) still differ.
            boot = boot.max(last.saturating_add(1));
            match LAST_BOOT.compare_exchange_weak(last, boot, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(current) => last = current,
            }
        }
        NodeId { addr, boot, name }
    }

    /// What we announce to when only a peer's address is known: foca accepts
    /// an announce addressed to any identity with its address.
    pub(crate) fn probe_target(addr: SocketAddr) -> NodeId {
        NodeId {
            addr,
            boot: 0,
            name: String::new(),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.addr, self.boot)
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            addr: self.addr,
            boot: self.boot.saturating_add(1),
            name: self.name.clone(),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn boots_increase_and_renewal_wins() {
        let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let a = NodeId::new_local("a".into(), addr, 1_000);
        let b = NodeId::new_local("a".into(), addr, 1_000);
        assert!(b.boot > a.boot);
        assert!(b.win_addr_conflict(&a));
        let renewed = b.renew().unwrap();
        assert!(renewed.win_addr_conflict(&b));
        assert_eq!(renewed.addr(), addr);
    }
}
