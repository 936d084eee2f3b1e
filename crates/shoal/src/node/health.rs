//! The checks a node runs of its own tasks' health: what the pure
//! [`Reconciler`](shoal_agent::Reconciler) says is due, carried out here
//! (an HTTP GET or a TCP connection to the task's address on the cluster
//! network, or a command run in its container by the runtime, each within
//! its timeout) and handed back. Only a change of a task's health goes to
//! the cluster.

use std::sync::Arc;
use std::time::Duration;

use shoal_agent::{CheckDue, Reconciler};
use shoal_runtime::Runtime;
use shoal_types::{Probe, TaskStatus};
use tokio::sync::{mpsc, Semaphore};

/// Checks of one node: one client for every HTTP check (a fresh
/// connection each time; each request has its own timeout), and the
/// runtime that runs a command in a task's container.
pub struct Prober<R> {
    http: reqwest::Client,
    runtime: Arc<R>,
}

/// Longest timeout a check may have (validation allows up to its interval,
/// at most an hour).
const TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Time a command check's answer may take beyond its timeout (asking the
/// runtime to create, start and kill it).
const EXEC_SLACK: Duration = Duration::from_secs(5);

impl<R: Runtime> Prober<R> {
    pub fn new(runtime: Arc<R>) -> Result<Prober<R>, String> {
        Ok(Prober {
            http: shoal_http::probe_client(TIMEOUT_MAX)?,
            runtime,
        })
    }

    /// Whether the task passed the check; a check that cannot reach the
    /// task (no address, for HTTP and TCP) or takes longer than its
    /// timeout fails, and so does a command that exits with another code
    /// than 0 or cannot be run.
    pub async fn check(&self, due: &CheckDue) -> bool {
        let timeout = Duration::from_millis(due.timeout_ms).min(TIMEOUT_MAX);
        if let Probe::Exec(args) = &due.probe {
            // The runtime kills the command when its time is up and cleans
            // up after it, in a task of its own that nothing cancels; the
            // answer is waited for a little longer than the timeout.
            let (runtime, id, args) = (self.runtime.clone(), due.task_id.clone(), args.clone());
            let exec = tokio::spawn(async move { runtime.exec(&id, &args, timeout).await });
            return match tokio::time::timeout(timeout + EXEC_SLACK, exec).await {
                Ok(Ok(Ok(code))) => code == Some(0),
                Ok(Ok(Err(error))) => {
                    tracing::debug!(task = %due.task_id, %error, "running a check command");
                    false
                }
                Ok(Err(_)) | Err(_) => false,
            };
        }
        let Some(address) = due.address else {
            return false;
        };
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
pub struct Checks<R> {
    /// `None`: no check can run on this node (said once, at start), and
    /// every checked task stays starting, out of DNS.
    prober: Option<Arc<Prober<R>>>,
    permits: Arc<Semaphore>,
    results: mpsc::Sender<(CheckDue, bool)>,
}

impl<R: Runtime> Checks<R> {
    pub fn new(
        at_once: usize,
        results: mpsc::Sender<(CheckDue, bool)>,
        runtime: Arc<R>,
    ) -> Checks<R> {
        let prober = Prober::new(runtime)
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
