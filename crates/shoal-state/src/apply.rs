//! `State::apply`: one function per command. Each checks that its command
//! comes from the one node allowed to write what it changes (from log
//! format 2 on), then changes the state or leaves it as it was.

use shoal_types::subnet::Ipv4Cidr;
use std::collections::BTreeMap;

use shoal_types::{
    AppSpec, FileKind, Node, NodeStatus, PinnedImage, Taint, TaintEffect, TaskStatus,
};

use crate::{
    check_dns_zone, App, ApplyError, Command, Entry, Meta, Outcome, State, REPORTS_PER_COMMAND_MAX,
};

/// The format from which entries name their proposer and leader, `apply`
/// checks writers, `RegisterNode` leaves the node's status alone, and an
/// app put again counts its versions on from its removed namesake's tasks.
const WRITERS_CHECKED_FROM: u32 = 2;

impl State {
    /// Applies the entry at log position `index`. An error leaves the state
    /// unchanged apart from `applied_index` and `log_version`, except
    /// [`ApplyError::NeedsUpgrade`] (the entry is of a format this build
    /// does not read), which leaves it wholly unchanged: the caller must
    /// stop applying there, never skip the entry.
    pub fn apply(&mut self, index: u64, entry: &Entry) -> Result<Outcome, ApplyError> {
        let command = entry.decode(index)?;
        self.apply_command(index, entry.meta(), &command)
    }

    /// Applies an already decoded command with its envelope.
    pub fn apply_command(
        &mut self,
        index: u64,
        meta: Meta<'_>,
        command: &Command,
    ) -> Result<Outcome, ApplyError> {
        assert!(
            index > self.applied_index,
            "entry {index} applied after {}: the log went backwards",
            self.applied_index
        );
        if meta.version > crate::LOG_VERSION {
            return Err(ApplyError::NeedsUpgrade(format!(
                "log entry {index} is of log format {}, newer than this node reads ({})",
                meta.version,
                crate::LOG_VERSION
            )));
        }
        self.applied_index = index;
        self.log_version = self.log_version.max(meta.version);
        if meta.version >= WRITERS_CHECKED_FROM {
            check_writer(&meta, command)?;
        }
        let now_ms = meta.at_ms;
        match command {
            Command::RegisterNode { node } => Ok(self.register_node(node, meta.version)),
            Command::TaintNode { name, taint } => self.taint_node(name, taint),
            Command::UntaintNode { name, key, effect } => self.untaint_node(name, key, *effect),
            Command::SetNodeDrain { name, drain } => self.set_node_drain(name, *drain),
            Command::SetNodeStatus { name, status } => self.set_node_status(name, *status),
            Command::SetSettings {
                voters_max,
                cluster_cidr,
                node_prefix_len,
                dns_zone,
            } => self.set_settings(
                *voters_max,
                cluster_cidr.as_deref(),
                *node_prefix_len,
                dns_zone.as_deref(),
            ),
            Command::ForgetNode { name } => self.forget_node(name),
            Command::PutApp { spec } => {
                self.check_files_of(spec)?;
                Ok(self.put_app(spec, &BTreeMap::new(), now_ms, meta.version))
            }
            Command::PutAppPinned { spec, images } => {
                self.check_files_of(spec)?;
                Ok(self.put_app(spec, images, now_ms, meta.version))
            }
            Command::RemoveApp { name } => self.remove_app(name),
            Command::SetRegistry { registry } => self.set_registry(registry),
            Command::RemoveRegistry { host } => self.remove_registry(host),
            Command::PutSecret { secret } => self.put_file(FileKind::Secret, secret),
            Command::RemoveSecret { name } => self.remove_file(FileKind::Secret, name),
            Command::PutConfig { config } => self.put_file(FileKind::Config, config),
            Command::RemoveConfig { name } => self.remove_file(FileKind::Config, name),
            Command::ApplyPlan { plan } => self.apply_plan(plan, now_ms),
            Command::ReportTasks { node, statuses } => self.report_tasks(node, statuses),
            Command::SetCa { ca } => self.set_ca(ca, meta.proposer == meta.leader),
            Command::CreateJoinToken { token } => self.create_join_token(token, now_ms),
            Command::RevokeJoinToken { id } => self.revoke_join_token(id),
            Command::AdmitNode {
                token,
                node,
                role,
                admission,
            } => self.admit_node(token, node, *role, admission, now_ms),
            Command::CreateApiToken { token } => self.create_api_token(token),
            Command::RevokeApiToken { id } => self.revoke_api_token(id),
            Command::SetGossipKeys { keys } => self.set_gossip_keys(keys),
            Command::SetFactsKey {
                node,
                admission,
                key,
            } => self.set_facts_key(node, admission, key),
            Command::RemoveNode { name } => self.remove_node(name, now_ms),
        }
    }

