//! How a member is configured: names, addresses, the cluster id, SWIM's
//! timings, and the checks that they (and the node facts, which must fit
//! in a datagram) are usable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::facts::{FactsMsg, SIGNATURE_WIRE_BYTES};
use super::signing::FactsSigner;
use super::wire::GossipKeyring;
use super::{MembershipError, NodeFacts, CLUSTER_ID_MAX_BYTES, FACTS_MAX_BYTES, NAME_MAX_BYTES};

#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// Node name, unique in the cluster; must equal `facts.name`.
    pub name: String,
    /// Local address of the UDP gossip socket.
    pub bind: SocketAddr,
    /// Address the others send to (a concrete IP, not 0.0.0.0).
    pub advertise: SocketAddr,
    /// Identity of the cluster; datagrams of other clusters are dropped.
    pub cluster_id: String,
    pub facts: NodeFacts,
    /// JSON file of known peers' gossip addresses.
    pub peer_cache: PathBuf,
    /// How long a dead or departed node stays listed before it is forgotten.
    pub dead_forget_after: Duration,
    /// One member is probed per period.
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to
    /// probe indirectly. Below `probe_period`.
    pub probe_rtt: Duration,
    /// How long a suspect has to refute the suspicion before it is dead.
    pub suspect_to_down_after: Duration,
    /// Which envelopes are sent and taken; plaintext until the cluster
    /// seals (see [`GossipSealing`]).
    pub sealing: GossipSealing,
    /// The key this node signs its facts with (none: unsigned, as before
    /// shoal 0.9).
    pub facts_signer: Option<Arc<FactsSigner>>,
}

/// Which envelopes a member sends and takes. A cluster speaks plaintext
/// until every node reads sealed gossip; it then seals with the cluster's
/// keyring, taking plaintext a little longer so that nodes that switch a
/// moment later are still heard, and then only sealed datagrams. Once
/// every node reads proven identities, it sends those (version 3) the same
/// way: taking datagrams without them a little longer, then only those.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipSealing {
    /// The keys datagrams are sealed and opened with. With a ring and
    /// plaintext sent, sealed datagrams are still opened.
    pub keyring: Option<GossipKeyring>,
    /// Seal every datagram sent (needs a ring).
    pub send_sealed: bool,
    /// Take plaintext datagrams (the cluster id's hash, not a secret).
    pub accept_plaintext: bool,
    /// Send each identity with its proof (sealed datagrams only).
    pub send_proofs: bool,
    /// Take datagrams whose identities come without proofs (versions 1
    /// and 2). With proofs sent, sealed datagrams of both kinds are taken
    /// until this is off.
    pub accept_unproven: bool,
}

impl GossipSealing {
    /// Plaintext sent and taken, and sealed datagrams opened with `keyring`.
    pub fn plaintext(keyring: Option<GossipKeyring>) -> GossipSealing {
        GossipSealing {
            keyring,
            send_sealed: false,
            accept_plaintext: true,
            send_proofs: false,
            accept_unproven: true,
        }
    }

    /// Sealed datagrams only, their identities proven or not.
    pub fn sealed(keyring: GossipKeyring) -> GossipSealing {
        GossipSealing {
            accept_plaintext: false,
            send_sealed: true,
            ..GossipSealing::plaintext(Some(keyring))
        }
    }

    /// Sealed datagrams with proven identities only.
    pub fn proven(keyring: GossipKeyring) -> GossipSealing {
        GossipSealing {
            send_proofs: true,
            accept_unproven: false,
            ..GossipSealing::sealed(keyring)
        }
    }

    /// Whether nothing but sealed datagrams is sent and taken.
    pub fn is_sealed(&self) -> bool {
        self.send_sealed && !self.accept_plaintext
    }

