//! The HTTP edge between shoal processes: an [`Endpoint`] names where a
//! node's server listens, builds every URL to it, and [`client`] builds
//! every HTTP client. No other code writes `http://` or configures a
//! client, so transport security has one place to live.

use std::fmt;
use std::time::Duration;

/// Longest `host:port` accepted.
pub const AUTHORITY_BYTES_MAX: usize = 300;

/// Where a shoal server listens: `host:port`, reached over HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `host:port`, without scheme or path.
    authority: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("`{0}` is not an address: give HOST:PORT, e.g. 10.0.1.33:7950")]
    Malformed(String),
    #[error("`{0}`: only http:// is spoken by shoal today")]
    Scheme(String),
}

impl Endpoint {
    /// Reads `host:port` or `http://host:port` (a trailing `/` is allowed).
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let malformed = || EndpointError::Malformed(text.chars().take(80).collect());
        let rest = match text.split_once("://") {
            Some(("http", rest)) => rest,
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

    /// The URL of `path` (which starts with `/`) on this endpoint.
    pub fn url(&self, path: &str) -> String {
        debug_assert!(path.starts_with('/'), "path `{path}` must start with /");
        format!("http://{}{path}", self.authority)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority)
    }
}

/// How a client waits.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// For a whole request, answer included; `None` for streams (each
    /// request then sets its own).
    pub request_timeout: Option<Duration>,
    /// How long an idle connection is kept for reuse.
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The one way shoal builds an HTTP client: no proxy (nodes talk to each
/// other directly), no delay on small writes.
pub fn client(options: ClientOptions) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(options.idle_timeout);
    if let Some(timeout) = options.request_timeout {
        builder = builder.timeout(timeout);
    }
    builder
        .build()
        .map_err(|error| format!("building an HTTP client: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_and_builds_urls() {
        for text in [
            "10.0.1.33:7950",
            "http://10.0.1.33:7950",
            "http://10.0.1.33:7950/",
        ] {
            let endpoint = Endpoint::parse(text).expect(text);
            assert_eq!(endpoint.authority(), "10.0.1.33:7950");
            assert_eq!(endpoint.url("/v1/nodes"), "http://10.0.1.33:7950/v1/nodes");
        }
        assert_eq!(
            Endpoint::parse("[::1]:7950").expect("v6").url("/x"),
            "http://[::1]:7950/x"
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
        assert!(matches!(
            Endpoint::parse("ftp://10.0.1.33:7950"),
            Err(EndpointError::Scheme(_))
        ));
    }
}