    fn register_node(&mut self, node: &Node, version: u32) -> Outcome {
        let mut node = node.clone();
        // Taints and drain belong to operators, the subnet to the cluster,
        // the status (from format 2 on) to the leader: never to the node.
        if let Some(known) = self.nodes.get(&node.name) {
            node.taints.clone_from(&known.taints);
            node.drain = known.drain;
            node.subnet.clone_from(&known.subnet);
            if version >= WRITERS_CHECKED_FROM {
                node.status = known.status;
            }
        } else {
            node.taints.clear();
            node.drain = false;
            node.subnet = None;
            if version >= WRITERS_CHECKED_FROM {
                // A node that could propose through the leader is alive.
                node.status = NodeStatus::Alive;
            }
        }
        if node.subnet.is_none() {
            if let Some(subnet) = self.free_subnet() {
                node.subnet = Some(subnet.to_string());
                self.subnet_holders
                    .insert(u32::from(subnet.network()), node.name.clone());
            }
        }
        self.nodes.insert(node.name.clone(), node);
        Outcome::NodeRegistered
    }

    fn taint_node(&mut self, name: &str, taint: &Taint) -> Result<Outcome, ApplyError> {
        let node = self.node_mut(name)?;
        if node.taints.len() >= shoal_types::placement::TAINTS_MAX
            && !node
                .taints
                .iter()
                .any(|t| t.key == taint.key && t.effect == taint.effect)
        {
            return Err(ApplyError::TooLarge(format!(
                "node `{name}` has {} taints, the limit; remove one first",
                node.taints.len()
            )));
        }
        let before = node.taints.clone();
        node.taints
            .retain(|t| !(t.key == taint.key && t.effect == taint.effect));
        node.taints.push(taint.clone());
        node.taints.sort();
        Ok(Outcome::NodeUpdated {
            changed: node.taints != before,
        })
    }

    fn untaint_node(
        &mut self,
        name: &str,
        key: &str,
        effect: Option<TaintEffect>,
    ) -> Result<Outcome, ApplyError> {
        let node = self.node_mut(name)?;
        let before = node.taints.len();
        node.taints
            .retain(|t| !(t.key == key && effect.is_none_or(|effect| effect == t.effect)));
        Ok(Outcome::NodeUpdated {
            changed: node.taints.len() != before,
        })
    }

    fn set_node_drain(&mut self, name: &str, drain: bool) -> Result<Outcome, ApplyError> {
        let node = self.node_mut(name)?;
        let changed = node.drain != drain;
        node.drain = drain;
        Ok(Outcome::NodeUpdated { changed })
    }

    fn set_node_status(&mut self, name: &str, status: NodeStatus) -> Result<Outcome, ApplyError> {
        let node = self.node_mut(name)?;
        let changed = node.status != status;
        node.status = status;
        Ok(Outcome::NodeStatusSet { changed })
    }

    fn set_settings(
        &mut self,
        voters_max: Option<u32>,
        cluster_cidr: Option<&str>,
        node_prefix_len: Option<u8>,
        dns_zone: Option<&str>,
    ) -> Result<Outcome, ApplyError> {
        // Every setting is checked before any is changed.
        if let Some(voters) = voters_max {
            if !(1..=7).contains(&voters) || voters % 2 == 0 {
                return Err(ApplyError::InvalidSetting(format!(
                    "voters_max: must be 1, 3, 5 or 7 (an odd count keeps a majority), got {voters}"
                )));
            }
        }
        if let Some(zone) = dns_zone {
            check_dns_zone(zone).map_err(ApplyError::InvalidSetting)?;
        }
        if cluster_cidr.is_some() || node_prefix_len.is_some() {
            let cidr = cluster_cidr.unwrap_or(&self.settings.cluster_cidr);
            let prefix = node_prefix_len.unwrap_or(self.settings.node_prefix_len);
            let cluster = Ipv4Cidr::parse("cluster_cidr", cidr)
                .map_err(|error| ApplyError::InvalidSetting(error.to_string()))?;
            shoal_types::subnet::next_free_subnet(cluster, prefix, &Default::default())
                .map_err(|error| ApplyError::InvalidSetting(format!("node_prefix_len: {error}")))?;
            let changes = cluster.to_string() != self.settings.cluster_cidr
                || prefix != self.settings.node_prefix_len;
            if changes {
                if let Some(node) = self.nodes.values().find(|n| n.subnet.is_some()) {
                    return Err(ApplyError::InvalidSetting(format!(
                        "cluster_cidr: node `{}` already holds subnet {} of {}; the cluster CIDR and node prefix can only change before nodes hold subnets",
                        node.name,
                        node.subnet.as_deref().unwrap_or(""),
                        self.settings.cluster_cidr
                    )));
                }
            }
            self.settings.cluster_cidr = cluster.to_string();
            self.settings.node_prefix_len = prefix;
        }
        if let Some(voters) = voters_max {
            self.settings.voters_max = voters;
        }
        if let Some(zone) = dns_zone {
            self.settings.dns_zone = zone.to_string();
        }
        Ok(Outcome::SettingsSet)
    }

