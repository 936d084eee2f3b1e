//! App events: apps created with random services, services scaled and
//! updated so that their tasks are replaced, apps removed.

use serde_json::{json, Value};
use shoal_state::Command;
use shoal_types::{parse_app, AppSpec};

use super::{Chaos, INFRA_TAINT};
use crate::cluster;

impl Chaos {
    pub(super) fn create_app(&mut self) -> Result<(), String> {
        if self.cluster.state.apps.len() >= self.apps_max {
            return self.scale_service();
        }
        self.next_app += 1;
        let name = format!("app{:05}", self.next_app);
        let services = self.rng.between(1, 3);
        let services: Vec<Value> = (0..services).map(|at| self.random_service(at)).collect();
        let spec = parse(&json!({"name": name, "services": services}))?;
        self.apply(Command::PutApp { spec })?;
        self.summary.apps_created += 1;
        Ok(())
    }

    fn random_service(&mut self, at: u64) -> Value {
        let rng = &mut self.rng;
        let nodes = self.config.nodes as u64;
        let kind = ["service", "global", "batch"][rng.weighted(&[75, 8, 17])];
        let mut service = json!({
            "name": format!("s{at}"),
            "image": format!("busybox:1.{}", rng.below(3)),
            "kind": kind,
        });
        if kind != "global" {
            let replicas = match rng.weighted(&[80, 15, 5]) {
                0 => rng.between(1, 6),
                1 => rng.between(1, nodes / 5 + 1),
                // Big enough to fill the cluster and make tasks compete.
                _ => rng.between(nodes / 2 + 1, nodes * 2),
            };
            service["replicas"] = json!(replicas.min(u64::from(shoal_types::spec::REPLICAS_MAX)));
        }
        let (cpus, memories): (&[&str], &[&str]) = if kind == "global" {
            (&["", "100m"], &["", "64Mi"])
        } else {
            (
                &["", "100m", "250m", "500m", "1", "2"],
                &["", "64Mi", "256Mi", "1Gi", "2Gi"],
            )
        };
        let mut resources = json!({});
        if let Some(cpu) = rng.pick(cpus).filter(|cpu| !cpu.is_empty()) {
            resources["cpu"] = json!(cpu);
        }
        if let Some(memory) = rng.pick(memories).filter(|memory| !memory.is_empty()) {
            resources["memory"] = json!(memory);
        }
        service["resources"] = resources;
        let priority = [0, 100, 500, 1000][rng.weighted(&[70, 15, 10, 5])];
        service["priority"] = json!(priority);
        // How its changes roll out: in batches, new tasks beside the old
        // ones or after them, each watched for a while.
        if kind != "batch" {
            // A big service takes bigger batches, so that it rolls out in
            // a bounded number of rounds.
            let replicas = service["replicas"].as_u64().unwrap_or(1);
            let parallelism = [0, 1, 2, 5][rng.weighted(&[30, 30, 25, 15])];
            let parallelism = if parallelism == 0 {
                0
            } else {
                parallelism.max(replicas / 4)
            };
            let order = if kind == "global" || rng.chance(300) {
                "stop-first"
            } else {
                "start-first"
            };
            let failure_action = ["rollback", "pause", "continue"][rng.weighted(&[60, 20, 20])];
            service["update"] = json!({
                "parallelism": parallelism,
                "order": order,
                "monitor": "1s",
                "failure_action": failure_action,
            });
        }
        if kind == "batch" {
            service["command"] = json!(["true"]);
            service["restart"] = json!({"policy": "on-failure"});
        }
        let mut constraints = Vec::new();
        if rng.chance(150) {
            constraints.push(format!(
                "zone == {}",
                cluster::zone_name(rng.below(self.zones))
            ));
        }
        if rng.chance(50) {
            constraints.push("disk == ssd".to_string());
        }
        if rng.chance(50) {
            constraints.push(format!("zone != {}", cluster::zone_name(0)));
        }
        let mut spread = Vec::new();
        if rng.chance(200) {
            spread.push(json!({"over": "zone"}));
        }
        if rng.chance(100) {
            spread.push(json!({"over": "node.name", "max_per": rng.between(1, 3)}));
        }
        if rng.chance(50) {
            spread.push(json!({"over": "zone", "max_per": rng.between(1, nodes / 3 + 1)}));
        }
        let mut placement = json!({"constraints": constraints, "spread": spread});
        if rng.chance(150) {
            placement["strategy"] = json!("spread");
        }
        if rng.chance(100) {
            placement["affinities"] = json!([{"expr": "disk == ssd", "weight": 50}]);
        }
        service["placement"] = placement;
        let mut tolerations = Vec::new();
        if rng.chance(200) {
            tolerations.push(INFRA_TAINT);
        }
        if rng.chance(100) {
            tolerations.push("evict");
        }
        service["tolerations"] = json!(tolerations);
        // A few services publish a port from a small pool, so that they
        // compete for nodes.
        if rng.chance(60) {
            let (port, protocol) =
                [(8080, "tcp"), (8081, "tcp"), (8080, "udp")][rng.weighted(&[2, 1, 1])];
            service["ports"] =
                json!([{"container_port": 80, "host_port": port, "protocol": protocol}]);
        }
        service
    }

