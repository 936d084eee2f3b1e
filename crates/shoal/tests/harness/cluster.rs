//! Several real `shoal agent` processes on one host, each on its own
//! loopback address (127.X.Y.N), with its own data dir and containerd
//! namespace, for cluster tests.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::{binary, cleanup_namespace, e2e_enabled, COUNTER};

pub struct Member {
    pub name: String,
    pub ip: String,
    pub namespace: String,
    pub data_dir: PathBuf,
    pub labels: Vec<String>,
    /// More flags for this node's agent.
    pub extra_args: Vec<String>,
    /// The agent's bridge (its own, also when nodes share the host's network).
    pub bridge: String,
    /// The `shoal` binary this node's agent runs (this build's unless a
    /// test, such as the upgrade test, says otherwise).
    pub agent_binary: PathBuf,
    agent: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub scratch: tempfile::TempDir,
    /// Set when the nodes live in network namespaces on a bridge.
    pub netns: Option<Netns>,
    /// The tasks' address range, the cluster's own.
    pub cluster_cidr: String,
}

/// The test's own hosts: one network namespace per node on a bridge, so
/// that a partition is a matter of iptables rules inside a namespace.
pub struct Netns {
    pub bridge: String,
    pub namespaces: Vec<String>,
    pub subnet: String,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Netns {
    fn create(serial: u32, count: usize) -> Netns {
        let tag = format!("{}{}", std::process::id() % 10_000, serial % 100);
        let subnet = format!("10.{}.{}", 200 + std::process::id() % 50, serial % 250);
        let bridge = format!("shb{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let mut netns = Netns {
            bridge,
            namespaces: Vec::new(),
            subnet,
        };
        for index in 1..=count {
            let namespace = format!("shoal-e2e-{tag}-{index}");
            let host_side = format!("shv{tag}{index}");
            ip(&["netns", "add", &namespace]);
            netns.namespaces.push(namespace.clone());
            ip(&[
                "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns",
                &namespace,
            ]);
            ip(&["link", "set", &host_side, "master", &netns.bridge]);
            ip(&["link", "set", &host_side, "up"]);
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{}.{index}/24", netns.subnet),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &namespace, "link", "set", "eth0", "up"]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        }
        netns
    }

    /// Drops every packet between node `index` and the nodes in `others`.
    pub fn cut(&self, index: usize, others: &[usize]) {
        for other in others {
            for (from, to) in [(index, *other), (*other, index)] {
                let source = format!("{}.{}", self.subnet, to + 1);
                let output = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &self.namespaces[from],
                        "iptables",
                        "-I",
                        "INPUT",
                        "-s",
                        &source,
                        "-j",
                        "DROP",
                    ])
                    .output()
                    .expect("run iptables");
                assert!(
                    output.status.success(),
                    "iptables: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }

    /// Removes every rule `cut` made.
    pub fn heal(&self) {
        for namespace in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "exec", namespace, "iptables", "-F", "INPUT"])
                .output();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            // The veth pair goes with the namespace, and the rules in it.
            let _ = Command::new("ip")
                .args(["netns", "delete", namespace])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .output();
    }
}

impl Cluster {
    /// `labels[i]` are node i's `--label` values. Node 0 forms the cluster;
    /// the others join through it.
    pub fn start_or_skip(test: &str, labels: &[&[&str]]) -> Option<Cluster> {
        Self::start_with(test, labels, false, None, &[])
    }

    /// The same, every agent with `extra_args` too.
    pub fn start_with_args_or_skip(
        test: &str,
        labels: &[&[&str]],
        extra_args: &[&str],
    ) -> Option<Cluster> {
        Self::start_with(test, labels, false, None, extra_args)
    }

    /// The same, each node in a network namespace of its own on a bridge.
    pub fn start_in_netns_or_skip(test: &str, labels: &[&[&str]]) -> Option<Cluster> {
        Self::start_with(test, labels, true, None, &[])
    }

    /// The same, every agent running `agent_binary` (an older build).
    pub fn start_with_binary_or_skip(
        test: &str,
        labels: &[&[&str]],
        agent_binary: &std::path::Path,
    ) -> Option<Cluster> {
        Self::start_with(test, labels, false, Some(agent_binary), &[])
    }

    fn start_with(
        test: &str,
        labels: &[&[&str]],
        in_netns: bool,
        agent_binary: Option<&std::path::Path>,
        extra_args: &[&str],
    ) -> Option<Cluster> {
        if !e2e_enabled() {
            eprintln!("skipped {test}: set SHOAL_E2E=1 to run end-to-end tests");
            return None;
        }
        let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
        let scratch = tempfile::tempdir().expect("scratch dir");
        let netns = in_netns.then(|| Netns::create(serial, labels.len()));
        let block = match &netns {
            Some(netns) => netns.subnet.clone(),
            None => format!("127.{}.{}", 100 + std::process::id() % 100, serial % 250),
        };
        let members = labels
            .iter()
            .enumerate()
            .map(|(index, labels)| Member {
                name: format!("{test}-{}", index + 1),
                ip: format!("{block}.{}", index + 1),
                namespace: format!(
                    "shoal-e2e-{}-{serial}-{test}-{}",
                    std::process::id(),
                    index + 1
                ),
                data_dir: scratch.path().join(format!("node{}", index + 1)),
                labels: labels.iter().map(|label| label.to_string()).collect(),
                extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
                bridge: super::test_bridge(serial, index),
                agent_binary: agent_binary.map_or_else(|| binary().into(), Into::into),
                agent: None,
            })
            .collect();
        let mut cluster = Cluster {
            members,
            scratch,
            netns,
            cluster_cidr: super::test_cluster_cidr(serial),
        };
        for index in 0..cluster.members.len() {
            let peers = if index == 0 {
                vec![]
            } else {
                vec![cluster.members[0].ip.clone()]
            };
            cluster.start(index, &peers);
        }
        cluster.wait_for("every node to list every node", || {
            let count = cluster.members.len();
            (0..count)
                .all(|index| {
                    cluster.nodes(index).is_some_and(|nodes| {
                        nodes
                            .iter()
                            .filter(|node| node["status"] == "alive")
                            .count()
                            == count
                    })
                })
                .then_some(())
        });
        for index in 0..cluster.members.len() {
            cluster.import_busybox(index);
        }
        Some(cluster)
    }

    /// A new node (on 127.X.Y.N, not in a network namespace) joins through
    /// node 0; returns its index.
    pub fn join(&mut self, labels: &[&str]) -> usize {
        let index = self.add_member(labels);
        let peer = self.members[0].ip.clone();
        self.start(index, &[peer]);
        self.import_busybox(index);
        index
    }

    /// New nodes (on 127.X.Y.N) that all start joining through node 0 at
    /// the same moment; returns their indexes once every one answers.
    pub fn join_together(&mut self, count: usize) -> Vec<usize> {
        let indexes: Vec<usize> = (0..count).map(|_| self.add_member(&[])).collect();
        let peer = self.members[0].ip.clone();
        for &index in &indexes {
            let token = self.join_token(index, std::slice::from_ref(&peer));
            self.spawn(index, std::slice::from_ref(&peer), Some(&token));
        }
        for &index in &indexes {
            self.wait_api(index);
        }
        indexes
    }

    /// POSTs `body` (JSON) to node 0's `path` over TLS, with the
    /// certificate of node `asker` (`Some`) or the bearer `token`; the
    /// status and the answer's body.
    pub fn post_to_node_0(
        &self,
        path: &str,
        body: &str,
        asker: Option<usize>,
        token: Option<&str>,
    ) -> (u16, String) {
        let (ca_pem, _) = super::credential_parts(&self.credential());
        let ca_file = self.scratch.path().join("ca-of-the-cluster.pem");
        std::fs::write(&ca_file, ca_pem).expect("write CA");
        let mut args: Vec<String> = Vec::new();
        if let Some(asker) = asker {
            let pki = self.members[asker].data_dir.join("pki");
            for (flag, file) in [("--cert", "node.pem"), ("--key", "node.key")] {
                args.push(flag.into());
                args.push(pki.join(file).to_str().expect("path").into());
            }
        }
        if let Some(token) = token {
            args.push("-H".into());
            args.push(format!("authorization: Bearer {token}"));
        }
        for arg in [
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
            body,
        ] {
            args.push(arg.into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        super::curl(&self.members[0].ip, 7950, path, &ca_file, &args)
    }

    /// A single-use worker join token, made through node 0.
    pub fn worker_token(&self) -> String {
        self.shoal_ok(0, &["cluster", "token", "create", "--role", "worker"])
            .trim()
            .to_string()
    }

    /// A new member joined as a worker (with [`Cluster::worker_token`]).
    pub fn join_worker(&mut self) -> usize {
        let token = self.worker_token();
        self.join_with_token(&token)
    }

    /// A new node (127.X.Y.N) joins through node 0 with `token`.
    pub fn join_with_token(&mut self, token: &str) -> usize {
        let index = self.add_member(&[]);
        let peer = self.members[0].ip.clone();
        self.spawn(index, std::slice::from_ref(&peer), Some(token));
        self.wait_api(index);
        index
    }

    /// A new node (127.X.Y.N) joins through node `peer` with `token`.
    pub fn join_via(&mut self, peer: usize, token: &str) -> usize {
        let index = self.add_member(&[]);
        let peer = self.members[peer].ip.clone();
        self.spawn(index, std::slice::from_ref(&peer), Some(token));
        self.wait_api(index);
        index
    }

    /// A new member (127.X.Y.N) that tries to join through `peer` with
    /// `token` and `extra` flags, expected to give up: its output once the
    /// agent exits (within 60 s). Its data dir is left for inspection.
    pub fn try_join(&mut self, peer: &str, token: &str, extra: &[&str]) -> (usize, Output) {
        let index = self.add_member(&[]);
        self.try_join_member(index, peer, token, extra)
    }

    /// [`Cluster::try_join`] under the name `name` (another node's, say).
    pub fn try_join_as(&mut self, name: &str, peer: &str, token: &str) -> (usize, Output) {
        let index = self.add_member(&[]);
        self.members[index].name = name.to_string();
        self.try_join_member(index, peer, token, &[])
    }

    fn try_join_member(
        &mut self,
        index: usize,
        peer: &str,
        token: &str,
        extra: &[&str],
    ) -> (usize, Output) {
        let member = &self.members[index];
        let output = Command::new("timeout")
            .arg("60")
            .arg(binary())
            .args(["agent", "--name", &member.name, "--advertise", &member.ip])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--containerd-namespace", &member.namespace])
            .args(["--bridge", &member.bridge])
            .args(["--cluster-cidr", &self.cluster_cidr])
            .args(["--peer", peer, "--token", token])
            .args(extra)
            .output()
            .expect("run shoal agent");
        (index, output)
    }

    fn add_member(&mut self, labels: &[&str]) -> usize {
        assert!(self.netns.is_none(), "join is for clusters on 127.X.Y.N");
        let index = self.members.len();
        let first = &self.members[0];
        let number = index + 1;
        let base = |text: &str| {
            text.rsplit_once(['-', '.'])
                .map_or(String::new(), |(head, _)| head.to_string())
        };
        let member = Member {
            name: format!("{}-{number}", base(&first.name)),
            ip: format!("{}.{number}", base(&first.ip)),
            namespace: format!("{}-{number}", base(&first.namespace)),
            data_dir: self.scratch.path().join(format!("node{number}")),
            labels: labels.iter().map(|label| label.to_string()).collect(),
            extra_args: Vec::new(),
            bridge: format!(
                "{}{index}",
                first.bridge.trim_end_matches(|c: char| c.is_ascii_digit())
            ),
            agent_binary: binary().into(),
            agent: None,
        };
        self.members.push(member);
        index
    }

    pub fn addr(&self, index: usize) -> String {
        format!("{}:7950", self.members[index].ip)
    }

    /// Starts node `index`'s agent, joining through `peers` (IPs) with a
    /// fresh join token the first time.
    pub fn start(&mut self, index: usize, peers: &[String]) {
        let token = if !peers.is_empty() && !self.members[index].data_dir.join("pki").exists() {
            Some(self.join_token(index, peers))
        } else {
            None
        };
        self.spawn(index, peers, token.as_deref());
        self.wait_api(index);
    }

    /// A voter join token from the first running node among `peers`' owners.
    fn join_token(&self, joining: usize, peers: &[String]) -> String {
        let owner = (0..self.members.len())
            .find(|&i| {
                i != joining
                    && self.members[i].agent.is_some()
                    && peers.iter().any(|p| p.starts_with(&self.members[i].ip))
            })
            .or_else(|| {
                (0..self.members.len()).find(|&i| i != joining && self.members[i].agent.is_some())
            })
            .expect("a running node to make a join token");
        let output = self.shoal(owner, &["cluster", "token", "create", "--role", "voter"]);
        assert!(
            output.status.success(),
            "making a join token: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The admin credential of the cluster (written by the node that formed it).
    pub fn credential(&self) -> std::path::PathBuf {
        self.members
            .iter()
            .map(|member| member.data_dir.join("admin.json"))
            .find(|path| path.exists())
            .unwrap_or_else(|| self.members[0].data_dir.join("admin.json"))
    }

    fn wait_api(&self, index: usize) {
        // The node answers over TLS with the cluster's credential (which
        // the first node writes when it forms the cluster).
        self.wait_for("the agent's API", || {
            self.shoal(index, &["cluster", "info", "-o", "json"])
                .status
                .success()
                .then_some(())
        });
    }

    /// Runs `program args` where node `index` lives: in its network
    /// namespace, or on the host.
    pub fn on_node(&self, index: usize, program: &str, args: &[&str]) -> Output {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net=/var/run/netns/{}", netns.namespaces[index]))
                    .arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .output()
            .expect("run a program on a node")
    }

    /// Runs `args` inside the container of `task_id` on node `index`.
    pub fn exec(&self, index: usize, task_id: &str, args: &[&str]) -> Output {
        let exec_id = format!("e2e-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        Command::new("ctr")
            .args(["-n", &self.members[index].namespace, "tasks", "exec"])
            .args(["--exec-id", &exec_id, task_id])
            .args(args)
            .output()
            .expect("ctr tasks exec")
    }

    fn spawn(&mut self, index: usize, peers: &[String], token: Option<&str>) {
        let member = &self.members[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.path().join(format!("{}.log", member.name)))
            .expect("agent log");
        let mut command = match &self.netns {
            // nsenter execs the agent: the child's pid is the agent's. Only
            // the network namespace changes (`ip netns exec` would also give
            // the agent a mount namespace of its own, where the task
            // namespaces it mounts stay hidden from containerd).
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net=/var/run/netns/{}", netns.namespaces[index]))
                    .arg(&member.agent_binary);
                command
            }
            None => Command::new(&member.agent_binary),
        };
        command
            .args(["agent", "--name", &member.name, "--advertise", &member.ip])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--containerd-namespace", &member.namespace])
            .args(["--bridge", &member.bridge])
            .args(["--cluster-cidr", &self.cluster_cidr])
            .env("SHOAL_LOG", "info,shoal=debug")
            .stdout(Stdio::null())
            .stderr(log);
        for peer in peers {
            command.args(["--peer", peer]);
        }
        if let Some(token) = token {
            command.env("SHOAL_JOIN_TOKEN", token);
        }
        for label in &member.labels {
            command.args(["--label", label]);
        }
        command.args(&member.extra_args);
        let child = command.spawn().expect("start shoal agent");
        self.members[index].agent = Some(child);
    }

    /// kill -9 of node `index`'s agent (its containers keep running).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `index`'s agent as an operator would (SIGTERM, SIGKILL
    /// after a bound); its containers keep running.
    pub fn stop(&mut self, index: usize) {
        const STOP_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(20);
        let Some(mut child) = self.members[index].agent.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = std::time::Instant::now();
        while started.elapsed() < STOP_WAIT_MAX {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].agent.is_some()
    }

    /// The process id of node `index`'s agent, while it runs.
    pub fn agent_pid(&self, index: usize) -> Option<u32> {
        self.members[index]
            .agent
            .as_ref()
            .map(std::process::Child::id)
    }

    pub fn shoal(&self, index: usize, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .env("SHOAL_ADDR", self.addr(index))
            .env("SHOAL_CONFIG", self.credential())
            .output()
            .expect("run shoal")
    }

    /// `shoal ARGS` through node `index` with `input` on its stdin.
    pub fn shoal_with_stdin(&self, index: usize, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(binary())
            .args(args)
            .env("SHOAL_ADDR", self.addr(index))
            .env("SHOAL_CONFIG", self.credential())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn shoal");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("run shoal")
    }

    /// The whole log of node `index`'s agent.
    pub fn agent_log(&self, index: usize) -> String {
        let name = &self.members[index].name;
        std::fs::read_to_string(self.scratch.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn shoal_ok(&self, index: usize, args: &[&str]) -> String {
        let output = self.shoal(index, args);
        assert!(
            output.status.success(),
            "shoal {args:?} on node {index} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn shoal_json(&self, index: usize, args: &[&str]) -> Option<Value> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let output = self.shoal(index, &args);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    pub fn nodes(&self, index: usize) -> Option<Vec<Value>> {
        match self.shoal_json(index, &["nodes"])? {
            Value::Array(nodes) => Some(nodes),
            _ => None,
        }
    }

    /// Tasks as node `index` sees them. A read may be refused while a
    /// leader is being elected (the API answers 503 then, by design), so a
    /// failed read is tried again for a while before the test fails.
    pub fn tasks(&self, index: usize) -> Vec<Value> {
        const READ_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);
        let start = std::time::Instant::now();
        loop {
            match self.shoal_json(index, &["ps"]) {
                Some(Value::Array(tasks)) => return tasks,
                other if start.elapsed() > READ_RETRY_MAX => {
                    panic!("ps -o json on node {index} for {READ_RETRY_MAX:?}: {other:?}")
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }

    /// The name of the current leader, as node `index` sees it.
    pub fn leader(&self, index: usize) -> Option<String> {
        self.nodes(index)?
            .into_iter()
            .find(|node| node["leader"] == true)
            .and_then(|node| node["name"].as_str().map(str::to_string))
    }

    /// Tasks that want to run and run, as node `index` sees them, leaving
    /// out those on the node named `except`.
    pub fn running_replicas(&self, index: usize, except: Option<&str>) -> usize {
        self.tasks(index)
            .iter()
            .filter(|t| t["desired"] == "running" && t["state"] == "running")
            .filter(|t| except.is_none_or(|name| t["node"] != name))
            .count()
    }

    /// Whether containerd runs any task in node `index`'s namespace (`ctr`
    /// as an independent witness).
    pub fn containerd_runs_a_task(&self, index: usize) -> bool {
        Command::new("ctr")
            .args(["-n", &self.members[index].namespace, "tasks", "ls"])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("RUNNING"))
    }

    /// Whether containerd runs the task `task_id` in node `index`'s namespace.
    pub fn containerd_runs(&self, index: usize, task_id: &str) -> bool {
        Command::new("ctr")
            .args(["-n", &self.members[index].namespace, "tasks", "ls"])
            .output()
            .is_ok_and(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|line| line.starts_with(task_id) && line.contains("RUNNING"))
            })
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|member| member.name == name)
            .expect("a member of this name")
    }

    pub fn apply(&self, index: usize, spec: &str) -> Output {
        let path = self.scratch.path().join(format!(
            "spec-{}.yaml",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, spec).expect("write spec");
        self.shoal(
            index,
            &[
                "apply",
                "-f",
                path.to_str().expect("utf-8"),
                "--timeout",
                "60s",
            ],
        )
    }

    pub fn apply_ok(&self, index: usize, spec: &str) {
        let output = self.apply(index, spec);
        assert!(
            output.status.success(),
            "apply on node {index} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
    }

    pub fn import_busybox(&self, index: usize) {
        let rootfs = self.scratch.path().join("rootfs");
        if !rootfs.exists() {
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../scripts/busybox-rootfs.sh");
            let status = Command::new("bash")
                .arg(&script)
                .arg(&rootfs)
                .status()
                .expect("busybox-rootfs.sh");
            assert!(status.success());
        }
        self.shoal_ok(
            index,
            &[
                "image",
                "import",
                "--rootfs",
                rootfs.to_str().expect("utf-8"),
                "--name",
                "shoal.test/busybox:latest",
            ],
        );
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for member in &self.members {
            let log =
                std::fs::read_to_string(self.scratch.path().join(format!("{}.log", member.name)))
                    .unwrap_or_default();
            // openraft's own lines drown the node's: show the node's.
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|line| !line.contains("openraft::"))
                .take(40)
                .collect();
            text.push_str(&format!("--- {} (last lines)\n", member.name));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    pub fn wait_for<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        super::poll_until(what, || self.logs(), check)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            // Keep the agents' whole logs for the post-mortem.
            let keep = std::env::temp_dir().join(format!(
                "shoal-e2e-logs-{}-{}",
                self.members.first().map_or("cluster", |m| m.name.as_str()),
                std::process::id()
            ));
            if std::fs::create_dir_all(&keep).is_ok() {
                for member in &self.members {
                    let name = format!("{}.log", member.name);
                    let _ = std::fs::copy(self.scratch.path().join(&name), keep.join(&name));
                }
                eprintln!("agents' logs kept in {}", keep.display());
            }
        }
        for member in &self.members {
            cleanup_namespace(&member.namespace);
            // In network namespaces, bridges and chains go with the namespace.
            super::cleanup_network(&member.data_dir, &member.bridge, self.netns.is_none());
            super::cleanup_task_files(&member.data_dir);
        }
        // Network namespaces and the bridge go when `netns` drops.
    }
}