    pub(crate) fn forget_node(&mut self, name: &str) -> Result<Outcome, ApplyError> {
        match self.nodes.get(name) {
            None => return Err(ApplyError::NodeNotFound(name.to_string())),
            Some(node) if node.status == NodeStatus::Alive => {
                return Err(ApplyError::NodeAlive(name.to_string()))
            }
            Some(_) => {}
        }
        if let Some(subnet) = self
            .nodes
            .remove(name)
            .and_then(|node| node.subnet)
            .and_then(|subnet| Ipv4Cidr::parse("subnet", &subnet).ok())
        {
            self.subnet_holders.remove(&u32::from(subnet.network()));
        }
        let before = self.tasks.len();
        self.tasks.retain(|_, task| task.node != name);
        Ok(Outcome::NodeForgotten {
            tasks: before - self.tasks.len(),
        })
    }

    fn remove_app(&mut self, name: &str) -> Result<Outcome, ApplyError> {
        self.apps
            .remove(name)
            .ok_or_else(|| ApplyError::AppNotFound(name.to_string()))?;
        Ok(Outcome::AppRemoved)
    }

    fn report_tasks(
        &mut self,
        node: &str,
        statuses: &[(String, TaskStatus)],
    ) -> Result<Outcome, ApplyError> {
        if statuses.len() > REPORTS_PER_COMMAND_MAX {
            return Err(ApplyError::TooLarge(format!(
                "{} reports in one command, limit {REPORTS_PER_COMMAND_MAX}",
                statuses.len()
            )));
        }
        let (mut accepted, mut stale) = (0, 0);
        for (id, status) in statuses {
            match self.tasks.get_mut(id) {
                Some(task) if task.node == node && status.may_follow(&task.status) => {
                    task.status = status.clone();
                    accepted += 1;
                }
                _ => stale += 1,
            }
        }
        Ok(Outcome::TasksReported { accepted, stale })
    }

    fn put_app(
        &mut self,
        spec: &AppSpec,
        images: &BTreeMap<String, PinnedImage>,
        now_ms: u64,
        format: u32,
    ) -> Outcome {
        match self.apps.get_mut(&spec.name) {
            Some(app) if &app.spec == spec && &app.images == images => {
                app.resume(format);
                Outcome::AppPut {
                    version: app.version,
                    changed: false,
                }
            }
            Some(app) => {
                app.keep_history(format);
                app.spec = spec.clone();
                app.images = images.clone();
                app.version += 1;
                app.updated_at_ms = now_ms;
                Outcome::AppPut {
                    version: app.version,
                    changed: true,
                }
            }
            None => {
                // From format 2, an app put again while tasks of its
                // removed namesake remain counts on from their version, so
                // that no old task passes for one of the new spec.
                let version = if format >= WRITERS_CHECKED_FROM {
                    self.tasks
                        .values()
                        .filter(|task| task.app == spec.name)
                        .map(|task| task.app_version)
                        .max()
                        .unwrap_or(0)
                        + 1
                } else {
                    1
                };
                self.apps.insert(
                    spec.name.clone(),
                    App {
                        spec: spec.clone(),
                        images: images.clone(),
                        version,
                        created_at_ms: now_ms,
                        updated_at_ms: now_ms,
                        history: Vec::new(),
                        rollout: None,
                    },
                );
                Outcome::AppPut {
                    version,
                    changed: true,
                }
            }
        }
    }
}

/// One writer per field: a node writes only its own registration and the
/// status of its own tasks, and only the leader writes verdicts on nodes
/// (a node may record only that it leaves).
fn check_writer(meta: &Meta<'_>, command: &Command) -> Result<(), ApplyError> {
    let refused = |what: String| {
        Err(ApplyError::WrongWriter(format!(
            "{what}, but this entry was proposed by `{}`",
            meta.proposer
        )))
    };
    if meta.proposer.is_empty() || meta.leader.is_empty() {
        return Err(ApplyError::WrongWriter(format!(
            "a format-{} entry names its proposer and the leader that appended it; this one names proposer `{}` and leader `{}`",
            meta.version, meta.proposer, meta.leader
        )));
    }
    if let Some(writer) = command.writer() {
        if writer != meta.proposer {
            return refused(format!("only node `{writer}` reports on itself"));
        }
        return Ok(());
    }
    match command {
        Command::SetNodeStatus { name, status } => {
            let leaving = *status == NodeStatus::Left && name == meta.proposer;
            if !leaving && meta.proposer != meta.leader {
                return refused(format!(
                    "only the leader (`{}`) gives verdicts on nodes",
                    meta.leader
                ));
            }
            Ok(())
        }
        Command::ForgetNode { .. } if meta.proposer != meta.leader => {
            refused(format!("only the leader (`{}`) forgets nodes", meta.leader))
        }
        // A rotation (format 11) is started by an operator, through the
        // voter that made the new root (the leader took the operator's
        // token); `set_ca` lets only the leader end one.
        Command::SetCa { ca } if ca.generation > 1 => Ok(()),
        Command::SetCa { .. } | Command::AdmitNode { .. } | Command::SetGossipKeys { .. }
            if meta.proposer != meta.leader =>
        {
            refused(format!(
                "only the leader (`{}`) changes the CA, admits nodes and sets gossip keys",
                meta.leader
            ))
        }
        _ => Ok(()),
    }
}
