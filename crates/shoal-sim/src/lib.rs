//! The simulator's core: the real state machine (`shoal_state::State`),
//! scheduler (`shoal_sched`), leader duties (`shoal_sched::duties`) and
//! node agent (`shoal_agent::Reconciler`, over a simulated container table)
//! driven over many simulated nodes in one process. Pure like the crates
//! it drives: time is a virtual clock advanced by the step loop and
//! randomness a seeded generator, so a seed replays exactly. The binary
//! (`main.rs`) adds the wall clock and memory figures.
//!
//! - [`chaos`]: nodes join, fail and come back, apps are applied, scaled
//!   and removed, and [`check`] verifies the invariants after every step:
//!   of the state, of the leader's duties and of every agent's step.
//! - [`bench`]: places many tasks on many nodes, for the benchmark.
//! - [`rollouts`]: rolling updates, good and bad versions and health
//!   flaps, checked round by round.

pub mod bench;
pub mod chaos;
pub mod check;
pub mod cluster;
pub mod rng;
pub mod rollouts;

/// What went wrong in the simulator itself (not in what it checks).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("command {command} failed: {error}")]
    Command {
        command: String,
        error: shoal_state::ApplyError,
    },
    #[error("generated spec is invalid: {0}")]
    Spec(String),
    #[error("{0}")]
    Config(String),
}

/// A hash that is the same in every process and release, unlike std's
/// hashers, so a summary line can carry it.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    shoal_types::stable::fnv1a64(bytes.iter().copied())
}
