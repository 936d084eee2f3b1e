//! A node's first join: the join token's CA pin checked before anything
//! secret is sent, the token sent only to a voter of that CA, the
//! certificate, roots, data key and gossip keyring the leader answers
//! with kept; and, when a worker is asked, the leader it names.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_api::client::{Client, ClientError};
use shoal_api::wire::JoinRequest;
use shoal_pki::key::NodeKey;
use shoal_pki::seal::DataKey;
use shoal_pki::token::JoinToken;

use super::cluster::{Standing, JOIN_ATTEMPTS_MAX};
use super::trust::Trust;
use super::NodeConfig;

/// The joiner's side of a join token: fetch each peer's CA bundle with a
/// client that trusts anything, compare its hash with the token's, and
/// only then, over a connection that verifies the peer against that CA,
/// send the token and a CSR.
pub async fn join(
    config: &NodeConfig,
    token_text: &str,
    pki_dir: &Path,
) -> anyhow::Result<Standing> {
    let token =
        JoinToken::parse(token_text).map_err(|error| anyhow::anyhow!("--token: {error}"))?;
    let fetch = shoal_pki::tls::pinning_fetch_config()?;
    let key = NodeKey::generate()?;
    let csr_pem = key.csr_pem(&config.name)?;
    let mut queue: std::collections::VecDeque<String> = config.peers.iter().cloned().collect();
    let mut last_error = String::new();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        let Some(peer) = queue.pop_front() else {
            break;
        };
        queue.push_back(peer.clone());
        let roots = match Client::new(&peer, &fetch, None)
            .with_context(|| format!("--peer {peer}"))?
            .join_ca()
            .await
        {
            Ok(roots) => roots,
            Err(error) => {
                last_error = format!("{peer}: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let hash = shoal_pki::ca::bundle_hash(&roots)
            .with_context(|| format!("{peer} answered with no CA certificate"))?;
        // The bundle, or the one root of it the token pins (one made
        // before a rotation that is under way): nothing else is trusted.
        let Some(pinned) = shoal_pki::ca::pinned(&roots, &token.ca_hash) else {
            anyhow::bail!(
                "{peer} shows a CA whose hash ({}…) is not the one the token pins ({}…), nor holds that root: it is not the cluster the token is of, the cluster's CA rotated since the token was made (make a new one with `shoal cluster token create`), or someone is in between; nothing secret was sent",
                &hash[..12],
                &token.ca_hash[..12]
            );
        };
        let credentials = shoal_pki::tls::Credentials::new(&pinned)?;
        // The token goes only to a node that may admit: a voter. A worker
        // (or a removed node, whose certificate still chains) in the path
        // gets nothing.
        let shown: Arc<std::sync::Mutex<Option<shoal_pki::identity::Identity>>> = Arc::default();
        credentials.set_server_check(Some(Arc::new({
            let shown = shown.clone();
            move |identity: &shoal_pki::identity::Identity,
                  _: &rustls::pki_types::ServerName<'_>| {
                *shown.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.clone());
                if identity.role == shoal_pki::identity::Role::Voter {
                    Ok(())
                } else {
                    Err(format!(
                        "the server is node {} with a {} certificate: a join token goes only to a voter",
                        identity.name,
                        identity.role.as_str()
                    ))
                }
            }
        })));
        let verified = shoal_pki::tls::client_config(credentials)?;
        let request = JoinRequest {
            token: token.to_string(),
            name: config.name.clone(),
            role: config.role.clone(),
            csr_pem: csr_pem.clone(),
        };
        match Client::new(&peer, &verified, None)?.join(&request).await {
            Ok(answer) => {
                let data_key = match &answer.data_key {
                    Some(hex) => Some(DataKey::from_hex(hex)?),
                    None => None,
                };
                let trust = Trust::joined(
                    pki_dir,
                    &answer.roots_pem,
                    &answer.chain_pem,
                    &key.key_pem(),
                    data_key,
                )?;
                // The gossip keyring (absent from a leader older than 0.7):
                // kept before gossip starts, so that a node joining a
                // cluster that seals speaks sealed from its first datagram.
                if let Some(keys) = &answer.gossip_keys {
                    let held = super::gossip_keys::from_delivery(keys)?;
                    super::gossip_keys::save(pki_dir, &held)?;
                }
                tracing::info!(cluster = %answer.cluster_id, role = trust.identity.role.as_str(), "joined with a token");
                let mut gossip_peers = Vec::new();
                if let Ok(mut addrs) = answer.gossip_addr.to_socket_addrs() {
                    gossip_peers.extend(addrs.next());
                }
                return Ok(Standing {
                    trust,
                    cluster_id: answer.cluster_id,
                    gossip_peers,
                    formation: None,
                });
            }
            Err(ClientError::Api {
                status: 421,
                message,
                ..
            }) => {
                if let Some(leader) = message.strip_prefix("join through the leader: ") {
                    queue.push_front(leader.trim().to_string());
                }
                last_error = format!("{peer}: {message}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(ClientError::Api {
                status, message, ..
            }) if status != 503 => {
                anyhow::bail!("{peer} refused the join: {message}")
            }
            Err(error) => {
                last_error = format!("{peer}: {error}");
                // A worker of this cluster: it may say where the leader
                // is, asked with a decoy token that carries nothing of
                // this node's.
                let worker = shown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .filter(|identity| identity.role != shoal_pki::identity::Role::Voter);
                if worker.is_some() {
                    if let Some(leader) =
                        leader_named_by(&peer, &pinned, &token.ca_hash, config).await
                    {
                        if !queue.contains(&leader) {
                            queue.push_front(leader);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    anyhow::bail!("no peer admitted this node ({last_error}); check --peer and that the peer runs")
}

/// The leader's address, as `peer` (a node of the cluster whose CA hashes
/// to `ca_hash`, but no voter) names it when asked to admit this node with
/// a decoy token: a fresh one of no use to anyone, so that nothing of the
/// real token reaches a node that may not take it.
async fn leader_named_by(
    peer: &str,
    roots: &str,
    ca_hash: &str,
    config: &NodeConfig,
) -> Option<String> {
    let credentials = shoal_pki::tls::Credentials::new(roots).ok()?;
    let tls = shoal_pki::tls::client_config(credentials).ok()?;
    let decoy = JoinRequest {
        token: JoinToken::generate(ca_hash).to_string(),
        name: config.name.clone(),
        role: config.role.clone(),
        csr_pem: String::new(),
    };
    match Client::new(peer, &tls, None).ok()?.join(&decoy).await {
        Err(ClientError::Api {
            status: 421,
            message,
            ..
        }) => message
            .strip_prefix("join through the leader: ")
            .map(|leader| leader.trim().to_string()),
        _ => None,
    }
}