    /// Whether nothing but proven identities is sent and taken.
    pub fn is_proven(&self) -> bool {
        self.send_proofs && !self.accept_unproven
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if self.send_proofs && !self.send_sealed {
            return Err("proofs are sent in sealed datagrams only: set send_sealed".into());
        }
        if !self.accept_unproven && !self.send_proofs {
            return Err(
                "a member that takes only proven identities must send them: set send_proofs".into(),
            );
        }
        if !self.accept_unproven && self.accept_plaintext {
            return Err(
                "plaintext datagrams carry no proofs: a member that takes them takes unproven identities"
                    .into(),
            );
        }
        match &self.keyring {
            Some(ring) => ring
                .check()
                .map_err(|message| format!("keyring: {message}")),
            None if self.send_sealed || !self.accept_plaintext => Err(
                "sealing needs a keyring: without one no datagram could be sent or taken".into(),
            ),
            None => Ok(()),
        }
    }
}

impl Default for GossipSealing {
    fn default() -> GossipSealing {
        GossipSealing::plaintext(None)
    }
}

impl MembershipConfig {
    /// A configuration with the defaults: advertise = bind, dead nodes
    /// forgotten after 5 minutes, and timings that declare a crashed node
    /// dead about 3 s after it stops answering on a LAN (probe every
    /// 500 ms, 200 ms round trip, 2 s of suspicion).
    pub fn new(
        name: impl Into<String>,
        bind: SocketAddr,
        cluster_id: impl Into<String>,
        facts: NodeFacts,
        peer_cache: impl Into<PathBuf>,
    ) -> MembershipConfig {
        MembershipConfig {
            name: name.into(),
            bind,
            advertise: bind,
            cluster_id: cluster_id.into(),
            facts,
            peer_cache: peer_cache.into(),
            dead_forget_after: super::DEFAULT_FORGET_DEAD_AFTER,
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspect_to_down_after: Duration::from_secs(2),
            sealing: GossipSealing::default(),
            facts_signer: None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), MembershipError> {
        let invalid = |msg: String| Err(MembershipError::InvalidConfig(msg));
        if self.name.is_empty() || self.name.len() > NAME_MAX_BYTES {
            return invalid(format!(
                "name: must be 1 to {NAME_MAX_BYTES} bytes, got {}",
                self.name.len()
            ));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > CLUSTER_ID_MAX_BYTES {
            return invalid(format!(
                "cluster_id: must be 1 to {CLUSTER_ID_MAX_BYTES} bytes, got {}",
                self.cluster_id.len()
            ));
        }
        if self.advertise.ip().is_unspecified() || self.advertise.port() == 0 {
            return invalid(format!(
                "advertise: {} is not an address others can send to (give a concrete IP and port)",
                self.advertise
            ));
        }
        if self.probe_period.is_zero() || self.probe_rtt.is_zero() {
            return invalid("probe_period and probe_rtt must be above zero".into());
        }
        if self.probe_rtt >= self.probe_period {
            return invalid(format!(
                "probe_rtt ({:?}) must be below probe_period ({:?})",
                self.probe_rtt, self.probe_period
            ));
        }
        if self.suspect_to_down_after.is_zero() {
            return invalid("suspect_to_down_after must be above zero".into());
        }
        if self.dead_forget_after < Duration::from_secs(1) {
            return invalid("dead_forget_after must be at least 1s".into());
        }
        if let Err(message) = self.sealing.check() {
            return invalid(format!("sealing: {message}"));
        }
        check_facts(&self.name, &self.facts, self.advertise)
    }
}

pub(super) fn check_facts(
    name: &str,
    facts: &NodeFacts,
    advertise: SocketAddr,
) -> Result<(), MembershipError> {
    if facts.name != name {
        return Err(MembershipError::FactsName {
            facts: facts.name.clone(),
            node: name.to_owned(),
        });
    }
    // The largest the broadcast can be: the biggest varints, this node's
    // gossip address and a signature.
    let size = FactsMsg {
        boot: u64::MAX,
        seq: u64::MAX,
        left: true,
        facts: facts.clone(),
        addr: Some(advertise),
    }
    .encode()
    .map_err(|err| MembershipError::Encode(err.to_string()))?
    .len()
        + SIGNATURE_WIRE_BYTES;
    if size > FACTS_MAX_BYTES {
        return Err(MembershipError::FactsTooLarge {
            size,
            max: FACTS_MAX_BYTES,
        });
    }
    Ok(())
}
