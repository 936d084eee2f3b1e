//! rustls configs for shoal's servers and clients: TLS 1.3 only, the ring
//! provider, and credentials that can be swapped while they are in use.
//!
//! A [`Credentials`] holds what a process trusts (the cluster's roots; two
//! during a rotation) and, for a node, its own certificate and key. The
//! configs built from it look at it on every handshake, so a renewed
//! certificate or a new root takes effect on the next connection without
//! rebuilding any client or server.
//!
//! A server takes a client certificate that has expired, within
//! [`EXPIRED_RENEWAL_GRACE`], when it verifies as of just before its end:
//! a node that was off longer than its certificate lived comes back and
//! renews it by itself. The chain, the key and the roots are checked as for
//! any other; what such a certificate may ask for is the HTTP layer's to
//! decide (shoal's gate: a renewal, and only for the node's current
//! admission).
//!
//! A server's chain to the roots says only that it is some node of the
//! cluster. A process that knows more sets a [`ServerCheck`]: a node, that
//! the server is the node it dialled and is not removed; a joiner, that the
//! server may take its token (a voter).

use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::identity::Identity;

/// How long after its end a client certificate still passes the handshake
/// (for its node to renew it, and nothing else).
pub const EXPIRED_RENEWAL_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the trusted roots do not read: {0}")]
    Roots(String),
    #[error("the certificate or key does not read: {0}")]
    Identity(String),
    #[error("building a TLS config: {0}")]
    Config(String),
}

/// The one crypto provider shoal uses, whatever else is compiled in.
/// rustls marks ring's provider deprecated for its lack of post-quantum
/// key exchange; ring is still the project's choice (aws-lc-rs, which has
/// it, needs a C toolchain build the project keeps out).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Trust {
    roots_pem: String,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<dyn ServerCertVerifier>,
}

/// What a client checks of a server whose chain verified, given the
/// server's identity and the name or address it dialled: `Err` says why
/// the server is not taken (the handshake fails with it).
pub type ServerCheck = dyn Fn(&Identity, &ServerName<'_>) -> Result<(), String> + Send + Sync;

/// The certificate a process shows: as rustls takes it, who it says the
/// process is, and its chain as it was given (PEM).
struct Shown {
    certified: Arc<CertifiedKey>,
    identity: Identity,
    chain_pem: String,
}

/// What a process trusts and who it is; shared by its configs.
pub struct Credentials {
    trust: RwLock<Arc<Trust>>,
    identity: RwLock<Option<Shown>>,
    server_check: RwLock<Option<Arc<ServerCheck>>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    Ok(certs)
}

fn trust(roots_pem: &str) -> Result<Trust, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(roots_pem).map_err(TlsError::Roots)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    let roots = Arc::new(roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        // A client without a certificate gets through TLS; the HTTP layer
        // then wants a bearer token. A certificate shown is verified.
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Trust {
        roots_pem: roots_pem.to_string(),
        client_verifier,
        server_verifier,
    })
}

impl Credentials {
    /// Trusting the roots in `roots_pem`, with no identity of its own yet.
    pub fn new(roots_pem: &str) -> Result<Arc<Credentials>, TlsError> {
        Ok(Arc::new(Credentials {
            trust: RwLock::new(Arc::new(trust(roots_pem)?)),
            identity: RwLock::new(None),
            server_check: RwLock::new(None),
        }))
    }

    /// From the next handshake on, a server whose chain verified is taken
    /// only if `check` says so (`None`: any node of the cluster).
    pub fn set_server_check(&self, check: Option<Arc<ServerCheck>>) {
        *self.server_check.write().unwrap_or_else(|p| p.into_inner()) = check;
    }

    fn server_check(&self) -> Option<Arc<ServerCheck>> {
        self.server_check
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Trusts these roots from the next handshake on.
    pub fn set_roots(&self, roots_pem: &str) -> Result<(), TlsError> {
        let trust = Arc::new(trust(roots_pem)?);
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) = trust;
        Ok(())
    }

    pub fn roots_pem(&self) -> String {
        self.current_trust().roots_pem.clone()
    }

