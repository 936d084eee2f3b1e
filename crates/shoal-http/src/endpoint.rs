//! Where a shoal server listens, and every URL to it.

use std::fmt;

/// Longest `host:port` accepted.
pub const AUTHORITY_BYTES_MAX: usize = 300;

/// Where a shoal server listens: `host:port`, reached over HTTPS (shoal
/// speaks nothing else).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `host:port`, without scheme or path.
    authority: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("`{0}` is not an address: give HOST:PORT, e.g. 10.0.1.33:7950")]
    Malformed(String),
    #[error("`{0}`: shoal speaks only TLS; give HOST:PORT or https://HOST:PORT")]
    Scheme(String),
}

impl Endpoint {
    /// Reads `host:port` or `https://host:port` (a trailing `/` is allowed).
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let malformed = || EndpointError::Malformed(text.chars().take(80).collect());
        let rest = match text.split_once("://") {
            Some(("https", rest)) => rest,
            Some(_) => return Err(EndpointError::Scheme(text.chars().take(80).collect())),
            None => text,
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty()
            || authority.len() > AUTHORITY_BYTES_MAX
            || authority.contains(['/', '?', '#', '@'])
            || authority.chars().any(char::is_whitespace)
        {
            return Err(malformed());
        }
        let (host, port) = authority.rsplit_once(':').ok_or_else(malformed)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(malformed());
        }
        Ok(Endpoint {
            authority: authority.to_string(),
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The host, without the brackets of an IPv6 address.
    pub fn host(&self) -> &str {
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(host, _)| host);
        host.strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The host as an IP address, when it is one (not a name).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.host().parse().ok()
    }

    /// The URL of `path` (which starts with `/`) on this endpoint.
    pub fn url(&self, path: &str) -> String {
        debug_assert!(path.starts_with('/'), "path `{path}` must start with /");
        format!("https://{}{path}", self.authority)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_and_builds_urls() {
        for text in [
            "10.0.1.33:7950",
            "https://10.0.1.33:7950",
            "https://10.0.1.33:7950/",
        ] {
            let endpoint = Endpoint::parse(text).expect(text);
            assert_eq!(endpoint.authority(), "10.0.1.33:7950");
            assert_eq!(endpoint.url("/v1/nodes"), "https://10.0.1.33:7950/v1/nodes");
            assert_eq!(endpoint.host(), "10.0.1.33");
            assert_eq!(endpoint.ip(), Some([10, 0, 1, 33].into()));
        }
        let v6 = Endpoint::parse("[2001:db8::1]:7950").expect("v6");
        assert_eq!(v6.host(), "2001:db8::1");
        assert_eq!(v6.ip(), "2001:db8::1".parse().ok());
        let named = Endpoint::parse("node-1.example:7950").expect("name");
        assert_eq!((named.host(), named.ip()), ("node-1.example", None));
        assert_eq!(
            Endpoint::parse("[::1]:7950").expect("v6").url("/x"),
            "https://[::1]:7950/x"
        );
        assert_eq!(
            Endpoint::parse("node-1.example:7950")
                .expect("name")
                .to_string(),
            "node-1.example:7950"
        );
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for text in [
            "",
            "10.0.1.33",
            "10.0.1.33:http",
            "10.0.1.33:99999",
            ":7950",
            "10.0.1.33:7950/v1",
            "user@10.0.1.33:7950",
            "10.0.1.33 :7950",
        ] {
            assert!(
                matches!(Endpoint::parse(text), Err(EndpointError::Malformed(_))),
                "{text:?} was accepted"
            );
        }
        for text in ["ftp://10.0.1.33:7950", "http://10.0.1.33:7950"] {
            assert!(
                matches!(Endpoint::parse(text), Err(EndpointError::Scheme(_))),
                "{text:?} was accepted"
            );
        }
    }
}
