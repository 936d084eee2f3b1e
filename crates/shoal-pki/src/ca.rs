//! The cluster's certificate authority: a root made when the cluster
//! forms, node certificates issued from CSRs, cross-signing for a root
//! rotation, and the bundle hash a join token pins.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::identity::{Identity, Role};

/// How long a root lives.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Shortest and longest node certificate lifetime the CA issues.
pub const LEAF_LIFETIME_MIN: Duration = Duration::from_secs(60);
pub const LEAF_LIFETIME_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start this much before they are made, for clocks a little behind.
pub const LEAF_BACKDATE: Duration = Duration::from_secs(60);
const ROOT_BACKDATE: Duration = Duration::from_secs(3600);
/// Longest CSR accepted, in bytes of PEM.
pub const CSR_BYTES_MAX: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CSR does not read or its signature does not verify: {0}")]
    BadCsr(String),
    #[error("the CSR is larger than {CSR_BYTES_MAX} bytes")]
    CsrTooLarge,
    #[error("the CA's certificate or key does not read: {0}")]
    BadCa(String),
    #[error("{0}")]
    Invalid(String),
    #[error("making a certificate: {0}")]
    Sign(String),
}

fn sign_error(error: rcgen::Error) -> CaError {
    CaError::Sign(error.to_string())
}

/// A CA certificate and its private key.
pub struct Ca {
    cert_pem: String,
    key_pem: Zeroizing<String>,
}

/// What a node asks for, as the CA decides it: from the CSR only its
/// public key is used.
pub struct IssueRequest<'a> {
    pub csr_pem: &'a str,
    pub identity: &'a Identity,
    pub lifetime: Duration,
    pub now: SystemTime,
}

/// A certificate the CA made.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = crate::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and of full length
    SerialNumber::from_slice(&bytes)
}

fn ca_params(cluster_id: &str, generation: u32, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("shoal cluster CA {generation}"));
    name.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = name;
    params.not_before = (now - ROOT_BACKDATE).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial());
    // Path length 1: a root may sign a cross-signed root, which signs leaves.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params
}

impl Ca {
    /// A new root for `cluster_id`: ECDSA P-256, ten years. Each root of
    /// a cluster has its own `generation` (1 for the first), in its name.
    pub fn generate(cluster_id: &str, generation: u32, now: SystemTime) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_error)?;
        let cert = ca_params(cluster_id, generation, now)
            .self_signed(&key)
            .map_err(sign_error)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadCa(e.to_string()))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::BadCa(e.to_string()))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::BadCa(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::BadCa(
                "the CA key does not belong to the CA certificate".to_string(),
            ));
        }
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: Zeroizing::new(key_pem.to_string()),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CaError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| CaError::BadCa(e.to_string()))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|e| CaError::BadCa(e.to_string()))
    }

    /// Signs a node certificate for `request.identity` with the public key
    /// of the CSR. Whatever else the CSR asks for (names, key usages, being
    /// a CA) is ignored: the CA writes every field itself.
    pub fn issue(&self, request: &IssueRequest<'_>) -> Result<Issued, CaError> {
        if request.csr_pem.len() > CSR_BYTES_MAX {
            return Err(CaError::CsrTooLarge);
        }
        let lifetime = request.lifetime;
        if !(LEAF_LIFETIME_MIN..=LEAF_LIFETIME_MAX).contains(&lifetime) {
            return Err(CaError::Invalid(format!(
                "a certificate lifetime is {} s to {} s, not {} s",
                LEAF_LIFETIME_MIN.as_secs(),
                LEAF_LIFETIME_MAX.as_secs(),
                lifetime.as_secs()
            )));
        }
        request.identity.check()?;
        let der = CertificateSigningRequestDer::from_pem_slice(request.csr_pem.as_bytes())
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        // Verifies the CSR's signature: the asker holds the private key.
        let csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let identity = request.identity;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, identity.name.as_str());
        name.push(DnType::OrganizationName, identity.cluster_id.as_str());
        name.push(DnType::OrganizationalUnitName, identity.role.as_str());
        params.distinguished_name = name;
        params.subject_alt_names = vec![
            SanType::DnsName(
                crate::SERVER_NAME
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
            ),
            SanType::URI(
                identity
                    .uri()
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
            ),
        ];
        let not_before = request.now - LEAF_BACKDATE;
        let not_after = request.now + lifetime;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(sign_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            not_before,
            not_after,
        })
    }

    /// `next` (a new root) signed by this root: nodes that trust only this
    /// root accept leaves of `next` whose chain carries it, so a rotation
    /// needs no moment when some node trusts the new root and another not.
    /// `next_generation` must be the one `next` was made with: the
    /// cross-signed certificate has `next`'s subject and key.
    pub fn cross_sign(
        &self,
        next: &Ca,
        cluster_id: &str,
        next_generation: u32,
        now: SystemTime,
    ) -> Result<String, CaError> {
        let key = KeyPair::from_pem(&next.key_pem).map_err(|e| CaError::BadCa(e.to_string()))?;
        let mut params = ca_params(cluster_id, next_generation, now);
        // A cross-signed root signs leaves only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(sign_error)?;
        Ok(cert.pem())
    }
}

