//! Unplaced: why no node can take a service, each node's first reason
//! counted over all nodes.

use std::collections::BTreeMap;

use shoal_state::fit::{self, Reject, Request};
use shoal_state::unplaced::{Rejected, UnplacedReason};
use shoal_types::ServiceSpec;

use crate::spread::SpreadContext;
use crate::Scheduler;

impl<'a> Scheduler<'a> {
    /// Says why no node takes the service, counting each node's first
    /// reason (worded at the edge: "0 of 5 nodes can take it: 3 not
    /// `zone == b`, 2 have less than 2 GiB memory free").
    // Rare: inlined into `place_replicas` it slows the loop over candidates.
    #[inline(never)]
    pub(crate) fn explain(
        &self,
        service: &'a ServiceSpec,
        request: Request,
        context: &SpreadContext<'a>,
    ) -> UnplacedReason {
        if self.nodes.is_empty() {
            return UnplacedReason::NoNodes;
        }
        let mut tally: BTreeMap<Reject, u32> = BTreeMap::new();
        for at in 0..self.nodes.len() as u32 {
            let reject = fit::admits(self.nodes[at as usize].node, service)
                .err()
                .or_else(|| self.refuses(at, service, request, context));
            if let Some(reject) = reject {
                *tally.entry(reject).or_default() += 1;
            }
        }
        UnplacedReason::FitsNowhere {
            nodes: self.nodes.len() as u32,
            rejects: tally
                .into_iter()
                .map(|(reject, nodes)| Rejected { reject, nodes })
                .collect(),
            no_lower_priority: service.priority > 0 && request != Request::default(),
        }
    }
}
