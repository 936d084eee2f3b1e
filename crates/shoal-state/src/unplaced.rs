//! Why tasks fit on no node, as data: the scheduler says it with a
//! [`UnplacedReason`], the state keeps that, and only the edge words it,
//! so that a change of wording is no change of state.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fit::{format_bytes, format_cpu, Reject};
use crate::Unplaced;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum UnplacedReason {
    /// No node has joined the cluster.
    NoNodes,
    /// Every node refuses, each for its first reason, counted.
    FitsNowhere {
        nodes: u32,
        rejects: Vec<Rejected>,
        /// The service has a priority but nothing of a lower one runs
        /// where it would fit.
        no_lower_priority: bool,
    },
    /// A global service: `nodes` nodes admit it but are limited (spread,
    /// host port), the first by `first`.
    AdmittedButLimited { nodes: u32, first: Reject },
    /// A global service: nodes admit it but lack room for its request.
    AdmittedButNoRoom {
        /// The first few of them by name; `more` are not named.
        named: Vec<String>,
        more: u32,
        cpu_millis: u64,
        memory_bytes: u64,
    },
}

/// One reason nodes refuse, with how many nodes give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    pub reject: Reject,
    pub nodes: u32,
}

impl fmt::Display for UnplacedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnplacedReason::NoNodes => f.write_str("no node has joined the cluster"),
            UnplacedReason::FitsNowhere {
                nodes,
                rejects,
                no_lower_priority,
            } => {
                let mut parts: Vec<(u32, String)> = rejects
                    .iter()
                    .map(
                        |Rejected {
                             reject,
                             nodes: count,
                         }| {
                            let one = *count == 1;
                            let text = match reject {
                                Reject::Cpu { .. } | Reject::Memory { .. } => {
                                    format!("{count} {} {reject}", if one { "has" } else { "have" })
                                }
                                Reject::Constraint(_) => format!("{count} {reject}"),
                                Reject::NotAllowed(allowance) => format!(
                                    "{count} {} allow {} (their agents lack {})",
                                    if one { "does not" } else { "do not" },
                                    allowance.what(),
                                    allowance.flag()
                                ),
                                Reject::SpreadLimit { .. }
                                | Reject::AlreadyRunsOne
                                | Reject::HostPort { .. }
                                | Reject::NotAlive
                                | Reject::Draining
                                | Reject::Tainted(_) => {
                                    format!("{count} {} {reject}", if one { "is" } else { "are" })
                                }
                            };
                            (*count, text)
                        },
                    )
                    .collect();
                parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                write!(
                    f,
                    "0 of {nodes} node{} can take it: {}",
                    if *nodes == 1 { "" } else { "s" },
                    parts
                        .into_iter()
                        .map(|(_, text)| text)
                        .collect::<Vec<_>>()
                        .join(", ")
                )?;
                if *no_lower_priority {
                    f.write_str("; no lower-priority work to displace")?;
                }
                Ok(())
            }
            UnplacedReason::AdmittedButLimited { nodes, first } => {
                write!(f, "{nodes} node(s) admit it but are {first}")
            }
            UnplacedReason::AdmittedButNoRoom {
                named,
                more,
                cpu_millis,
                memory_bytes,
            } => {
                write!(
                    f,
                    "{} node(s) admit it but lack room ({} cpu, {} memory asked): {}",
                    named.len() as u32 + more,
                    format_cpu(*cpu_millis),
                    format_bytes(*memory_bytes),
                    named.join(", ")
                )?;
                if *more > 0 {
                    write!(f, " and {more} more")?;
                }
                Ok(())
            }
        }
    }
}

impl Unplaced {
    /// The reason in words: worded from the data (format 2), or as a
    /// format-1 entry carried it.
    pub fn words(&self) -> Cow<'_, str> {
        match &self.why {
            Some(why) => Cow::Owned(why.to_string()),
            None => Cow::Borrowed(&self.reason),
        }
    }

    /// The same, as a format-1 entry must carry it: in words only.
    pub fn worded(&self) -> Unplaced {
        Unplaced {
            reason: self.words().into_owned(),
            why: None,
            ..self.clone()
        }
    }
}