/// The SHA-256 over the DER of every certificate in `bundle_pem`, in
/// order, as 64 lowercase hex digits. A joiner hashes the whole bundle, so
/// nobody in the middle can add a root of their own to it.
pub fn bundle_hash(bundle_pem: &str) -> Result<String, CaError> {
    let mut hasher = Sha256::new();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        let cert = cert.map_err(|e| CaError::BadCa(e.to_string()))?;
        hasher.update(cert.as_ref());
        count += 1;
    }
    if count == 0 {
        return Err(CaError::BadCa("the bundle holds no certificate".into()));
    }
    Ok(hex::encode(hasher.finalize()))
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// The certificates of `bundle_pem`, each as a PEM block of its own, in
/// order. Text outside the blocks is dropped; a block that does not read
/// as a certificate is an error.
pub fn bundle_certificates(bundle_pem: &str) -> Result<Vec<String>, CaError> {
    let mut blocks = Vec::new();
    let mut rest = bundle_pem;
    while let Some(start) = rest.find(PEM_BEGIN) {
        let Some(length) = rest[start..].find(PEM_END) else {
            return Err(CaError::BadCa("a certificate block has no end".into()));
        };
        let end = start + length + PEM_END.len();
        let block = format!("{}\n", &rest[start..end]);
        CertificateDer::from_pem_slice(block.as_bytes())
            .map_err(|e| CaError::BadCa(e.to_string()))?;
        blocks.push(block);
        rest = &rest[end..];
    }
    if blocks.is_empty() {
        return Err(CaError::BadCa("the bundle holds no certificate".into()));
    }
    Ok(blocks)
}

/// What a join token that pins `pin` trusts of the bundle a node shows:
/// the whole bundle when its hash is the pin, or else the one certificate
/// of it whose hash is (a token made before a rotation pins the root of
/// its moment, which the bundle holds beside the new one while the
/// rotation is under way). Nothing when neither: no root is ever taken
/// that the pin does not name.
pub fn pinned(bundle_pem: &str, pin: &str) -> Option<String> {
    if bundle_hash(bundle_pem).ok()? == pin {
        return Some(bundle_pem.to_string());
    }
    bundle_certificates(bundle_pem)
        .ok()?
        .into_iter()
        .find(|cert| bundle_hash(cert).is_ok_and(|hash| hash == pin))
}

/// Whether the first certificate of `chain_pem` was issued by the CA
/// certificate `ca_pem`: its issuer is the CA's subject and, where both
/// carry them, its authority key id is the CA's subject key id. (Each root
/// of a cluster has a name of its own, with its generation.)
pub fn issued_by(chain_pem: &str, ca_pem: &str) -> bool {
    let (Ok(leaf), Ok(ca)) = (
        CertificateDer::from_pem_slice(chain_pem.as_bytes()),
        CertificateDer::from_pem_slice(ca_pem.as_bytes()),
    ) else {
        return false;
    };
    let (Ok((_, leaf)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(&leaf),
        x509_parser::parse_x509_certificate(&ca),
    ) else {
        return false;
    };
    if leaf.issuer().as_raw() != ca.subject().as_raw() {
        return false;
    }
    let authority = leaf
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        });
    let subject = ca
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(id.0.to_vec())
            }
            _ => None,
        });
    match (authority, subject) {
        (Some(authority), Some(subject)) => authority == subject,
        _ => true,
    }
}

/// A CA certificate as listed: its subject, the SHA-256 of its DER (as a
/// join token pins it) and its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaSummary {
    pub subject: String,
    pub sha256: String,
    pub not_after: SystemTime,
}

pub fn summary(cert_pem: &str) -> Result<CaSummary, CaError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| CaError::BadCa(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::BadCa(e.to_string()))?;
    let not_after = crate::identity::not_after(&der).map_err(|e| CaError::BadCa(e.to_string()))?;
    Ok(CaSummary {
        subject: cert.subject().to_string(),
        sha256: hex::encode(Sha256::digest(der.as_ref())),
        not_after,
    })
}

/// Whether `role` may be issued by a token of `token_role` (a voter token
/// admits workers too).
pub fn role_allowed(token_role: Role, role: Role) -> bool {
    token_role == Role::Voter || role == Role::Worker
}

impl Ca {
    /// A key and certificate for `identity` made here (the node that forms
    /// a cluster; tests), returned as (chain PEM, key PEM).
    pub fn issue_new_key(
        &self,
        identity: &Identity,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(String, Zeroizing<String>), CaError> {
        let key = crate::key::NodeKey::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let csr = key
            .csr_pem(&identity.name)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let issued = self.issue(&IssueRequest {
            csr_pem: &csr,
            identity,
            lifetime,
            now,
        })?;
        Ok((issued.cert_pem, key.key_pem()))
    }
}
