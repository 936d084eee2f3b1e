pub mod chaos;
pub mod sched;
