//! Starts real `shoal agent` processes for end-to-end tests and cleans up
//! after them: the agent (by its own pid), and every container, snapshot,
//! image and the namespace it made in containerd.

#![allow(dead_code)]

pub mod cluster;
pub mod registry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest wait for anything a test waits on.
pub const WAIT_MAX: Duration = Duration::from_secs(60);
pub static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn e2e_enabled() -> bool {
    std::env::var("SHOAL_E2E").is_ok_and(|value| value == "1")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

pub struct Node {
    pub name: String,
    pub namespace: String,
    pub api_port: u16,
    pub gossip_port: u16,
    pub data_dir: tempfile::TempDir,
    pub scratch: tempfile::TempDir,
    /// The agent's bridge and cluster CIDR: its own, as it shares the
    /// host's network with other tests.
    pub bridge: String,
    pub cluster_cidr: String,
    /// More flags for the agent.
    pub extra_args: Vec<String>,
    agent: Option<Child>,
}

/// A bridge name of this test process's own (at most 15 bytes).
pub fn test_bridge(serial: u32, index: usize) -> String {
    format!("sh{}x{}n{index}", std::process::id() % 10_000, serial % 100)
}

/// A cluster CIDR of this test process's own: a /21 (8 node subnets).
pub fn test_cluster_cidr(serial: u32) -> String {
    format!(
        "10.{}.{}.0/21",
        100 + std::process::id() % 50,
        (serial % 32) * 8
    )
}

/// The directory in which a node's agent keeps its tasks' secrets and
/// configs: `/run/shoal/files` where `/run` is a tmpfs, else
/// `/dev/shm/shoal/files`, then one per data dir (the first 8 bytes of the
/// SHA-256 of the data dir's path, in hex), a directory per task in it.
pub fn task_files_dir(data_dir: &Path) -> PathBuf {
    use sha2::Digest;
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let run_is_tmpfs = Command::new("stat")
        .args(["-f", "-c", "%T", "/run"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "tmpfs");
    let root = if run_is_tmpfs {
        "/run/shoal/files"
    } else {
        "/dev/shm/shoal/files"
    };
    Path::new(root).join(hex::encode(&hash[..8]))
}

/// Removes [`task_files_dir`].
pub fn cleanup_task_files(data_dir: &Path) {
    let _ = std::fs::remove_dir_all(task_files_dir(data_dir));
}

/// Releases what a node's agent made on the host's network: the
/// namespaces of its tasks (as named in its data dir), and when it ran in
/// the host's network namespace its bridge and masquerade chain.
pub fn cleanup_network(data_dir: &Path, bridge_name: &str, in_host_netns: bool) {
    let bridge = in_host_netns.then_some(bridge_name);
    let run = |program: &str, args: &[&str]| {
        let _ = Command::new(program).args(args).output();
    };
    if let Ok(entries) = std::fs::read_dir(data_dir.join("net").join("tasks")) {
        for entry in entries.flatten().take(10_000) {
            let name = format!("{}-{}", bridge_name, entry.file_name().to_string_lossy());
            run("ip", &["netns", "del", &name]);
        }
    }
    if let Some(bridge) = bridge {
        run("ip", &["link", "del", bridge]);
        let chain = format!("SHOAL-{bridge}");
        for _ in 0..8 {
            let removed = Command::new("iptables")
                .args(["-t", "nat", "-D", "POSTROUTING", "-j", &chain])
                .output()
                .is_ok_and(|output| output.status.success());
            if !removed {
                break;
            }
        }
        run("iptables", &["-t", "nat", "-F", &chain]);
        run("iptables", &["-t", "nat", "-X", &chain]);
    }
}

impl Node {
    /// A running agent with the busybox test image imported, or `None` (and
    /// a note) when end-to-end tests are switched off.
    pub fn start_or_skip(test: &str) -> Option<Node> {
        Self::start_with_args_or_skip(test, &[])
    }

    /// The same, with more flags for the agent.
    pub fn start_with_args_or_skip(test: &str, extra_args: &[&str]) -> Option<Node> {
        if !e2e_enabled() {
            eprintln!("skipped {test}: set SHOAL_E2E=1 to run end-to-end tests");
            return None;
        }
        let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut node = Node {
            name: format!("e2e-{test}"),
            namespace: format!("shoal-e2e-{}-{serial}-{test}", std::process::id()),
            api_port: free_port(),
            gossip_port: free_port(),
            data_dir: tempfile::tempdir().expect("data dir"),
            scratch: tempfile::tempdir().expect("scratch dir"),
            bridge: test_bridge(serial, 0),
            cluster_cidr: test_cluster_cidr(serial),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            agent: None,
        };
        node.start_agent();
        node.import_rootfs_with("shoal.test/busybox:latest", &[]);
        Some(node)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    pub fn start_agent(&mut self) {
        let log = std::fs::File::create(self.scratch.path().join("agent.log")).expect("agent log");
        let child = Command::new(binary())
            .args(["agent", "--name", &self.name, "--advertise", "127.0.0.1"])
            .args(["--api-port", &self.api_port.to_string()])
            .args(["--gossip-port", &self.gossip_port.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--containerd-namespace", &self.namespace])
            .args(["--bridge", &self.bridge])
            .args(["--cluster-cidr", &self.cluster_cidr])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start shoal agent");
        self.agent = Some(child);
        self.wait_for("the agent's API", || {
            let output = self.shoal(&["nodes", "-o", "json"]);
            output.status.success().then_some(())
        });
    }

    /// kill -9 of the agent process this test started.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to the agent this test started; returns how long it took to exit.
    pub fn terminate_agent(&mut self) -> Duration {
        let mut child = self.agent.take().expect("an agent runs");
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        loop {
            if child.try_wait().expect("wait for the agent").is_some() {
                return started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin credential the node wrote when it formed its cluster.
    pub fn credential(&self) -> std::path::PathBuf {
        self.data_dir.path().join("admin.json")
    }

    pub fn shoal_spawn(&self, args: &[&str]) -> Child {
        Command::new(binary())
            .args(args)
            .env("SHOAL_ADDR", self.addr())
            .env("SHOAL_CONFIG", self.credential())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn shoal")
    }

    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .env("SHOAL_ADDR", self.addr())
            .env("SHOAL_CONFIG", self.credential())
            .output()
            .expect("run shoal")
    }

    /// `shoal ARGS` with `input` on its stdin.
    pub fn shoal_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(binary())
            .args(args)
            .env("SHOAL_ADDR", self.addr())
            .env("SHOAL_CONFIG", self.credential())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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

    pub fn shoal_ok(&self, args: &[&str]) -> String {
        let output = self.shoal(args);
        assert!(
            output.status.success(),
            "shoal {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn shoal_err(&self, args: &[&str]) -> String {
        let output = self.shoal(args);
        assert!(
            !output.status.success(),
            "shoal {args:?} succeeded but should not have"
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    pub fn shoal_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.shoal_ok(&args)).expect("JSON output")
    }

    /// `shoal apply` of `spec`, following the rollout for 60s at most.
    pub fn apply(&self, spec: &str) -> Output {
        self.apply_with(spec, &[])
    }

    fn apply_with(&self, spec: &str, args: &[&str]) -> Output {
        let path = self.scratch.path().join(format!(
            "spec-{}.yaml",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, spec).expect("write spec");
        let mut all = vec![
            "apply",
            "-f",
            path.to_str().expect("utf-8 path"),
            "--timeout",
            "60s",
        ];
        all.extend_from_slice(args);
        self.shoal(&all)
    }

    /// `shoal apply --detach`: the spec accepted, the rollout not followed
    /// (for apps whose tasks are not all meant to become healthy).
    pub fn apply_detached(&self, spec: &str) -> String {
        let output = self.apply_with(spec, &["--detach"]);
        assert!(
            output.status.success(),
            "apply --detach failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn apply_ok(&self, spec: &str) -> String {
        let output = self.apply(spec);
        assert!(
            output.status.success(),
            "apply failed: {}{}\nagent log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.agent_log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn apply_err(&self, spec: &str) -> String {
        let output = self.apply(spec);
        assert!(
            !output.status.success(),
            "apply succeeded but should not have"
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    pub fn tasks(&self) -> Vec<Value> {
        match self.shoal_json(&["ps"]) {
            Value::Array(tasks) => tasks,
            other => panic!("ps -o json is not an array: {other}"),
        }
    }

    pub fn task(&self, id: &str) -> Value {
        self.tasks()
            .into_iter()
            .find(|task| task["id"] == id)
            .unwrap_or_else(|| panic!("task {id} is gone"))
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("agent.log")).unwrap_or_default()
    }

    /// Polls `check` until it gives a value, for at most [`WAIT_MAX`].
    pub fn wait_for<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        poll_until(what, || format!("agent log:\n{}", self.agent_log()), check)
    }

    /// `ctr` as an independent witness of what containerd holds.
    pub fn ctr(&self, args: &[&str]) -> String {
        let output = Command::new("ctr")
            .args(["--namespace", &self.namespace])
            .args(args)
            .output()
            .expect("run ctr");
        assert!(
            output.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `args` inside the container `container_id` (`ctr tasks exec`).
    pub fn exec(&self, container_id: &str, args: &[&str]) -> std::process::Output {
        let exec_id = format!("e2e-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        Command::new("ctr")
            .args(["--namespace", &self.namespace, "tasks", "exec"])
            .args(["--exec-id", &exec_id, container_id])
            .args(args)
            .output()
            .expect("ctr tasks exec")
    }

    /// [`exec`](Self::exec) that must succeed; its stdout.
    pub fn exec_ok(&self, container_id: &str, args: &[&str]) -> String {
        let output = self.exec(container_id, args);
        assert!(
            output.status.success(),
            "exec {args:?} in {container_id}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Running containerd tasks: container id → pid.
    pub fn containerd_running_tasks(&self) -> BTreeMap<String, u32> {
        self.ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields.as_slice() {
                    [id, pid, "RUNNING"] => Some((id.to_string(), pid.parse().ok()?)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Imports a busybox root filesystem (plus `extra` files) as `name`.
    pub fn import_rootfs_with(&self, name: &str, extra: &[(&str, &str)]) {
        let rootfs = self.busybox_rootfs(extra);
        self.shoal_ok(&[
            "image",
            "import",
            "--rootfs",
            rootfs.to_str().expect("utf-8"),
            "--name",
            name,
        ]);
    }

    /// A busybox root filesystem in the scratch dir, plus `extra` files
    /// (made executable).
    pub fn busybox_rootfs(&self, extra: &[(&str, &str)]) -> PathBuf {
        let rootfs = self.scratch.path().join(format!(
            "rootfs-{}",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-rootfs.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&rootfs)
            .status()
            .expect("run busybox-rootfs.sh");
        assert!(status.success(), "busybox-rootfs.sh failed");
        for (path, content) in extra {
            let file = rootfs.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(&file, content).expect("write extra file");
            set_executable(&file);
        }
        rootfs
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
        cleanup_namespace(&self.namespace);
        cleanup_network(self.data_dir.path(), &self.bridge, true);
        cleanup_task_files(self.data_dir.path());
    }
}

fn set_executable(path: &PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
}

/// Removes every task, container, snapshot and image of a namespace, then
/// the namespace.
pub fn cleanup_namespace(namespace: &str) {
    let ctr = |args: &[&str]| -> String {
        Command::new("ctr")
            .args(["--namespace", namespace])
            .args(args)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default()
    };
    for id in ctr(&["containers", "ls", "-q"]).lines() {
        ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        let started = Instant::now();
        while ctr(&["tasks", "ls"]).contains(&format!("{id} "))
            && started.elapsed() < Duration::from_secs(10)
        {
            ctr(&["tasks", "delete", id]);
            std::thread::sleep(Duration::from_millis(50));
        }
        ctr(&["containers", "delete", id]);
    }
    for image in ctr(&["images", "ls", "-q"]).lines() {
        ctr(&["images", "rm", "--sync", image]);
    }
    // Snapshots go from the leaves up: repeat while any are removable.
    for _ in 0..16 {
        let keys: Vec<String> = ctr(&["snapshots", "ls"])
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .collect();
        if keys.is_empty() {
            break;
        }
        for key in keys {
            ctr(&["snapshots", "rm", &key]);
        }
    }
    let _ = Command::new("ctr")
        .args(["namespaces", "remove", namespace])
        .output();
    // runc leaves the namespace's parent cgroup (/shoal/<namespace>) behind.
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for hierarchy in hierarchies.flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join("shoal").join(namespace));
        }
    }
}

/// Polls `check` every 100 ms until it gives a value; after [`WAIT_MAX`]
/// fails the test with `context()` (the agents' logs).
pub fn poll_until<T>(
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "gave up waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid}");
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A plain HTTP GET with std only, to check what the API serves.
/// The CA certificate and token of a credential file (admin.json).
pub fn credential_parts(path: &std::path::Path) -> (String, String) {
    let credential: Value =
        serde_json::from_slice(&std::fs::read(path).expect("read the credential")).expect("JSON");
    (
        credential["ca_pem"].as_str().expect("ca_pem").to_string(),
        credential["token"].as_str().expect("token").to_string(),
    )
}

/// `curl ARGS https://shoal-node:PORT/PATH` against `ip:port`, trusting the
/// CA in `ca_file`; returns (HTTP status, body), status 0 when TLS failed.
pub fn curl(
    ip: &str,
    port: u16,
    path: &str,
    ca_file: &std::path::Path,
    args: &[&str],
) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(ca_file)
        .args(["--resolve", &format!("shoal-node:{port}:{ip}")])
        .args(args)
        .arg(format!("https://shoal-node:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    match status.trim().parse() {
        Ok(status) if status != 0 => (status, body.to_string()),
        // No answer: what curl said instead, for the assertion's message.
        _ => (0, String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// The forms a secret would take if it leaked: as it is, and in base64
/// (how values travel in JSON), from its first byte on (the encoding of
/// its first ⌊len/3⌋·3 bytes, which every base64 of it starts with).
pub fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    let whole = secret.len() / 3 * 3;
    vec![
        secret.to_string(),
        base64::engine::general_purpose::STANDARD.encode(&secret.as_bytes()[..whole]),
    ]
}

/// Whether `text` holds `secret` in any of its [`secret_forms`].
pub fn holds_secret(text: &str, secret: &str) -> bool {
    secret_forms(secret).iter().any(|form| text.contains(form))
}

/// Panics when `secret` is in the clear, or in base64, in any file under
/// `dir` (each read whole); how many files were read.
pub fn assert_secret_in_no_file(dir: &Path, secret: &str) -> usize {
    let forms = secret_forms(secret);
    let mut files = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir").flatten() {
                files.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            seen += 1;
            for form in &forms {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                    "the secret is in {} as {form:?}",
                    path.display()
                );
            }
        }
    }
    seen
}
