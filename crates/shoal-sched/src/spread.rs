//! Spread: how a service's tasks fall over the values of a label during a
//! run, for its `max_per` limits and the evenness part of the score.

use shoal_state::fit::{self, Reject};
use shoal_state::FastMap as HashMap;
use shoal_types::ServiceSpec;

use crate::score::{SPREAD_EXCESS_PENALTY_PER_TASK, SPREAD_PENALTY_PER_TASK};
use crate::Scheduler;

/// A service's spread over labels during one run: how many of its tasks
/// each label value holds, for the `max_per` rules and the evenness score.
pub(crate) struct SpreadContext<'a> {
    rules: Vec<SpreadRule<'a>>,
}

struct SpreadRule<'a> {
    over: &'a str,
    max_per: Option<u32>,
    /// The label's value id of every node, by node index.
    column: std::rc::Rc<Column<'a>>,
    /// Tasks per value id.
    counts: HashMap<u32, u32>,
    /// Values present among admitting nodes; even spread aims over these.
    values: usize,
    total: u32,
}

/// One label's values for every node, as ids into `values`; nodes without
/// the label share the id of "".
pub(crate) struct Column<'a> {
    ids: Vec<u32>,
    values: Vec<&'a str>,
}

impl<'a> SpreadContext<'a> {
    pub(crate) fn new(
        scheduler: &mut Scheduler<'a>,
        app: &'a str,
        service: &'a ServiceSpec,
        admitting: &[u32],
    ) -> Self {
        let mut rules = Vec::with_capacity(service.placement.spread.len());
        for spread in &service.placement.spread {
            let over = spread.over.as_str();
            let values = scheduler.distinct_values(service, over, admitting);
            let column = scheduler.column(over);
            let mut counts: HashMap<u32, u32> = HashMap::default();
            let mut total = 0;
            if let Some(own) = scheduler.per_node.get(&scheduler.sid(app, service)) {
                for (at, count) in own {
                    *counts.entry(column.ids[*at as usize]).or_default() += count;
                    total += count;
                }
            }
            rules.push(SpreadRule {
                over,
                max_per: spread.max_per,
                column,
                counts,
                values: values.max(1),
                total,
            });
        }
        SpreadContext { rules }
    }

    // Called for every candidate from `place` and `score`, in other
    // modules: `#[inline]` lets them be inlined there as in one module.
    #[inline]
    pub(crate) fn refuses(&self, at: u32) -> Option<Reject> {
        for rule in &self.rules {
            if let Some(max_per) = rule.max_per {
                let value = rule.column.ids[at as usize];
                if rule.counts.get(&value).copied().unwrap_or(0) >= max_per {
                    return Some(Reject::SpreadLimit {
                        over: rule.over.to_string(),
                        max_per,
                    });
                }
            }
        }
        None
    }

    /// How far above an even share the node's label values already are.
    #[inline] // See `refuses`.
    pub(crate) fn spread_penalty(&self, at: u32) -> f64 {
        let mut penalty = 0.0;
        for rule in &self.rules {
            let value = rule.column.ids[at as usize];
            let count = f64::from(rule.counts.get(&value).copied().unwrap_or(0));
            let even = f64::from(rule.total) / rule.values as f64;
            penalty += SPREAD_EXCESS_PENALTY_PER_TASK * (count - even).max(0.0)
                + SPREAD_PENALTY_PER_TASK * count;
        }
        penalty
    }

    #[inline] // See `refuses`.
    pub(crate) fn placed(&mut self, at: u32) {
        for rule in &mut self.rules {
            let value = rule.column.ids[at as usize];
            *rule.counts.entry(value).or_default() += 1;
            rule.total += 1;
        }
    }
}

impl<'a> Scheduler<'a> {
    /// How many values of label `over` the nodes admitting `service` have;
    /// counted once per set of constraints and tolerations.
    fn distinct_values(
        &mut self,
        service: &'a ServiceSpec,
        over: &'a str,
        admitting: &[u32],
    ) -> usize {
        let key = (
            (
                service.placement.constraints.as_slice(),
                service.tolerations.as_slice(),
                service.needs(),
            ),
            over,
        );
        if let Some(count) = self.distinct.get(&key) {
            return *count;
        }
        let column = self.column(over);
        let mut seen = vec![false; column.values.len()];
        let mut count = 0;
        for at in admitting {
            let id = column.ids[*at as usize] as usize;
            if !seen[id] {
                seen[id] = true;
                count += 1;
            }
        }
        self.distinct.insert(key, count);
        count
    }

    /// Label `key` of every node as dense ids, built once per run and key.
    fn column(&mut self, key: &'a str) -> std::rc::Rc<Column<'a>> {
        if let Some(column) = self.columns.get(key) {
            return column.clone();
        }
        let mut values: Vec<&'a str> = Vec::new();
        let mut ids_of: HashMap<&'a str, u32> = HashMap::default();
        let ids = self
            .nodes
            .iter()
            .map(|info| {
                let value = fit::spread_value(info.node, key);
                *ids_of.entry(value).or_insert_with(|| {
                    values.push(value);
                    values.len() as u32 - 1
                })
            })
            .collect();
        let column = std::rc::Rc::new(Column { ids, values });
        self.columns.insert(key, column.clone());
        column
    }
}
