//! Registry settings the cluster keeps (format 4): how to reach each
//! registry host and who to be there. The password arrives sealed with the
//! cluster's data key (as the CA key does) and is stored as it came: the
//! state machine never sees it in the clear. From format 10 a record may
//! name a secret of the secrets store instead (`password_secret`), which
//! then cannot be removed while the record names it, and whose every new
//! version is the password from then on.

use serde::{Deserialize, Serialize};

use crate::{ApplyError, Outcome, State};

/// Registries kept at once.
pub const REGISTRIES_MAX: usize = 1_000;
/// Longest CA bundle (PEM) per registry.
const CA_PEM_BYTES_MAX: usize = 64 * 1024;
/// Longest sealed password.
const SEALED_BYTES_MAX: usize = 4 * 1024;
/// Longest user name.
const USERNAME_CHARS_MAX: usize = 256;
/// Longest registry host (`name[:port]`).
const HOST_CHARS_MAX: usize = 253 + 6;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryRecord {
    /// `host[:port]`, as image references name it (`docker.io` for Docker Hub).
    pub host: String,
    /// Plain HTTP allowed. Without a record, only loopback registries get it.
    #[serde(default)]
    pub insecure: bool,
    /// CA certificates (PEM) trusted for this registry besides the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password sealed with the data key, bound to `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sealed: Option<String>,
    /// The secret whose value is the password (format 10), where
    /// `password_sealed` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    pub updated_at_ms: u64,
}

/// Checks the shape of a registry host: a DNS name or IPv4 address, an
/// optional port; what image references accept before their first `/`.
pub fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if host.is_empty() || host.len() > HOST_CHARS_MAX || host.contains('/') {
        return Err(format!(
            "`{host}` is not a registry host (HOST or HOST:PORT, no scheme or path)"
        ));
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "`{host}`: the port must be a number from 1 to 65535"
            ));
        }
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !name.split('.').all(label_ok) {
        return Err(format!(
            "`{host}` is not a registry host (HOST or HOST:PORT)"
        ));
    }
    Ok(())
}

impl State {
    pub(crate) fn set_registry(&mut self, record: &RegistryRecord) -> Result<Outcome, ApplyError> {
        check_host(&record.host).map_err(|why| ApplyError::Refused(format!("host: {why}")))?;
        if record
            .ca_pem
            .as_ref()
            .is_some_and(|pem| pem.len() > CA_PEM_BYTES_MAX)
        {
            return Err(ApplyError::TooLarge(format!(
                "ca: more than {CA_PEM_BYTES_MAX} bytes of PEM"
            )));
        }
        if record
            .password_sealed
            .as_ref()
            .is_some_and(|sealed| sealed.len() > SEALED_BYTES_MAX)
        {
            return Err(ApplyError::TooLarge(format!(
                "password: more than {SEALED_BYTES_MAX} bytes sealed"
            )));
        }
        if record.username.as_ref().is_some_and(|user| {
            user.is_empty()
                || user.chars().count() > USERNAME_CHARS_MAX
                || user.chars().any(char::is_control)
        }) {
            return Err(ApplyError::Refused(format!(
                "username: 1 to {USERNAME_CHARS_MAX} characters, no control characters"
            )));
        }
        if record.password_sealed.is_some() && record.password_secret.is_some() {
            return Err(ApplyError::Refused(
                "password_secret: a registry's password is sealed in its record or named as a secret, not both".to_string(),
            ));
        }
        if record.username.is_some()
            != (record.password_sealed.is_some() || record.password_secret.is_some())
        {
            return Err(ApplyError::Refused(
                "username and password come together".to_string(),
            ));
        }
        if let Some(name) = &record.password_secret {
            if !self.secrets.contains_key(name) {
                return Err(ApplyError::Refused(format!(
                    "password_secret: no secret {name}; create it first with `shoal secret create {name} -f -`"
                )));
            }
        }
        if !self.registries.contains_key(&record.host) && self.registries.len() >= REGISTRIES_MAX {
            return Err(ApplyError::TooLarge(format!(
                "the cluster holds {REGISTRIES_MAX} registries, the limit; remove some with `shoal registry rm`"
            )));
        }
        self.registries.insert(record.host.clone(), record.clone());
        Ok(Outcome::SecurityChanged)
    }

    pub(crate) fn remove_registry(&mut self, host: &str) -> Result<Outcome, ApplyError> {
        self.registries
            .remove(host)
            .map(|_| Outcome::SecurityChanged)
            .ok_or_else(|| {
                ApplyError::Refused(format!("no registry {host}; see `shoal registry ls`"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_names_or_addresses_with_an_optional_port() {
        for good in [
            "docker.io",
            "127.0.0.1:5000",
            "registry.example:443",
            "localhost",
        ] {
            assert_eq!(check_host(good), Ok(()), "{good}");
        }
        for bad in [
            "", "a b", "http://x", "x:0", "x:70000", "x:port", "-x.io", "x/y",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }
}
