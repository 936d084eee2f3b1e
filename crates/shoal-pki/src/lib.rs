//! The cluster's PKI and the secrets around it, as pure functions and
//! types (no I/O; the node decides where files live and what travels):
//!
//! - [`ca`]: the cluster's root CA, node certificates signed from CSRs
//!   (the CA decides everything but the public key), cross-signing for a
//!   root rotation, and the hash a join token pins;
//! - [`key`]: a node's own key pair and its CSR;
//! - [`identity`]: who a certificate speaks for. Every node certificate
//!   carries one SAN URI, `shoal://CLUSTER/ROLE/NAME/ADMISSION`, and a
//!   subject (CN = name, O = cluster, OU = role) that must agree with it;
//! - [`token`]: join tokens (`SHOAL-1-<CA hash>-<id>-<secret>`) and API
//!   tokens (`shoal_<id>_<secret>`), and the hashes the cluster keeps of
//!   their secrets;
//! - [`seal`]: XChaCha20-Poly1305 sealing of data at rest;
//! - [`tls`]: rustls configs (TLS 1.3, ring) that follow credentials
//!   swapped at run time: a renewed certificate or a new root applies to
//!   the next handshake without rebuilding clients or servers.

pub mod ca;
pub mod identity;
pub mod key;
pub mod seal;
pub mod tls;
pub mod token;

/// The name every shoal server certificate carries and every shoal client
/// checks, whatever address it dialled: nodes are reached by IP, and an
/// address may change while the certificate stays.
pub const SERVER_NAME: &str = "shoal-node";

/// Random bytes from the thread's CSPRNG (seeded by the OS).
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes[..]);
    bytes
}
