//! Who a node certificate speaks for. The identity is one SAN URI,
//! `shoal://CLUSTER/ROLE/NAME/ADMISSION`, and the subject (CN = name,
//! O = cluster, OU = role) must agree with it; a certificate that carries
//! none, two, or one that disagrees speaks for nobody.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::ca::CaError;

/// What a node may be, as its certificate says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// May vote, holds the data key, signs certificates.
    Voter,
    /// Runs work only.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Worker => "worker",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "voter" => Some(Role::Voter),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster_id: String,
    pub role: Role,
    /// The node's name.
    pub name: String,
    /// 16 hex digits, the same across renewals, new with every join.
    pub admission: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate does not parse: {0}")]
    Unparsable(String),
    #[error("the certificate carries no shoal identity (no shoal:// URI)")]
    Missing,
    #[error("the certificate carries more than one shoal identity")]
    Ambiguous,
    #[error("the certificate's shoal identity is malformed: {0}")]
    Malformed(String),
    #[error("the certificate's subject does not agree with its shoal identity ({0})")]
    Disagrees(&'static str),
}

const URI_PREFIX: &str = "shoal://";
const PART_CHARS_MAX: usize = 100;

fn check_part(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty()
        || text.len() > PART_CHARS_MAX
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(format!(
            "{what} must be 1 to {PART_CHARS_MAX} of a-z, 0-9, '-', '.', '_'"
        ));
    }
    Ok(())
}

impl Identity {
    pub fn uri(&self) -> String {
        format!(
            "{URI_PREFIX}{}/{}/{}/{}",
            self.cluster_id,
            self.role.as_str(),
            self.name,
            self.admission
        )
    }

    pub(crate) fn check(&self) -> Result<(), CaError> {
        check_part("cluster id", &self.cluster_id).map_err(CaError::Invalid)?;
        check_part("node name", &self.name).map_err(CaError::Invalid)?;
        check_admission(&self.admission).map_err(CaError::Invalid)
    }

    pub fn parse_uri(uri: &str) -> Result<Identity, IdentityError> {
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| IdentityError::Malformed("not a shoal:// URI".into()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [cluster_id, role, name, admission] = parts[..] else {
            return Err(IdentityError::Malformed(
                "want shoal://CLUSTER/ROLE/NAME/ADMISSION".into(),
            ));
        };
        check_part("cluster id", cluster_id).map_err(IdentityError::Malformed)?;
        check_part("node name", name).map_err(IdentityError::Malformed)?;
        check_admission(admission).map_err(IdentityError::Malformed)?;
        let role = Role::parse(role)
            .ok_or_else(|| IdentityError::Malformed(format!("unknown role `{role}`")))?;
        Ok(Identity {
            cluster_id: cluster_id.into(),
            role,
            name: name.into(),
            admission: admission.into(),
        })
    }

    /// The identity of a certificate (DER), checked against its subject.
    /// Says nothing of who signed it: TLS verified that already.
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        identity_of(&cert)
    }

    /// A new random admission (16 hex digits).
    pub fn new_admission() -> String {
        hex::encode(crate::random::<8>())
    }
}

fn check_admission(admission: &str) -> Result<(), String> {
    if admission.len() == 16
        && admission
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err("the admission must be 16 lowercase hex digits".into())
    }
}

fn identity_of(cert: &X509Certificate<'_>) -> Result<Identity, IdentityError> {
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if uri.starts_with(URI_PREFIX) {
                    uris.push(*uri);
                }
            }
        }
    }
    let identity = match uris[..] {
        [] => return Err(IdentityError::Missing),
        [uri] => Identity::parse_uri(uri)?,
        _ => return Err(IdentityError::Ambiguous),
    };
    let subject = cert.subject();
    let single = |values: Vec<&str>| match values[..] {
        [value] => Some(value.to_string()),
        _ => None,
    };
    let cn = single(
        subject
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect(),
    );
    let o = single(
        subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .collect(),
    );
    let ou = single(
        subject
            .iter_organizational_unit()
            .filter_map(|a| a.as_str().ok())
            .collect(),
    );
    if cn.as_deref() != Some(identity.name.as_str()) {
        return Err(IdentityError::Disagrees("CN"));
    }
    if o.as_deref() != Some(identity.cluster_id.as_str()) {
        return Err(IdentityError::Disagrees("O"));
    }
    if ou.as_deref() != Some(identity.role.as_str()) {
        return Err(IdentityError::Disagrees("OU"));
    }
    Ok(identity)
}

/// When a certificate (DER) stops being valid.
pub fn not_after(der: &[u8]) -> Result<SystemTime, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let seconds = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

/// When a certificate (DER) started being valid.
pub fn not_before(der: &[u8]) -> Result<SystemTime, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let seconds = cert.validity().not_before.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}
