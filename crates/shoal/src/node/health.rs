//! The checks a node runs of its own tasks' health: what the pure
//! [`Reconciler`](shoal_agent::Reconciler) says is due, carried out here
//! (an HTTP GET or a TCP connection to the task's address on the cluster
//! network, each within its timeout) and handed back. Only a change of a
//! task's health goes to the cluster.

use std::sync::Arc;
use std::time::Duration;

use shoal_agent::{CheckDue, Reconciler};
use shoal_types::{Probe, TaskStatus};
use tokio::sync::{mpsc, Semaphore};

/// Checks of one node: one client for every HTTP check (a fresh
/// connection each time; each request has its own timeout).
pub struct Prober {
    http: reqwest::Client,
}

/// Longest timeout a check may have (validation allows up to its interval,
/// at most an hour).
const TIMEOUT_MAX: Duration = Duration::from_secs(3600);

impl Prober {
    pub fn new() -> Result<Prober, String> {
        Ok(Prober {
            http: shoal_http::probe_client(TIMEOUT_MAX)?,
        })
    }

    /// Whether the task passed the check; a check that cannot reach the
    /// task (no address) or takes longer than its timeout fails.
    pub async fn check(&self, due: &CheckDue) -> bool {
        let Some(address) = due.address else {
            return false;
        };
        let timeout = Duration::from_millis(due.timeout_ms).min(TIMEOUT_MAX);
        let checked = async {
            match &due.probe {
                Probe::Tcp { port } => tokio::net::TcpStream::connect((address, *port))
                    .await
                    .is_ok(),
                Probe::Http { path, port } => {
                    let url = format!("http://{address}:{port}{path}");
                    match self.http.get(&url).timeout(timeout).send().await {
                        Ok(answer) => {
                            let status = answer.status();
                            status.is_success() || status.is_redirection()
                        }
                        Err(_) => false,
                    }
                }
                // Refused by validation: nothing runs a command yet.
                Probe::Exec(_) => false,
            }
        };
        tokio::time::timeout(timeout, checked)
            .await
            .unwrap_or(false)
    }
}

/// The checks a keeper runs: each in a task of its own, at most so many
/// at once, its result sent back to the keeper's loop.
pub struct Checks {
    /// `None`: no check can run on this node (said once, at start), and
    /// every checked task stays starting, out of DNS.
    prober: Option<Arc<Prober>>,
    permits: Arc<Semaphore>,
    results: mpsc::Sender<(CheckDue, bool)>,
}

impl Checks {
    pub fn new(at_once: usize, results: mpsc::Sender<(CheckDue, bool)>) -> Checks {
        let prober = Prober::new()
            .map_err(|error| tracing::error!(%error, "no health check can run on this node"))
            .ok()
            .map(Arc::new);
        Checks {
            prober,
            permits: Arc::new(Semaphore::new(at_once)),
            results,
        }
    }

    /// Starts `due`.
    pub fn start(&self, due: Vec<CheckDue>) {
        let Some(prober) = &self.prober else {
            return;
        };
        for due in due {
            let (prober, permits) = (prober.clone(), self.permits.clone());
            let results = self.results.clone();
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let passed = prober.check(&due).await;
                let _ = results.send((due, passed)).await;
            });
        }
    }
}

/// Hands `first` and every other result already waiting to the
/// reconciler; the statuses that changed.
pub fn take(
    reconciler: &mut Reconciler,
    first: (CheckDue, bool),
    waiting: &mut mpsc::Receiver<(CheckDue, bool)>,
    now_ms: impl Fn() -> u64,
) -> Vec<(String, TaskStatus)> {
    let mut reports = Vec::new();
    let mut next = Some(first);
    while let Some((due, passed)) = next {
        tracing::trace!(task = %due.task_id, passed, "health check");
        reports.extend(reconciler.on_check(&due.task_id, due.attempt, passed, now_ms()));
        next = waiting.try_recv().ok();
    }
    reports
}