    /// An app picked at random, with its spec as JSON to edit.
    fn pick_app(&mut self) -> Option<(String, Value)> {
        let names: Vec<&String> = self.cluster.state.apps.keys().collect();
        let name = (*self.rng.pick(&names)?).clone();
        let spec = serde_json::to_value(&self.cluster.state.apps.get(&name)?.spec).ok()?;
        Some((name, spec))
    }

    /// A random app's spec and the index of one of its services, or None
    /// when there is no app.
    fn pick_service(&mut self) -> Result<Option<(Value, usize)>, String> {
        let Some((_, spec)) = self.pick_app() else {
            return Ok(None);
        };
        let Some(count) = spec["services"].as_array().map(Vec::len) else {
            return Err("an app spec serialized without services".into());
        };
        let at = self.rng.below(count as u64) as usize;
        Ok(Some((spec, at)))
    }

    pub(super) fn scale_service(&mut self) -> Result<(), String> {
        let Some((mut spec, at)) = self.pick_service()? else {
            return self.create_app_if_room();
        };
        let service = &mut spec["services"][at];
        let replicas = service["replicas"].as_u64().unwrap_or(1);
        let nodes = self.config.nodes as u64;
        let scaled = match self.rng.weighted(&[45, 45, 10]) {
            0 => self.rng.between(0, replicas),
            1 => self.rng.between(replicas, replicas * 2 + 2),
            _ => self.rng.between(0, nodes),
        };
        service["replicas"] = json!(scaled.min(u64::from(shoal_types::spec::REPLICAS_MAX)));
        self.apply(Command::PutApp {
            spec: parse(&spec)?,
        })?;
        self.summary.app_updates += 1;
        Ok(())
    }

    /// Changes a service so that its tasks must be replaced (new image or
    /// new requests).
    pub(super) fn update_service(&mut self) -> Result<(), String> {
        let Some((mut spec, at)) = self.pick_service()? else {
            return self.create_app_if_room();
        };
        let service = &mut spec["services"][at];
        if self.rng.chance(500) {
            service["image"] = json!(format!("busybox:1.{}", self.rng.below(5)));
        } else {
            let cpu = ["100m", "200m", "1"][self.rng.below(3) as usize];
            service["resources"]["cpu"] = json!(cpu);
        }
        self.apply(Command::PutApp {
            spec: parse(&spec)?,
        })?;
        self.summary.app_updates += 1;
        Ok(())
    }

    fn create_app_if_room(&mut self) -> Result<(), String> {
        if self.cluster.state.apps.len() < self.apps_max {
            self.create_app()
        } else {
            Ok(())
        }
    }

    pub(super) fn remove_app(&mut self) -> Result<(), String> {
        let Some((name, _)) = self.pick_app() else {
            return Ok(());
        };
        self.apply(Command::RemoveApp { name })?;
        self.summary.apps_removed += 1;
        Ok(())
    }
}

fn parse(spec: &Value) -> Result<AppSpec, String> {
    parse_app(spec.to_string().as_bytes())
        .map_err(|error| format!("generated spec is invalid: {error}"))
}
