//! IPv4 CIDRs and the choice of a node's subnet inside the cluster CIDR.
//!
//! Pure: no I/O. The caller gathers the subnets other nodes already hold
//! (from the replicated state) and stores the answer there, so two nodes
//! never pick the same one without the log ordering their choices.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The cluster CIDR when the operator gives none.
pub const CLUSTER_CIDR_DEFAULT: &str = "10.42.0.0/16";
/// The prefix length of each node's subnet when the operator gives none
/// (254 task addresses per node).
pub const NODE_PREFIX_LEN_DEFAULT: u8 = 24;

/// An IPv4 network: an address with all host bits zero, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// What was wrong with a CIDR or an allocation request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("{field}: `{value}` is not an IPv4 CIDR ({reason}); write it like 10.42.0.0/16")]
    Parse {
        field: String,
        value: String,
        reason: String,
    },
    #[error("{field}: `{value}` has host bits set; did you mean {suggestion}?")]
    HostBitsSet {
        field: String,
        value: String,
        suggestion: Ipv4Cidr,
    },
    #[error("node prefix length /{node_prefix_len} does not fit in the cluster CIDR {cluster}: it must be between /{} and /30", cluster.prefix_len())]
    NodePrefixInvalid {
        cluster: Ipv4Cidr,
        node_prefix_len: u8,
    },
    #[error("the cluster CIDR {cluster} has no free /{node_prefix_len} left ({taken} subnets taken); widen the cluster CIDR or free the subnets of nodes that left")]
    Exhausted {
        cluster: Ipv4Cidr,
        node_prefix_len: u8,
        taken: usize,
    },
}

impl Ipv4Cidr {
    /// A CIDR from its parts; host bits must be zero.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, SubnetError> {
        let text = format!("{network}/{prefix_len}");
        if prefix_len > 32 {
            return Err(SubnetError::Parse {
                field: "cidr".into(),
                value: text,
                reason: "the prefix length must be at most 32".into(),
            });
        }
        let cidr = Self::containing(network, prefix_len);
        if cidr.network != network {
            return Err(SubnetError::HostBitsSet {
                field: "cidr".into(),
                value: text,
                suggestion: cidr,
            });
        }
        Ok(cidr)
    }

    /// Parses `text`, naming `field` in the error (e.g. `--cluster-cidr`).
    pub fn parse(field: &str, text: &str) -> Result<Self, SubnetError> {
        let parse_error = |reason: &str| SubnetError::Parse {
            field: field.to_owned(),
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (address, prefix) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| parse_error("missing `/PREFIX`"))?;
        let network: Ipv4Addr = address
            .parse()
            .map_err(|_| parse_error("the address is not a dotted IPv4 address"))?;
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| parse_error("the prefix length is not a number"))?;
        Self::new(network, prefix_len).map_err(|e| match e {
            SubnetError::Parse { reason, .. } => parse_error(&reason),
            SubnetError::HostBitsSet { suggestion, .. } => SubnetError::HostBitsSet {
                field: field.to_owned(),
                value: text.to_owned(),
                suggestion,
            },
            other => other,
        })
    }

    /// The network of length `prefix_len` that holds `address`.
    pub fn containing(address: Ipv4Addr, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(32);
        Self {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix_len)),
            prefix_len,
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The last address of the network (its broadcast address).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    /// The first usable address, which the node's bridge takes as the
    /// tasks' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).saturating_add(1))
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// Whether `other` lies wholly inside this network.
    pub fn contains_cidr(&self, other: &Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.network)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = SubnetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse("cidr", text)
    }
}

fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

