//! A node's own key pair: it never leaves the node; only a CSR travels.

use rcgen::{CertificateParams, KeyPair};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the node's private key does not read: {0}")]
    Unreadable(String),
    #[error("making a key or CSR: {0}")]
    Generate(String),
}

pub struct NodeKey {
    pair: KeyPair,
}

impl NodeKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<NodeKey, KeyError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|pair| NodeKey { pair })
            .map_err(|error| KeyError::Generate(error.to_string()))
    }

    pub fn from_pem(pem: &str) -> Result<NodeKey, KeyError> {
        KeyPair::from_pem(pem)
            .map(|pair| NodeKey { pair })
            .map_err(|error| KeyError::Unreadable(error.to_string()))
    }

    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.pair.serialize_pem())
    }

    /// A CSR naming `name`; the CA reads only its public key.
    pub fn csr_pem(&self, name: &str) -> Result<String, KeyError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
            .serialize_request(&self.pair)
            .and_then(|csr| csr.pem())
            .map_err(|error| KeyError::Generate(error.to_string()))
    }
}