    /// Shows this certificate chain (leaf first) with this key from the
    /// next handshake on. The leaf must carry a shoal identity and match
    /// the key.
    pub fn set_identity(&self, chain_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
        let chain = certs(chain_pem).map_err(TlsError::Identity)?;
        let identity =
            Identity::from_cert_der(&chain[0]).map_err(|e| TlsError::Identity(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        certified
            .keys_match()
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Some(Shown {
            certified: Arc::new(certified),
            identity: identity.clone(),
            chain_pem: chain_pem.to_string(),
        });
        Ok(identity)
    }

    /// Who this process is, once it has a certificate.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|shown| shown.identity.clone())
    }

    /// The chain (PEM, leaf first) this process shows, once it has one.
    pub fn chain_pem(&self) -> Option<String> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|shown| shown.chain_pem.clone())
    }

    fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|shown| shown.certified.clone())
    }

    fn current_trust(&self) -> Arc<Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug)]
struct LiveClientVerifier(Arc<Credentials>);

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.0.current_trust().client_verifier.clone();
        let verified = verifier.verify_client_cert(end_entity, intermediates, now);
        let expired = matches!(
            verified,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        );
        // Only an expired certificate is read again (every handshake of a
        // node passes here).
        match expired.then(|| just_before_end(end_entity, now)).flatten() {
            Some(then) => verifier.verify_client_cert(end_entity, intermediates, then),
            None => verified,
        }
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current_trust()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .current_trust()
            .client_verifier
            .supported_verify_schemes()
    }
}

/// A second before `cert`'s end, if it ended at most
/// [`EXPIRED_RENEWAL_GRACE`] before `now`.
fn just_before_end(cert: &CertificateDer<'_>, now: UnixTime) -> Option<UnixTime> {
    let end = crate::identity::not_after(cert)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?;
    let now = Duration::from_secs(now.as_secs());
    (now <= end.saturating_add(EXPIRED_RENEWAL_GRACE) && end > Duration::from_secs(1))
        .then(|| UnixTime::since_unix_epoch(end - Duration::from_secs(1)))
}

#[derive(Debug)]
struct LiveServerVerifier(Arc<Credentials>);

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(crate::SERVER_NAME)
            .map_err(|_| rustls::Error::General("the shoal server name".into()))?;
        let verified = self.0.current_trust().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            &name,
            ocsp_response,
            now,
        )?;
        if let Some(check) = self.0.server_check() {
            let identity = Identity::from_cert_der(end_entity).map_err(|error| {
                rustls::Error::General(format!("the server's certificate: {error}"))
            })?;
            check(&identity, dialled).map_err(rustls::Error::General)?;
        }
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current_trust()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .current_trust()
            .server_verifier
            .supported_verify_schemes()
    }
}

#[derive(Debug)]
struct LiveCert(Arc<Credentials>);

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified()
    }
}

impl ResolvesClientCert for LiveCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified()
    }
    fn has_certs(&self) -> bool {
        self.0.certified().is_some()
    }
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A server that shows the node's current certificate, asks clients for
/// theirs and verifies any shown against the current roots.
pub fn server_config(credentials: Arc<Credentials>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(LiveClientVerifier(credentials.clone())))
        .with_cert_resolver(Arc::new(LiveCert(credentials)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client that trusts servers whose certificate chains to the current
/// roots and names [`SERVER_NAME`](crate::SERVER_NAME), whatever address
/// it dialled, and that pass the [`ServerCheck`] set, if any; it shows its
/// own certificate when it has one.
pub fn client_config(credentials: Arc<Credentials>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LiveServerVerifier(credentials.clone())))
        .with_client_cert_resolver(Arc::new(LiveCert(credentials)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // A resumed session is not verified again (rustls takes the first
    // handshake's word): a server accepted once, then removed, would be
    // accepted for the ticket's life. Every connection is verified anew.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client that accepts any server, for one use only: a joiner fetching
/// the CA bundle, which it then compares with the hash in its join token
/// before it sends anything secret (and trusts nothing else it got here).
pub fn pinning_fetch_config() -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