/// The lowest `/node_prefix_len` subnet of `cluster` that overlaps none of
/// `taken`. Subnets in `taken` outside the cluster are ignored. The search
/// jumps past each taken subnet, so it takes at most `taken.len() + 1` steps
/// whatever the size of the cluster.
pub fn next_free_subnet(
    cluster: Ipv4Cidr,
    node_prefix_len: u8,
    taken: &BTreeSet<Ipv4Cidr>,
) -> Result<Ipv4Cidr, SubnetError> {
    // A /31 or /32 leaves no room for a gateway and a task.
    if node_prefix_len < cluster.prefix_len() || node_prefix_len > 30 {
        return Err(SubnetError::NodePrefixInvalid {
            cluster,
            node_prefix_len,
        });
    }
    let size = 1u64 << (32 - u32::from(node_prefix_len));
    let end = u64::from(u32::from(cluster.last())) + 1;
    let mut candidate = u64::from(u32::from(cluster.network()));
    let steps_max = taken.len() + 1;
    for _ in 0..steps_max {
        if candidate >= end {
            break;
        }
        // candidate < end ≤ 2^32, so it fits in u32.
        let subnet = Ipv4Cidr::containing(Ipv4Addr::from(candidate as u32), node_prefix_len);
        let blocking_end = taken
            .iter()
            .filter(|t| t.overlaps(&subnet))
            .map(|t| u64::from(u32::from(t.last())) + 1)
            .max();
        match blocking_end {
            None => return Ok(subnet),
            // Skip past the taken block, rounded up to a subnet boundary.
            Some(blocked_until) => {
                let next = candidate + size;
                candidate = next.max(blocked_until.div_ceil(size) * size);
            }
        }
    }
    Err(SubnetError::Exhausted {
        cluster,
        node_prefix_len,
        taken: taken.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    fn set(items: &[&str]) -> BTreeSet<Ipv4Cidr> {
        items.iter().map(|t| cidr(t)).collect()
    }

    #[test]
    fn parses_and_prints() {
        let c = Ipv4Cidr::parse("--cluster-cidr", " 10.42.0.0/16 ").unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!(c.last(), Ipv4Addr::new(10, 42, 255, 255));
        assert_eq!(cidr("10.42.7.0/24").gateway(), Ipv4Addr::new(10, 42, 7, 1));
        assert_eq!(cidr("0.0.0.0/0").last(), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn parse_errors_name_the_field_and_say_what_to_write() {
        let err = Ipv4Cidr::parse("--cluster-cidr", "10.42.0.0").unwrap_err();
        assert!(
            err.to_string().starts_with("--cluster-cidr: `10.42.0.0`"),
            "{err}"
        );
        assert!(err.to_string().contains("missing `/PREFIX`"), "{err}");
        let err = Ipv4Cidr::parse("--cluster-cidr", "10.42.0.300/16").unwrap_err();
        assert!(err.to_string().contains("not a dotted IPv4"), "{err}");
        let err = Ipv4Cidr::parse("--cluster-cidr", "10.42.0.0/33").unwrap_err();
        assert!(err.to_string().contains("at most 32"), "{err}");
        let err = Ipv4Cidr::parse("--cluster-cidr", "10.42.1.0/16").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--cluster-cidr: `10.42.1.0/16` has host bits set; did you mean 10.42.0.0/16?"
        );
    }

    #[test]
    fn overlap_and_containment() {
        let cluster = cidr("10.42.0.0/16");
        assert!(cluster.contains_cidr(&cidr("10.42.3.0/24")));
        assert!(!cluster.contains_cidr(&cidr("10.43.0.0/24")));
        assert!(!cidr("10.42.3.0/24").contains_cidr(&cluster));
        assert!(cidr("10.42.3.0/24").overlaps(&cluster));
        assert!(!cidr("10.42.3.0/24").overlaps(&cidr("10.42.4.0/24")));
    }

    #[test]
    fn the_first_node_gets_the_first_subnet() {
        let got = next_free_subnet(cidr("10.42.0.0/16"), 24, &BTreeSet::new()).unwrap();
        assert_eq!(got, cidr("10.42.0.0/24"));
    }

    #[test]
    fn taken_subnets_and_holes_are_handled() {
        let taken = set(&["10.42.0.0/24", "10.42.1.0/24", "10.42.3.0/24"]);
        let got = next_free_subnet(cidr("10.42.0.0/16"), 24, &taken).unwrap();
        assert_eq!(got, cidr("10.42.2.0/24"));
    }

    #[test]
    fn a_larger_taken_block_is_skipped_in_one_step() {
        // Someone reserved 10.42.0.0/20 (16 /24s) and a stray /28 in the next.
        let taken = set(&["10.42.0.0/20", "10.42.16.16/28", "192.168.0.0/24"]);
        let got = next_free_subnet(cidr("10.42.0.0/16"), 24, &taken).unwrap();
        assert_eq!(got, cidr("10.42.17.0/24"));
    }

    #[test]
    fn exhaustion_is_an_error_that_says_what_to_do() {
        let taken = set(&["10.42.0.0/25", "10.42.0.128/25"]);
        let err = next_free_subnet(cidr("10.42.0.0/24"), 25, &taken).unwrap_err();
        assert_eq!(
            err,
            SubnetError::Exhausted {
                cluster: cidr("10.42.0.0/24"),
                node_prefix_len: 25,
                taken: 2
            }
        );
        assert!(err.to_string().contains("widen the cluster CIDR"));
        // A single taken block covering the whole cluster also exhausts it.
        let err = next_free_subnet(cidr("10.42.0.0/16"), 24, &set(&["10.0.0.0/8"])).unwrap_err();
        assert!(matches!(err, SubnetError::Exhausted { .. }));
    }

    #[test]
    fn the_whole_address_space_ends_without_overflow() {
        let taken = set(&["0.0.0.0/1", "128.0.0.0/1"]);
        let err = next_free_subnet(cidr("0.0.0.0/0"), 24, &taken).unwrap_err();
        assert!(matches!(err, SubnetError::Exhausted { .. }));
        let got = next_free_subnet(cidr("0.0.0.0/0"), 24, &set(&["0.0.0.0/1"])).unwrap();
        assert_eq!(got, cidr("128.0.0.0/24"));
    }

    #[test]
    fn node_prefix_must_fit() {
        let err = next_free_subnet(cidr("10.42.0.0/16"), 12, &BTreeSet::new()).unwrap_err();
        assert!(err.to_string().contains("between /16 and /30"), "{err}");
        assert!(next_free_subnet(cidr("10.42.0.0/16"), 31, &BTreeSet::new()).is_err());
    }

    #[test]
    fn filling_a_cluster_one_node_at_a_time_gives_distinct_subnets() {
        let cluster = cidr("10.42.0.0/22");
        let mut taken = BTreeSet::new();
        for _ in 0..4 {
            let got = next_free_subnet(cluster, 24, &taken).unwrap();
            assert!(cluster.contains_cidr(&got));
            assert!(taken.iter().all(|t: &Ipv4Cidr| !t.overlaps(&got)));
            taken.insert(got);
        }
        assert!(next_free_subnet(cluster, 24, &taken).is_err());
    }
}
