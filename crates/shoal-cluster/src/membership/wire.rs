//! The envelope around every gossip datagram.
//!
//! ```text
//! 0      4        5                    13
//! | SHGS | version | fnv1a64(cluster id) | foca packet ...
//! ```
//!
//! The envelope names the cluster, so two clusters sharing a network never
//! merge: a datagram of another cluster (or of anything else) is dropped
//! before foca sees it. It is not authentication: anyone who knows the
//! cluster id can speak.

/// First bytes of every datagram.
pub(crate) const MAGIC: [u8; 4] = *b"SHGS";
/// Bumped on any incompatible change of the envelope or of what it carries.
pub(crate) const WIRE_VERSION: u8 = 1;
/// Bytes in front of the foca packet.
pub(crate) const PREFIX_LEN: usize = MAGIC.len() + 1 + 8;

pub(crate) type Prefix = [u8; PREFIX_LEN];

/// The envelope for one cluster.
pub(crate) fn prefix(cluster_id: &str) -> Prefix {
    let mut out = [0u8; PREFIX_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = WIRE_VERSION;
    out[5..].copy_from_slice(&cluster_hash(cluster_id).to_be_bytes());
    out
}

/// Why a datagram was dropped before reaching foca.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not ours at all: too short, wrong magic or unknown version.
    Malformed,
    /// A shoal gossip datagram of another cluster.
    OtherCluster,
}

/// The foca packet inside `datagram` if it belongs to this cluster.
pub(crate) fn open<'a>(expected: &Prefix, datagram: &'a [u8]) -> Result<&'a [u8], Reject> {
    let (head, body) = datagram
        .split_at_checked(PREFIX_LEN)
        .ok_or(Reject::Malformed)?;
    if head[..4] != MAGIC || head[4] != WIRE_VERSION {
        return Err(Reject::Malformed);
    }
    if head[5..] != expected[5..] {
        return Err(Reject::OtherCluster);
    }
    if body.is_empty() {
        return Err(Reject::Malformed);
    }
    Ok(body)
}

/// FNV-1a, 64 bits, over a domain tag and the cluster id: stable across
/// builds and platforms (unlike std's hasher), which is all this needs.
fn cluster_hash(cluster_id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    b"shoal-gossip-cluster\0"
        .iter()
        .chain(cluster_id.as_bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_own_cluster_only() {
        let x = prefix("x");
        let y = prefix("y");
        let mut packet = x.to_vec();
        packet.extend_from_slice(b"data");
        assert_eq!(open(&x, &packet), Ok(&b"data"[..]));
        assert_eq!(open(&y, &packet), Err(Reject::OtherCluster));
        assert_eq!(open(&x, &packet[..5]), Err(Reject::Malformed));
        assert_eq!(open(&x, &x), Err(Reject::Malformed));
        let mut other_version = packet.clone();
        other_version[4] = WIRE_VERSION + 1;
        assert_eq!(open(&x, &other_version), Err(Reject::Malformed));
        assert_eq!(open(&x, b"GET / HTTP/1.1\r\n\r\n"), Err(Reject::Malformed));
    }

    #[test]
    fn hash_is_stable() {
        // Changing this breaks gossip between versions: bump WIRE_VERSION.
        let mut expected = *b"SHGS\x01\0\0\0\0\0\0\0\0";
        expected[5..].copy_from_slice(&0x62cc_8051_9397_51a2_u64.to_be_bytes());
        assert_eq!(prefix("shoal"), expected);
        assert_ne!(prefix("shoal")[5..], prefix("shoal2")[5..]);
    }
}
