//! Unplaced: why no node can take a service, each node's first reason
//! counted over all nodes.

use std::collections::BTreeMap;

use shoal_state::fit::{self, Reject, Request};
use shoal_types::ServiceSpec;

use crate::spread::SpreadContext;
use crate::Scheduler;

impl<'a> Scheduler<'a> {
    /// Says why no node takes the service, counting each node's first
    /// reason: "0 of 5 nodes fit: 3 not `zone == b`, 2 have less than
    /// 2 GiB memory free".
    // Rare: inlined into `place_replicas` it slows the loop over candidates.
    #[inline(never)]
    pub(crate) fn explain(
        &self,
        service: &'a ServiceSpec,
        request: Request,
        context: &SpreadContext<'a>,
    ) -> String {
        if self.nodes.is_empty() {
            return "no node has joined the cluster".into();
        }
        let mut tally: BTreeMap<Reject, usize> = BTreeMap::new();
        for at in 0..self.nodes.len() as u32 {
            let reject = fit::admits(self.nodes[at as usize].node, service)
                .err()
                .or_else(|| self.refuses(at, service, request, context));
            if let Some(reject) = reject {
                *tally.entry(reject).or_default() += 1;
            }
        }
        let mut parts: Vec<(usize, String)> = tally
            .into_iter()
            .map(|(reject, count)| {
                let text = match &reject {
                    Reject::Cpu { .. } | Reject::Memory { .. } => format!(
                        "{count} {} {reject}",
                        if count == 1 { "has" } else { "have" }
                    ),
                    Reject::SpreadLimit { .. }
                    | Reject::AlreadyRunsOne
                    | Reject::HostPort { .. } => {
                        format!("{count} {} {reject}", if count == 1 { "is" } else { "are" })
                    }
                    Reject::Constraint(_) => format!("{count} {reject}"),
                    Reject::NotAlive | Reject::Draining | Reject::Tainted(_) => {
                        format!("{count} {} {reject}", if count == 1 { "is" } else { "are" })
                    }
                };
                (count, text)
            })
            .collect();
        parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut reason = format!(
            "0 of {} node{} can take it: ",
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" }
        );
        reason.push_str(
            &parts
                .into_iter()
                .map(|(_, text)| text)
                .collect::<Vec<_>>()
                .join(", "),
        );
        if service.priority > 0 && request != Request::default() {
            reason.push_str("; no lower-priority work to displace");
        }
        reason
    }
}
