//! The node's certificate over time: renewed at a random 50–80 % of its
//! life from a node that holds the data key (soon, spread over a few
//! seconds, when the CA that signs changed), and, on a node that holds the
//! data key and was off longer than its certificate lived, issued anew
//! from its own replica as it starts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_api::client::Client;
use shoal_api::wire::RenewRequest;
use shoal_pki::key::NodeKey;

use super::trust::Trust;
use super::Shared;

/// A node whose certificate is not of the CA that signs now renews within
/// this.
const RENEW_SPREAD: Duration = Duration::from_secs(10);

/// Renews the node's certificate at a random 50–80 % of its lifetime,
/// from any node that holds the data key (itself, if it does), and soon
/// when the CA that signs changed.
pub async fn renew_certificates<R>(shared: Arc<Shared<R>>) {
    loop {
        let wait = match (shared.trust.not_before(), shared.trust.not_after()) {
            (Ok(not_before), Ok(not_after)) => renewal_wait(
                not_before,
                not_after,
                std::time::SystemTime::now(),
                rand::random::<f64>(),
            ),
            _ => Duration::from_secs(1),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // The CA that signs changed: soon, at a moment drawn so that
            // the nodes do not all ask at once.
            () = shared.renew_now.notified() => {
                tokio::time::sleep(RENEW_SPREAD.mul_f64(rand::random::<f64>())).await;
            }
        }
        let mut attempt = 0u32;
        loop {
            match renew_once(&shared).await {
                Ok(()) => break,
                Err(error) => {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%error, attempt, "renewing this node's certificate");
                    let expires_in = shared
                        .trust
                        .not_after()
                        .ok()
                        .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
                        .unwrap_or_default();
                    // Try again soon, never later than a tenth of what is left.
                    let retry = (expires_in / 10)
                        .clamp(Duration::from_millis(500), Duration::from_secs(30));
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}

/// How long until a certificate valid from `not_before` to `not_after`
/// is renewed, at `now`: at 50–80 % of its life (`draw`, in [0, 1), picks
/// where), so that nodes made at once do not renew at once; at least a
/// second, also when that moment, or the end, has passed.
fn renewal_wait(
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
    now: std::time::SystemTime,
    draw: f64,
) -> Duration {
    // Certificates start a little before they are made (for clocks behind).
    let issued = not_before + shoal_pki::ca::LEAF_BACKDATE;
    let lifetime = not_after.duration_since(issued).unwrap_or_default();
    let fraction = 0.5 + 0.3 * draw.clamp(0.0, 1.0);
    let renew_at = issued + lifetime.mul_f64(fraction);
    renew_at
        .duration_since(now)
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

/// A node that holds the data key and whose certificate has expired (it
/// was off longer than the certificate lived) issues itself a new one
/// from the CA its replica holds, as it starts: a whole cluster switched
/// off for a while comes back without anyone to renew with. Only for the
/// admission its replica holds as current. Whether it renewed.
pub fn renew_expired_here(
    trust: &Trust,
    state: &shoal_state::State,
    lifetime: Duration,
) -> anyhow::Result<bool> {
    if trust.not_after()? > std::time::SystemTime::now() {
        return Ok(false);
    }
    let (Some(record), Some(_)) = (&state.security.ca, &trust.data_key) else {
        return Ok(false);
    };
    let identity = &trust.identity;
    let current = state
        .security
        .admissions
        .get(&identity.name)
        .is_some_and(|known| known.admission == identity.admission);
    if !current {
        anyhow::bail!(
            "this node's certificate expired and its replica no longer holds its admission (removed, or joined again elsewhere)"
        );
    }
    let ca = trust
        .signer(record)?
        .context("this node's data key does not open the cluster's CA")?;
    let key = NodeKey::generate()?;
    let chain = super::credentials::chain_for(
        &ca,
        record,
        &key.csr_pem(&identity.name)?,
        identity,
        lifetime,
    )?;
    trust.renewed(&record.roots_pem, &chain, &key.key_pem())?;
    Ok(true)
}

async fn renew_once<R>(shared: &Shared<R>) -> anyhow::Result<()> {
    let key = NodeKey::generate()?;
    let request = RenewRequest {
        csr_pem: key.csr_pem(&shared.config.name)?,
    };
    // Ask a node that holds the data key: the leader always does.
    let status = shared.raft.status();
    let mut addrs: Vec<String> = status
        .leader
        .and_then(|id| status.nodes.get(&id).map(|node| node.api_addr.clone()))
        .into_iter()
        .collect();
    addrs.extend(
        status
            .voters
            .iter()
            .filter_map(|id| status.nodes.get(id).map(|node| node.api_addr.clone())),
    );
    addrs.dedup();
    let mut last_error = anyhow::anyhow!("the cluster has no leader or voter to renew with");
    for addr in addrs.iter().take(8) {
        match Client::new(addr, &shared.trust.client_tls, None)?
            .renew(&request)
            .await
        {
            Ok(answer) => {
                shared
                    .trust
                    .renewed(&answer.roots_pem, &answer.chain_pem, &key.key_pem())?;
                tracing::info!(from = %addr, "renewed this node's certificate");
                return Ok(());
            }
            Err(error) => last_error = anyhow::anyhow!("{addr}: {error}"),
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::renewal_wait;

    #[test]
    fn a_certificate_renews_at_half_to_four_fifths_of_its_life() {
        let backdate = shoal_pki::ca::LEAF_BACKDATE;
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_before = issued - backdate;
        let life = Duration::from_secs(12 * 3600);
        let not_after = issued + life;
        let at = |seconds: u64| issued + Duration::from_secs(seconds);
        // (now, draw) -> wait
        for (now, draw, wait) in [
            (at(0), 0.0, life / 2),
            (at(0), 1.0, life.mul_f64(0.8)),
            (at(0), 0.5, life.mul_f64(0.65)),
            // Later on, less is left to wait.
            (at(3600), 0.0, life / 2 - Duration::from_secs(3600)),
            // A draw out of range counts as its nearest end.
            (at(0), 7.0, life.mul_f64(0.8)),
            (at(0), -1.0, life / 2),
        ] {
            assert_eq!(
                renewal_wait(not_before, not_after, now, draw),
                wait,
                "{now:?} {draw}"
            );
        }
        // Past the moment, past the end, or a clock before the start: a
        // second, never nothing (the loop retries from there).
        for now in [at(43_000), not_after + Duration::from_secs(86_400)] {
            assert_eq!(
                renewal_wait(not_before, not_after, now, 1.0),
                Duration::from_secs(1)
            );
        }
        assert_eq!(
            renewal_wait(not_before, not_after, SystemTime::UNIX_EPOCH, 0.0),
            at(0).duration_since(UNIX_EPOCH).unwrap() + life / 2
        );
    }
}
