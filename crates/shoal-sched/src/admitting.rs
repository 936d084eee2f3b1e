//! The nodes that admit a service (alive, not drained, constraints hold,
//! taints tolerated, what it needs allowed), computed once per run for
//! each distinct set of constraints, tolerations and needs, with the label
//! index that narrows them.

use shoal_state::fit;
use shoal_state::FastMap as HashMap;
use shoal_types::{Labels, ServiceSpec};

use crate::Scheduler;

impl<'a> Scheduler<'a> {
    /// Shared, not copied: at 100,000 nodes a copy per service adds up.
    pub(crate) fn admitting(&mut self, service: &'a ServiceSpec) -> std::rc::Rc<[u32]> {
        let key = (
            service.placement.constraints.as_slice(),
            service.tolerations.as_slice(),
            service.needs(),
        );
        if let Some(list) = self.admitting.get(&key) {
            return list.clone();
        }
        // A `KEY == VALUE` constraint narrows the search to the nodes with
        // that label (indexed once per run and key), which at 100,000 nodes
        // saves checking every node against every constraint set.
        let narrowed =
            service
                .placement
                .constraints
                .iter()
                .find_map(|constraint| match &constraint.op {
                    shoal_types::placement::Operator::Equal(value) => {
                        Some((constraint.key.as_str(), value.as_str()))
                    }
                    _ => None,
                });
        let list: std::rc::Rc<[u32]> = match narrowed {
            Some((key, value)) => {
                let index = self.label_index(key);
                index
                    .get(value)
                    .map(|nodes| {
                        nodes
                            .iter()
                            .copied()
                            .filter(|at| {
                                fit::admits(self.nodes[*at as usize].node, service).is_ok()
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            None => (0..self.nodes.len() as u32)
                .filter(|at| fit::admits(self.nodes[*at as usize].node, service).is_ok())
                .collect(),
        };
        self.admitting.insert(key, list.clone());
        list
    }

    /// Nodes by their value of label `key`, in index order.
    fn label_index(&mut self, key: &'a str) -> std::rc::Rc<HashMap<&'a str, Vec<u32>>> {
        if let Some(index) = self.labels.get(key) {
            return index.clone();
        }
        let mut index: HashMap<&'a str, Vec<u32>> = HashMap::default();
        for (at, info) in self.nodes.iter().enumerate() {
            if let Some(value) = info.node.label(key) {
                index.entry(value).or_default().push(at as u32);
            }
        }
        let index = std::rc::Rc::new(index);
        self.labels.insert(key, index.clone());
        index
    }
}
