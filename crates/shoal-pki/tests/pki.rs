//! The PKI end to end: certificates from a throwaway CA, real TLS 1.3
//! handshakes over in-memory pipes, tokens and sealing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_pki::ca::{bundle_hash, Ca, IssueRequest};
use shoal_pki::identity::{Identity, IdentityError, Role};
use shoal_pki::key::NodeKey;
use shoal_pki::seal::{self, DataKey, SealError};
use shoal_pki::tls::{self, Credentials};
use shoal_pki::token::{ApiToken, JoinToken, TokenError, API_DOMAIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: &str = "c0ffee";

fn identity(name: &str, role: Role) -> Identity {
    Identity {
        cluster_id: CLUSTER.into(),
        role,
        name: name.into(),
        admission: Identity::new_admission(),
    }
}

/// A node's chain and key, issued by `ca`.
fn node(ca: &Ca, name: &str, role: Role, lifetime: Duration, now: SystemTime) -> (String, String) {
    let key = NodeKey::generate().expect("key");
    let csr = key.csr_pem(name).expect("csr");
    let issued = ca
        .issue(&IssueRequest {
            csr_pem: &csr,
            identity: &identity(name, role),
            lifetime,
            now,
        })
        .expect("issue");
    (issued.cert_pem, key.key_pem().to_string())
}

fn credentials(ca: &Ca, name: Option<&str>) -> Arc<Credentials> {
    let credentials = Credentials::new(ca.cert_pem()).expect("roots");
    if let Some(name) = name {
        let (chain, key) = node(
            ca,
            name,
            Role::Voter,
            Duration::from_secs(600),
            SystemTime::now(),
        );
        credentials.set_identity(&chain, &key).expect("identity");
    }
    credentials
}

/// One handshake: what the server saw of the client (its identity), or
/// the error of either side.
async fn handshake(
    server: &Arc<Credentials>,
    client: Arc<rustls::ClientConfig>,
) -> Result<Option<Identity>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(server.clone()).unwrap());
    let connector = tokio_rustls::TlsConnector::from(client);
    let server_side = tokio::spawn(async move {
        let mut stream = acceptor
            .accept(a)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first().cloned());
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        stream.write_all(b"k").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer.map(|cert| Identity::from_cert_der(&cert).expect("identity")))
    });
    let name = rustls::pki_types::ServerName::try_from("10.0.0.9").unwrap();
    let client_side = async {
        let mut stream = connector
            .connect(name, b)
            .await
            .map_err(|e| format!("client: {e}"))?;
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>(())
    };
    let client_result = client_side.await;
    let server_result = server_side.await.expect("server task");
    client_result?;
    server_result
}

#[tokio::test]
async fn nodes_speak_mutual_tls_and_see_each_others_identity() {
    let ca = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    let server = credentials(&ca, Some("n1"));
    let client = credentials(&ca, Some("n2"));
    let seen = handshake(&server, tls::client_config(client).unwrap())
        .await
        .expect("handshake");
    let seen = seen.expect("the client showed its certificate");
    assert_eq!(seen.name, "n2");
    assert_eq!(seen.cluster_id, CLUSTER);
    assert_eq!(seen.role, Role::Voter);

    // A client without a certificate gets through TLS (tokens are checked above it).
    let anonymous = credentials(&ca, None);
    assert_eq!(
        handshake(&server, tls::client_config(anonymous).unwrap()).await,
        Ok(None)
    );
}

#[tokio::test]
async fn foreign_and_long_expired_certificates_are_refused() {
    // Made long ago, so that a leaf of then chains to it as of then.
    let ca = Ca::generate(
        CLUSTER,
        1,
        SystemTime::now() - Duration::from_secs(30 * 86_400),
    )
    .unwrap();
    let other = Ca::generate("other", 1, SystemTime::now()).unwrap();
    let server = credentials(&ca, Some("n1"));

    // A client certificate of another CA fails the handshake.
    let rogue = Credentials::new(ca.cert_pem()).unwrap();
    let (chain, key) = node(
        &other,
        "rogue",
        Role::Voter,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    rogue.set_identity(&chain, &key).unwrap();
    assert!(handshake(&server, tls::client_config(rogue).unwrap())
        .await
        .is_err());

    // One that expired longer ago than the grace for renewals.
    let stale = Credentials::new(ca.cert_pem()).unwrap();
    let long_ago = SystemTime::now() - tls::EXPIRED_RENEWAL_GRACE - Duration::from_secs(3600);
    let (chain, key) = node(&ca, "old", Role::Voter, Duration::from_secs(120), long_ago);
    stale.set_identity(&chain, &key).unwrap();
    assert!(handshake(&server, tls::client_config(stale).unwrap())
        .await
        .is_err());

    // One that expired within the grace passes the handshake (the node
    // renews it; what else it may do is the gate's to say), with its
    // identity; another CA's, expired as long, does not.
    let lately = SystemTime::now() - Duration::from_secs(3600);
    let expired = Credentials::new(ca.cert_pem()).unwrap();
    let (chain, key) = node(&ca, "away", Role::Worker, Duration::from_secs(120), lately);
    expired.set_identity(&chain, &key).unwrap();
    let seen = handshake(&server, tls::client_config(expired).unwrap())
        .await
        .expect("an expired certificate within the grace")
        .expect("its identity");
    assert_eq!((seen.name.as_str(), seen.role), ("away", Role::Worker));
    let foreign = Credentials::new(ca.cert_pem()).unwrap();
    let other_then =
        Ca::generate("other", 1, SystemTime::now() - Duration::from_secs(86_400)).unwrap();
    let (chain, key) = node(
        &other_then,
        "away",
        Role::Worker,
        Duration::from_secs(120),
        lately,
    );
    foreign.set_identity(&chain, &key).unwrap();
    assert!(handshake(&server, tls::client_config(foreign).unwrap())
        .await
        .is_err());
    // A server is taken on no expired certificate, however lately it ended.
    let expired_server = Credentials::new(ca.cert_pem()).unwrap();
    let (chain, key) = node(&ca, "n9", Role::Voter, Duration::from_secs(120), lately);
    expired_server.set_identity(&chain, &key).unwrap();
    let client = credentials(&ca, Some("n2"));
    let refused = handshake(&expired_server, tls::client_config(client).unwrap()).await;
    assert!(refused.is_err(), "{refused:?}");

    // A server of another CA is refused by the client.
    let rogue_server = credentials(&other, Some("n1"));
    let client = credentials(&ca, Some("n2"));
    let refused = handshake(&rogue_server, tls::client_config(client).unwrap()).await;
    assert!(refused.is_err(), "{refused:?}");

    // The pinning fetch config accepts it (and is used only to fetch the bundle).
    assert!(
        handshake(&rogue_server, tls::pinning_fetch_config().unwrap())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn renewed_certificates_and_new_roots_apply_without_rebuilding() {
    let ca = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    let server = credentials(&ca, Some("n1"));
    let client = credentials(&ca, Some("n2"));
    let config = tls::client_config(client.clone()).unwrap();
    let first = handshake(&server, config.clone()).await.unwrap().unwrap();

    // Renewed: a new admission shows on the next handshake.
    let (chain, key) = node(
        &ca,
        "n2",
        Role::Worker,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    client.set_identity(&chain, &key).unwrap();
    let second = handshake(&server, config.clone()).await.unwrap().unwrap();
    assert_ne!(first.admission, second.admission);
    assert_eq!(second.role, Role::Worker);

    // Rotation: a leaf of the new root with the cross-signed root in its
    // chain is accepted by a server that trusts only the old root...
    let next = Ca::generate(CLUSTER, 2, SystemTime::now()).unwrap();
    let cross = ca.cross_sign(&next, CLUSTER, 2, SystemTime::now()).unwrap();
    let (leaf, key) = node(
        &next,
        "n3",
        Role::Voter,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    let rotated = Credentials::new(ca.cert_pem()).unwrap();
    rotated
        .set_identity(&format!("{leaf}{cross}"), &key)
        .unwrap();
    let seen = handshake(&server, tls::client_config(rotated.clone()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.name, "n3");
    // ...but not without the cross-signed certificate,
    let bare = Credentials::new(ca.cert_pem()).unwrap();
    bare.set_identity(&leaf, &key).unwrap();
    assert!(
        handshake(&server, tls::client_config(bare.clone()).unwrap())
            .await
            .is_err()
    );
    // until the server trusts both roots.
    server
        .set_roots(&format!("{}{}", ca.cert_pem(), next.cert_pem()))
        .unwrap();
    assert!(handshake(&server, tls::client_config(bare).unwrap())
        .await
        .is_ok());
}

/// After a rotation ends the nodes trust the new root alone while the
/// chains they show keep the cross-signed certificate: the new root takes
/// such a chain, a client that still trusts only the old root verifies
/// the server by it, and a certificate of the old root is taken no more.
#[tokio::test]
async fn after_a_rotation_the_new_root_alone_takes_the_chains_and_not_the_old_root() {
    let old = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    let new = Ca::generate(CLUSTER, 2, SystemTime::now()).unwrap();
    let cross = old.cross_sign(&new, CLUSTER, 2, SystemTime::now()).unwrap();
    let (leaf, key) = node(
        &new,
        "n1",
        Role::Voter,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    let server = Credentials::new(new.cert_pem()).unwrap();
    server
        .set_identity(&format!("{leaf}{cross}"), &key)
        .unwrap();
    // A node of the new root, its chain with the cross-signed root.
    let peer = Credentials::new(new.cert_pem()).unwrap();
    let (chain, key) = node(
        &new,
        "n2",
        Role::Voter,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    peer.set_identity(&format!("{chain}{cross}"), &key).unwrap();
    let seen = handshake(&server, tls::client_config(peer).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.name, "n2");
    // A CLI that trusts only the old root still verifies the server.
    let cli = Credentials::new(old.cert_pem()).unwrap();
    assert!(handshake(&server, tls::client_config(cli).unwrap())
        .await
        .is_ok());
    // A node certificate of the old root (a node off during the whole
    // rotation, or one made with a leaked old key) is refused.
    let stale = credentials(&old, Some("n3"));
    stale.set_roots(new.cert_pem()).unwrap();
    assert!(handshake(&server, tls::client_config(stale).unwrap())
        .await
        .is_err());
}

/// What a join token's pin trusts of a bundle, and who issued a chain.
#[test]
fn a_pin_takes_the_bundle_or_the_one_root_it_names_and_nothing_else() {
    let old = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    let new = Ca::generate(CLUSTER, 2, SystemTime::now()).unwrap();
    let rogue = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());
    let certs = shoal_pki::ca::bundle_certificates(&both).unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(
        bundle_hash(&certs[0]).unwrap(),
        bundle_hash(old.cert_pem()).unwrap()
    );
    assert_eq!(
        bundle_hash(&certs.concat()).unwrap(),
        bundle_hash(&both).unwrap()
    );
    // The whole bundle, or the one root a token made before the rotation
    // pins; a root added by someone in the middle is never taken.
    let pin_both = bundle_hash(&both).unwrap();
    assert_eq!(
        shoal_pki::ca::pinned(&both, &pin_both).as_deref(),
        Some(&*both)
    );
    let pin_old = bundle_hash(old.cert_pem()).unwrap();
    let added = format!("{both}{}", rogue.cert_pem());
    let taken = shoal_pki::ca::pinned(&added, &pin_old).unwrap();
    assert_eq!(bundle_hash(&taken).unwrap(), pin_old);
    assert_eq!(shoal_pki::ca::bundle_certificates(&taken).unwrap().len(), 1);
    assert_eq!(shoal_pki::ca::pinned(&added, &pin_both), None);
    assert_eq!(shoal_pki::ca::pinned(new.cert_pem(), &pin_old), None);
    assert!(shoal_pki::ca::bundle_certificates("no pem here").is_err());
    assert!(shoal_pki::ca::bundle_certificates("-----BEGIN CERTIFICATE-----\nAAAA").is_err());

    // Issued by: the leaf's issuer and key id, not its chain.
    let cross = old.cross_sign(&new, CLUSTER, 2, SystemTime::now()).unwrap();
    let (leaf, _) = node(
        &new,
        "n1",
        Role::Worker,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    let chain = format!("{leaf}{cross}");
    assert!(shoal_pki::ca::issued_by(&chain, new.cert_pem()));
    assert!(!shoal_pki::ca::issued_by(&chain, old.cert_pem()));
    let (leaf, _) = node(
        &old,
        "n1",
        Role::Worker,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    assert!(shoal_pki::ca::issued_by(&leaf, old.cert_pem()));
    // Another CA of the same name and generation did not issue it.
    assert!(!shoal_pki::ca::issued_by(&leaf, rogue.cert_pem()));
    assert!(!shoal_pki::ca::issued_by("garbage", old.cert_pem()));
    let summary = shoal_pki::ca::summary(new.cert_pem()).unwrap();
    assert!(
        summary.subject.contains("shoal cluster CA 2"),
        "{summary:?}"
    );
    assert_eq!(summary.sha256, bundle_hash(new.cert_pem()).unwrap());
}

#[test]
fn the_ca_decides_everything_but_the_key() {
    let ca = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    // A CSR that asks to be a CA, with names of its own.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let wanted = identity("n7", Role::Worker);
    let issued = ca
        .issue(&IssueRequest {
            csr_pem: &csr,
            identity: &wanted,
            lifetime: Duration::from_secs(120),
            now: SystemTime::now(),
        })
        .unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
        .map(|der: rustls::pki_types::CertificateDer<'static>| der)
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!cert.is_ca(), "a CSR asking for CA:TRUE got a CA");
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| name.to_string())
        .collect();
    assert!(!names.iter().any(|n| n.contains("evil")), "{names:?}");
    assert_eq!(Identity::from_cert_der(&der).unwrap(), wanted);
    let lifetime = issued.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(lifetime <= Duration::from_secs(120));

    // A CSR with a bad signature is refused; so is a lifetime out of range.
    let mut bent = csr.clone().into_bytes();
    let at = bent.len() / 2;
    bent[at] = if bent[at] == b'A' { b'B' } else { b'A' };
    let bent = String::from_utf8(bent).unwrap();
    assert!(ca
        .issue(&IssueRequest {
            csr_pem: &bent,
            identity: &wanted,
            lifetime: Duration::from_secs(120),
            now: SystemTime::now(),
        })
        .is_err());
    assert!(ca
        .issue(&IssueRequest {
            csr_pem: &csr,
            identity: &wanted,
            lifetime: Duration::from_secs(5),
            now: SystemTime::now(),
        })
        .is_err());
}

#[test]
fn identities_that_disagree_or_are_missing_speak_for_nobody() {
    let key = rcgen::KeyPair::generate().unwrap();
    let make = |uris: &[&str], cn: &str, o: &str, ou: &str| {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, cn);
        name.push(rcgen::DnType::OrganizationName, o);
        name.push(rcgen::DnType::OrganizationalUnitName, ou);
        params.distinguished_name = name;
        params.self_signed(&key).unwrap().der().to_vec()
    };
    let good = "shoal://c0ffee/voter/n1/00000000000000a1";
    assert!(Identity::from_cert_der(&make(&[good], "n1", "c0ffee", "voter")).is_ok());
    for (uris, cn, o, ou, want) in [
        (vec![], "n1", "c0ffee", "voter", IdentityError::Missing),
        (
            vec![good, good],
            "n1",
            "c0ffee",
            "voter",
            IdentityError::Ambiguous,
        ),
        (
            vec![good],
            "n2",
            "c0ffee",
            "voter",
            IdentityError::Disagrees("CN"),
        ),
        (
            vec![good],
            "n1",
            "other",
            "voter",
            IdentityError::Disagrees("O"),
        ),
        (
            vec![good],
            "n1",
            "c0ffee",
            "worker",
            IdentityError::Disagrees("OU"),
        ),
    ] {
        assert_eq!(Identity::from_cert_der(&make(&uris, cn, o, ou)), Err(want));
    }
    for bad in [
        "shoal://c0ffee/admin/n1/00000000000000a1",
        "shoal://c0ffee/voter/n1/xyz",
        "shoal://c0ffee/voter/n1",
        "shoal://c0ffee/voter/n1/00000000000000a1/extra",
        "shoal:///voter/n1/00000000000000a1",
        "shoal://c0ffee/voter/n%201/00000000000000a1",
    ] {
        assert!(
            matches!(Identity::parse_uri(bad), Err(IdentityError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn join_token_grammar() {
    let ca = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    let hash = bundle_hash(ca.cert_pem()).unwrap();
    let token = JoinToken::generate(&hash);
    let text = token.to_string();
    assert_eq!(JoinToken::parse(&text).unwrap(), token);
    assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), token);
    assert!(token
        .hash()
        .matches(shoal_pki::token::JOIN_DOMAIN, token.secret().as_bytes()));
    assert!(!token
        .hash()
        .matches(shoal_pki::token::JOIN_DOMAIN, b"guess"));

    let h = "a".repeat(64);
    let id = "0123456789abcdef";
    let s = "b".repeat(64);
    let cases: Vec<(String, TokenError)> = vec![
        (String::new(), TokenError::Empty),
        ("   ".into(), TokenError::Empty),
        ("x".repeat(500), TokenError::TooLong),
        ("SWMTKN-1-abc-def".into(), TokenError::NotJoinToken),
        (format!("shoal-1-{h}-{id}-{s}"), TokenError::NotJoinToken),
        (
            format!("SHOAL-2-{h}-{id}-{s}"),
            TokenError::Version("2".into()),
        ),
        (
            format!("SHOAL-10-{h}-{id}-{s}"),
            TokenError::Version("10".into()),
        ),
        (format!("SHOAL-x-{h}-{id}-{s}"), TokenError::NotJoinToken),
        (format!("SHOAL--{h}-{id}-{s}"), TokenError::NotJoinToken),
        (
            "SHOAL-1".into(),
            TokenError::Parts {
                kind: "join token",
                found: 2,
                want: 5,
            },
        ),
        (
            format!("SHOAL-1-{h}"),
            TokenError::Parts {
                kind: "join token",
                found: 3,
                want: 5,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}"),
            TokenError::Parts {
                kind: "join token",
                found: 4,
                want: 5,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-{s}-x"),
            TokenError::Parts {
                kind: "join token",
                found: 6,
                want: 5,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-{s}-"),
            TokenError::Parts {
                kind: "join token",
                found: 6,
                want: 5,
            },
        ),
        (
            format!("SHOAL-1-{}-{id}-{s}", &h[1..]),
            TokenError::Part {
                part: "CA hash",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{h}a-{id}-{s}"),
            TokenError::Part {
                part: "CA hash",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{}-{id}-{s}", "A".repeat(64)),
            TokenError::Part {
                part: "CA hash",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{}-{id}-{s}", "g".repeat(64)),
            TokenError::Part {
                part: "CA hash",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1--{id}-{s}"),
            TokenError::Part {
                part: "CA hash",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{h}-0123-{s}"),
            TokenError::Part {
                part: "id",
                len: 16,
            },
        ),
        (
            format!("SHOAL-1-{h}-0123456789ABCDEF-{s}"),
            TokenError::Part {
                part: "id",
                len: 16,
            },
        ),
        (
            format!("SHOAL-1-{h}-0123456789abcdefa-{s}"),
            TokenError::Part {
                part: "id",
                len: 16,
            },
        ),
        (
            format!("SHOAL-1-{h}--{s}"),
            TokenError::Part {
                part: "id",
                len: 16,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-"),
            TokenError::Part {
                part: "secret",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-{}", &s[1..]),
            TokenError::Part {
                part: "secret",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-{s}b"),
            TokenError::Part {
                part: "secret",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-{}", "z".repeat(64)),
            TokenError::Part {
                part: "secret",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-{} ", "é".repeat(32)),
            TokenError::Part {
                part: "secret",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-{}", " ".repeat(64)),
            TokenError::Part {
                part: "secret",
                len: 64,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id} -{s}"),
            TokenError::Part {
                part: "id",
                len: 16,
            },
        ),
        (
            format!("SHOAL-1-{h}-{id}-{s}\0"),
            TokenError::Part {
                part: "secret",
                len: 64,
            },
        ),
        (format!("shoal_{id}_{s}"), TokenError::NotJoinToken),
    ];
    assert!(cases.len() >= 30);
    for (text, want) in cases {
        let got = JoinToken::parse(&text);
        assert_eq!(got.as_ref().err(), Some(&want), "{text:?}");
        // An error never repeats the token's secret.
        assert!(!want.to_string().contains(&s));
    }
}

#[test]
fn api_token_grammar() {
    let token = ApiToken::generate();
    let text = token.to_string();
    assert!(text.starts_with("shoal_"));
    assert_eq!(ApiToken::parse(&text).unwrap(), token);
    assert!(token.hash().matches(API_DOMAIN, token.secret().as_bytes()));
    let s = "c".repeat(64);
    for (text, want) in [
        ("".to_string(), TokenError::Empty),
        ("Bearer x".to_string(), TokenError::NotApiToken),
        (
            format!("shoal_{s}"),
            TokenError::Parts {
                kind: "API token",
                found: 2,
                want: 3,
            },
        ),
        (
            format!("shoal_0123456789abcdef_{s}_x"),
            TokenError::Parts {
                kind: "API token",
                found: 4,
                want: 3,
            },
        ),
        (
            format!("shoal_0123_{s}"),
            TokenError::Part {
                part: "id",
                len: 16,
            },
        ),
        (
            "shoal_0123456789abcdef_abc".to_string(),
            TokenError::Part {
                part: "secret",
                len: 64,
            },
        ),
    ] {
        assert_eq!(ApiToken::parse(&text).err(), Some(want), "{text:?}");
    }
}

fn ca_for_fuzz() -> &'static Ca {
    static CA: std::sync::OnceLock<Ca> = std::sync::OnceLock::new();
    CA.get_or_init(|| Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap())
}

proptest::proptest! {
    #[test]
    fn token_parsers_never_panic(text in "\\PC{0,300}") {
        let _ = JoinToken::parse(&text);
        let _ = ApiToken::parse(&text);
        let _ = Identity::parse_uri(&text);
    }

    /// The CSR handler's input: PEM framing around random bytes, bent
    /// real CSRs. Refused with an error, never a panic or a certificate.
    #[test]
    fn the_signer_refuses_garbage_csrs(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), cut in 0usize..400, flip in 0usize..400) {
        let ca = ca_for_fuzz();
        let request = |csr: &str| ca.issue(&IssueRequest {
            csr_pem: csr,
            identity: &identity("n1", Role::Worker),
            lifetime: Duration::from_secs(120),
            now: SystemTime::now(),
        });
        let framed = format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", String::from_utf8_lossy(&bytes));
        proptest::prop_assert!(request(&framed).is_err());
        let good = NodeKey::generate().unwrap().csr_pem("n1").unwrap();
        let mut bent = good.clone().into_bytes();
        let at = 40 + flip % (bent.len() - 80);
        bent[at] = if bent[at] == b'Q' { b'R' } else { b'Q' };
        let _ = request(&String::from_utf8_lossy(&bent));
        let _ = request(&good[..cut.min(good.len())]);
    }

    #[test]
    fn opening_garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let key = DataKey::generate();
        proptest::prop_assert!(seal::open(|_| Some(&key), b"", &bytes).is_err());
    }
}

#[test]
fn sealed_values_open_only_with_their_key_and_purpose() {
    let key = DataKey::generate();
    let other = DataKey::generate();
    let sealed = seal::seal(&key, 7, b"secret/db", b"hunter2").unwrap();
    let keys = |id: u32| (id == 7).then_some(&key);
    assert_eq!(
        seal::open(keys, b"secret/db", &sealed).unwrap().as_slice(),
        b"hunter2"
    );
    assert_eq!(
        seal::open(keys, b"secret/web", &sealed),
        Err(SealError::Forged)
    );
    assert_eq!(
        seal::open(|_| Some(&other), b"secret/db", &sealed),
        Err(SealError::Forged)
    );
    assert_eq!(
        seal::open(|_| None, b"secret/db", &sealed),
        Err(SealError::UnknownKey(7))
    );
    assert_eq!(
        seal::open(keys, b"secret/db", &sealed[..20]),
        Err(SealError::Truncated)
    );
    for at in 0..sealed.len() {
        let mut bent = sealed.clone();
        bent[at] ^= 0x01;
        assert!(
            seal::open(|_| Some(&key), b"secret/db", &bent).is_err(),
            "byte {at}"
        );
    }
    // Never the plaintext in the clear, and a fresh nonce each time.
    assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
    assert_ne!(
        sealed,
        seal::seal(&key, 7, b"secret/db", b"hunter2").unwrap()
    );
    let round = DataKey::from_hex(&key.to_hex()).unwrap();
    assert_eq!(round.as_bytes(), key.as_bytes());
}

#[test]
fn the_bundle_hash_covers_every_root() {
    let a = Ca::generate(CLUSTER, 1, SystemTime::now()).unwrap();
    let b = Ca::generate(CLUSTER, 2, SystemTime::now()).unwrap();
    let one = bundle_hash(a.cert_pem()).unwrap();
    let two = bundle_hash(&format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
    assert_eq!(one.len(), 64);
    assert_ne!(one, two);
    assert!(bundle_hash("").is_err());
    assert!(Ca::from_pem(a.cert_pem(), b.key_pem()).is_err());
    assert!(Ca::from_pem(a.cert_pem(), a.key_pem()).is_ok());
}
