//! One behaviour suite for every `Runtime` and `ImageStore`: each check is written once,
//! generic over a `Backend`, and instantiated for the fake driver and for
//! containerd. The containerd half needs `SHOAL_E2E=1`, root, a running
//! containerd 1.6+ with runc, and /bin/busybox; every test gets its own
//! containerd namespace, purged (with the namespace) when the test ends,
//! pass or fail.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ListContainersRequest;
use containerd_client::tonic::{Code, Request};
use containerd_client::with_namespace;
use shoal_runtime::containerd::{Containerd, DEFAULT_SNAPSHOTTER, DEFAULT_SOCKET};
use shoal_runtime::fake::{FakeOp, FakeRuntime};
use shoal_runtime::image::{sha256_digest, write_rootfs_layout};
use shoal_runtime::{
    BindMount, ContainerConfig, ContainerStatus, ErrorKind, ImageStore, NetworkMode, Runtime,
    RuntimeError, LABEL_ATTEMPT, LABEL_TASK,
};

mod support;
use support::{busybox_rootfs, test_namespace, NamespacePurge};

const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// What the suite asks a container's process to do. The command is the same
/// for every backend; the fake, which runs nothing, plays the part through
/// its knobs in `Backend::after_run`.
#[derive(Clone, Debug)]
enum Prog {
    /// Runs until killed, ignoring SIGTERM (pid 1 without a handler does).
    Sleep,
    /// Exits with the code on SIGTERM.
    TrapTerm(i32),
    /// Exits at once with the code.
    Exit(i32),
    /// Prints $FOO, its cwd, uid:gid and first two arguments, then exits 0.
    Report,
    /// Prints "out" on stdout and "err" on stderr, then exits 0.
    BothStreams,
    /// Prints its cgroup memory limit and CPU quota, then exits 0.
    Limits,
}

const REPORT_SCRIPT: &str =
    "echo FOO=$FOO; echo CWD=$(pwd); echo ID=$(id -u):$(id -g); echo ARGS=$0,$1";
const LIMITS_SCRIPT: &str = "echo MEM=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); \
     echo CPU=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max)";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Prog {
    fn command(&self) -> (Vec<String>, Option<Vec<String>>) {
        let sh = |script: String| strings(&["sh", "-c", &script]);
        match self {
            Prog::Sleep => (strings(&["sleep", "3600"]), None),
            Prog::TrapTerm(code) => (
                sh(format!(
                    "trap 'exit {code}' TERM; while true; do sleep 0.05; done"
                )),
                None,
            ),
            Prog::Exit(code) => (sh(format!("exit {code}")), None),
            Prog::Report => (
                strings(&["sh", "-c"]),
                Some(strings(&[REPORT_SCRIPT, "a0", "a1"])),
            ),
            Prog::BothStreams => (sh("echo out; echo err >&2".into()), None),
            Prog::Limits => (sh(LIMITS_SCRIPT.into()), None),
        }
    }
}

trait Backend: Send + Sync {
    type R: Runtime + ImageStore;
    fn rt(&self) -> &Self::R;
    fn dir(&self) -> &Path;
    /// An image present in the runtime.
    fn image(&self) -> &str;
    async fn after_run(&self, id: &str, prog: &Prog);
    /// What the next command run in container `id` gives, for a backend
    /// that runs nothing (the fake); a real one runs the command.
    async fn before_exec(&self, id: &str, outcome: Option<i32>);
    async fn snapshot_exists(&self, id: &str) -> bool;
    /// What talking to this kind of runtime gives when it cannot be reached.
    async fn unreachable(&self) -> RuntimeError;
}

fn config<B: Backend>(b: &B, id: &str, prog: &Prog) -> ContainerConfig {
    let (command, args) = prog.command();
    ContainerConfig {
        command: Some(command),
        args,
        labels: BTreeMap::from([
            (LABEL_TASK.to_string(), format!("task-{id}")),
            (LABEL_ATTEMPT.to_string(), "1".to_string()),
        ]),
        ..ContainerConfig::new(
            id,
            b.image(),
            b.dir().join("logs").join(format!("{id}.log")),
        )
    }
}

async fn run<B: Backend>(b: &B, config: &ContainerConfig, prog: &Prog) -> u32 {
    let pid = b
        .rt()
        .run(config)
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", config.id));
    b.after_run(&config.id, prog).await;
    pid
}

async fn status<B: Backend>(b: &B, id: &str) -> Option<ContainerStatus> {
    b.rt()
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| c.status)
}

async fn wait_stopped<B: Backend>(b: &B, id: &str) -> i32 {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Some(ContainerStatus::Stopped { exit_code }) = status(b, id).await {
            return exit_code;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "{id} did not stop within {WAIT:?}: {:?}",
        status(b, id).await
    )
}

/// The log once it contains `needle` (the shim may copy output a little
/// after the process exits).
async fn wait_log(path: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) || start.elapsed() > WAIT {
            return log;
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------
// The suite

async fn run_then_list_shows_running<B: Backend>(b: &B) {
    let c = config(b, "running", &Prog::Sleep);
    let pid = run(b, &c, &Prog::Sleep).await;
    assert!(pid > 0);
    let list = b.rt().list().await.unwrap();
    let info = list
        .iter()
        .find(|i| i.id == "running")
        .expect("container listed");
    assert_eq!(info.status, ContainerStatus::Running { pid });
    assert_eq!(info.labels, c.labels);
    assert_eq!(info.image, b.image());
    b.rt().remove("running").await.unwrap();
}

async fn same_id_is_refused<B: Backend>(b: &B) {
    let c = config(b, "twice", &Prog::Sleep);
    run(b, &c, &Prog::Sleep).await;
    let err = b.rt().run(&c).await.unwrap_err();
    assert!(matches!(&err, RuntimeError::ContainerExists(id) if id == "twice"));
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // The first one is untouched.
    assert!(matches!(
        status(b, "twice").await,
        Some(ContainerStatus::Running { .. })
    ));
    b.rt().remove("twice").await.unwrap();
}

async fn missing_image_is_refused<B: Backend>(b: &B) {
    let mut c = config(b, "noimage", &Prog::Sleep);
    c.image = "docker.io/library/not-imported:1".into();
    let err = b.rt().run(&c).await.unwrap_err();
    assert!(matches!(&err, RuntimeError::ImageNotFound(i) if *i == c.image));
    assert_eq!(err.kind(), ErrorKind::ImageMissing);
    // Short names are looked up normalized and reported as given.
    c.image = "not-imported".into();
    let err = b.rt().run(&c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ImageMissing);
    assert!(
        err.to_string()
            .contains("image not-imported is not on this node"),
        "{err}"
    );
    assert_eq!(status(b, "noimage").await, None);
    assert!(!b.snapshot_exists("noimage").await);
}

async fn invalid_config_is_refused<B: Backend>(b: &B) {
    let good = config(b, "refused", &Prog::Sleep);
    let bad_id = ContainerConfig {
        id: "bad/id".into(),
        ..good.clone()
    };
    let relative_log = ContainerConfig {
        log_path: PathBuf::from("logs/x.log"),
        ..good.clone()
    };
    let huge_memory = ContainerConfig {
        memory_bytes: Some(u64::MAX),
        ..good.clone()
    };
    // An empty command drops the image's cmd too: nothing to run.
    let no_command = ContainerConfig {
        command: Some(Vec::new()),
        args: None,
        ..good.clone()
    };
    for c in [bad_id, relative_log, huge_memory, no_command] {
        let err = b.rt().run(&c).await.unwrap_err();
        assert!(matches!(err, RuntimeError::InvalidConfig(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    }
    assert!(b.rt().list().await.unwrap().is_empty());
    assert!(!b.snapshot_exists("refused").await);
}

async fn stop_returns_exit_code<B: Backend>(b: &B) {
    let prog = Prog::TrapTerm(7);
    run(b, &config(b, "graceful", &prog), &prog).await;
    assert_eq!(
        b.rt()
            .stop("graceful", Duration::from_secs(10))
            .await
            .unwrap(),
        Some(7)
    );
    assert_eq!(
        status(b, "graceful").await,
        Some(ContainerStatus::Stopped { exit_code: 7 })
    );
    // Idempotent: stopping again reports the same exit.
    assert_eq!(
        b.rt()
            .stop("graceful", Duration::from_secs(10))
            .await
            .unwrap(),
        Some(7)
    );
    b.rt().remove("graceful").await.unwrap();
}

async fn stop_escalates_to_sigkill<B: Backend>(b: &B) {
    run(b, &config(b, "stubborn", &Prog::Sleep), &Prog::Sleep).await;
    let grace = Duration::from_millis(300);
    let start = Instant::now();
    assert_eq!(b.rt().stop("stubborn", grace).await.unwrap(), Some(137));
    assert!(
        start.elapsed() >= grace,
        "SIGKILL came before the grace period ended"
    );
    assert_eq!(
        status(b, "stubborn").await,
        Some(ContainerStatus::Stopped { exit_code: 137 })
    );
    b.rt().remove("stubborn").await.unwrap();
}

/// Not `NotFound`: stop and remove are idempotent, so that a keeper retrying
/// after a crash need not know how far it got.
async fn missing_ids_are_not_errors<B: Backend>(b: &B) {
    assert_eq!(
        b.rt()
            .stop("never-was", Duration::from_secs(1))
            .await
            .unwrap(),
        None
    );
    b.rt().remove("never-was").await.unwrap();
}

/// A command in a running container: its exit code, or none when it
/// outlives its timeout (killed then, the container still running); a
/// missing container is `NotFound`.
async fn exec_runs_a_command_in_the_container<B: Backend>(b: &B) {
    run(b, &config(b, "execd", &Prog::Sleep), &Prog::Sleep).await;
    let timeout = Duration::from_millis(500);
    for (args, outcome) in [
        (strings(&["test", "-d", "/proc/self"]), Some(0)),
        (strings(&["sh", "-c", "exit 3"]), Some(3)),
        (strings(&["sleep", "30"]), None),
    ] {
        b.before_exec("execd", outcome).await;
        let started = Instant::now();
        let got = b.rt().exec("execd", &args, timeout).await.unwrap();
        assert_eq!(got, outcome, "{args:?}");
        let took = started.elapsed();
        if outcome.is_none() {
            assert!(took >= timeout, "{args:?} ended after {took:?}");
        }
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
    }
    assert!(matches!(
        status(b, "execd").await,
        Some(ContainerStatus::Running { .. })
    ));
    let missing = b
        .rt()
        .exec("never-was", &strings(&["true"]), timeout)
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
    b.rt().remove("execd").await.unwrap();
}

async fn remove_forgets_everything<B: Backend>(b: &B) {
    let c = config(b, "doomed", &Prog::Sleep);
    run(b, &c, &Prog::Sleep).await;
    assert!(b.snapshot_exists("doomed").await);
    // Still running: remove kills it.
    b.rt().remove("doomed").await.unwrap();
    assert_eq!(status(b, "doomed").await, None);
    assert!(!b.snapshot_exists("doomed").await);
    b.rt().remove("doomed").await.unwrap();
    assert_eq!(
        b.rt().stop("doomed", Duration::from_secs(1)).await.unwrap(),
        None
    );
    // The id is free again.
    run(b, &c, &Prog::Sleep).await;
    b.rt().remove("doomed").await.unwrap();
}

async fn process_exits_by_itself<B: Backend>(b: &B) {
    let prog = Prog::Exit(3);
    run(b, &config(b, "quitter", &prog), &prog).await;
    assert_eq!(wait_stopped(b, "quitter").await, 3);
    assert_eq!(
        b.rt()
            .stop("quitter", Duration::from_secs(1))
            .await
            .unwrap(),
        Some(3)
    );
    b.rt().remove("quitter").await.unwrap();
}

async fn env_args_cwd_user_reach_the_process<B: Backend>(b: &B) {
    let mut c = config(b, "report", &Prog::Report);
    c.env.insert("FOO".into(), "bar baz".into());
    c.working_dir = Some("/tmp".into());
    c.user = Some((1000, 1001));
    run(b, &c, &Prog::Report).await;
    assert_eq!(wait_stopped(b, "report").await, 0);
    let log = wait_log(&c.log_path, "ARGS=").await;
    for line in ["FOO=bar baz", "CWD=/tmp", "ID=1000:1001", "ARGS=a0,a1"] {
        assert!(
            log.lines().any(|l| l == line),
            "{line:?} missing from log:\n{log}"
        );
    }
    b.rt().remove("report").await.unwrap();
}

async fn log_gets_stdout_and_stderr<B: Backend>(b: &B) {
    let mut c = config(b, "chatty", &Prog::BothStreams);
    // Characters that mean something in the file:// URI given to the shim.
    c.log_path = b.dir().join("odd dir %20 #1").join("chatty?.log");
    run(b, &c, &Prog::BothStreams).await;
    wait_stopped(b, "chatty").await;
    let log = wait_log(&c.log_path, "err").await;
    assert!(log.lines().any(|l| l == "out"), "stdout missing:\n{log}");
    assert!(log.lines().any(|l| l == "err"), "stderr missing:\n{log}");
    b.rt().remove("chatty").await.unwrap();
}

async fn limits_reach_the_cgroup<B: Backend>(b: &B) {
    let mut c = config(b, "limited", &Prog::Limits);
    c.memory_bytes = Some(64 << 20);
    c.cpu_millis = Some(500);
    run(b, &c, &Prog::Limits).await;
    wait_stopped(b, "limited").await;
    let log = wait_log(&c.log_path, "CPU=").await;
    assert!(
        log.lines().any(|l| l == "MEM=67108864"),
        "memory limit missing:\n{log}"
    );
    assert!(
        log.lines().any(|l| l == "CPU=50000"),
        "cpu quota missing:\n{log}"
    );
    b.rt().remove("limited").await.unwrap();
}

async fn list_skips_unlabelled_containers<B: Backend>(b: &B) {
    let mut c = config(b, "stranger", &Prog::Sleep);
    c.labels.clear();
    run(b, &c, &Prog::Sleep).await;
    assert_eq!(status(b, "stranger").await, None);
    b.rt().remove("stranger").await.unwrap();
    assert!(!b.snapshot_exists("stranger").await);
}

async fn import_rootfs_layout<B: Backend>(b: &B) {
    let rootfs = busybox_rootfs(b.dir());
    let archive = b.dir().join("layout.tar");
    write_rootfs_layout(&rootfs, "shoal-layout:v2", File::create(&archive).unwrap()).unwrap();
    let infos = b.rt().import(archive.clone(), None).await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].name, "docker.io/library/shoal-layout:v2");
    // Importing again finds everything in place and changes nothing.
    let again = b.rt().import(archive, None).await.unwrap();
    assert_eq!(
        (&again[0].name, &again[0].digest),
        (&infos[0].name, &infos[0].digest)
    );
    assert!(infos[0].size_bytes > 0);
    let listed = b.rt().images().await.unwrap();
    let listed = listed
        .iter()
        .find(|i| i.name == infos[0].name)
        .expect("imported image listed");
    assert_eq!(listed.digest, infos[0].digest);
    assert_eq!(listed.size_bytes, infos[0].size_bytes);

    let prog = Prog::Exit(4);
    let mut c = config(b, "from-layout", &prog);
    c.image = "shoal-layout:v2".into(); // normalized by the runtime
    run(b, &c, &prog).await;
    assert_eq!(wait_stopped(b, "from-layout").await, 4);
    b.rt().remove("from-layout").await.unwrap();
}

async fn import_docker_save<B: Backend>(b: &B) {
    let archive = docker_save(b.dir(), &["shoal-save:v1"], false);
    let infos = b.rt().import(archive, None).await.unwrap();
    assert_eq!(
        infos.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["docker.io/library/shoal-save:v1"]
    );
    assert!(b
        .rt()
        .images()
        .await
        .unwrap()
        .iter()
        .any(|i| i.name == "docker.io/library/shoal-save:v1"));

    let prog = Prog::Exit(5);
    let mut c = config(b, "from-save", &prog);
    c.image = "docker.io/library/shoal-save:v1".into();
    run(b, &c, &prog).await;
    assert_eq!(wait_stopped(b, "from-save").await, 5);
    b.rt().remove("from-save").await.unwrap();

    // Unnamed archives need a name, which then wins.
    let unnamed = docker_save(b.dir(), &[], false);
    let err = b.rt().import(unnamed.clone(), None).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidImage(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let infos = b
        .rt()
        .import(unnamed, Some("named:1".into()))
        .await
        .unwrap();
    assert_eq!(infos[0].name, "docker.io/library/named:1");
}

async fn import_gzip_layers<B: Backend>(b: &B) {
    let archive = docker_save(b.dir(), &["shoal-gzip:v1", "shoal-gzip:latest"], true);
    let mut infos = b.rt().import(archive, None).await.unwrap();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = infos.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/library/shoal-gzip:latest",
            "docker.io/library/shoal-gzip:v1"
        ]
    );
    assert_eq!(infos[0].digest, infos[1].digest);

    let prog = Prog::Exit(6);
    let mut c = config(b, "from-gzip", &prog);
    c.image = "shoal-gzip".into();
    run(b, &c, &prog).await;
    assert_eq!(wait_stopped(b, "from-gzip").await, 6);
    b.rt().remove("from-gzip").await.unwrap();
}

async fn import_rejects_garbage<B: Backend>(b: &B) {
    let junk = b.dir().join("junk.tar");
    std::fs::write(
        &junk,
        b"definitely not a tar archive, not even close to 512 bytes",
    )
    .unwrap();
    let err = b.rt().import(junk, None).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidImage(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    // The node lost its own upload: nothing the sender can fix.
    let err = b
        .rt()
        .import(b.dir().join("missing.tar"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Io { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Internal);
}

async fn unreachable_runtime_is_transient<B: Backend>(b: &B) {
    let err = b.unreachable().await;
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
}

// ---------------------------------------------------------------------------
// Images built by hand

/// A `docker save` archive of the busybox rootfs: manifest.json, a Docker
/// config, one layer tar (gzip-compressed if asked, as older Dockers did).
fn docker_save(dir: &Path, tags: &[&str], gzip: bool) -> PathBuf {
    let rootfs = busybox_rootfs(dir);
    let mut layer = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut layer);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", &rootfs).unwrap();
        builder.finish().unwrap();
    }
    let diff_id = sha256_digest(&layer);
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&layer).unwrap();
        layer = encoder.finish().unwrap();
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sh"], "Entrypoint": null, "WorkingDir": "" },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "hand" }]
    })
    .to_string();
    let config_name = format!("{}.json", &sha256_digest(config.as_bytes())[7..]);
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": tags, "Layers": ["0123/layer.tar"] }]).to_string();

    let path = dir.join(format!("save-{}.tar", NEXT.fetch_add(1, Ordering::Relaxed)));
    let mut out = tar::Builder::new(File::create(&path).unwrap());
    for (name, data) in [
        ("0123/layer.tar", layer.as_slice()),
        (config_name.as_str(), config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        out.append_data(&mut header, name, data).unwrap();
    }
    out.finish().unwrap();
    path
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------
// The fake backend

struct FakeBackend {
    rt: FakeRuntime,
    dir: tempfile::TempDir,
    image: String,
}

impl FakeBackend {
    fn new() -> Self {
        let rt = FakeRuntime::new();
        let image = rt.add_image("shoal-busybox:test");
        FakeBackend {
            rt,
            dir: tempfile::tempdir().unwrap(),
            image,
        }
    }
}

impl Backend for FakeBackend {
    type R = FakeRuntime;
    fn rt(&self) -> &FakeRuntime {
        &self.rt
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }
    fn image(&self) -> &str {
        &self.image
    }

    async fn before_exec(&self, id: &str, outcome: Option<i32>) {
        assert!(self.rt.on_exec(id, outcome), "no container {id}");
    }

    async fn after_run(&self, id: &str, prog: &Prog) {
        let process = self.rt.process(id).unwrap();
        let config = self.rt.config(id).unwrap();
        let output = match prog {
            Prog::Sleep => {
                self.rt.on_sigterm(id, None);
                return;
            }
            Prog::TrapTerm(code) => {
                self.rt.on_sigterm(id, Some(*code));
                return;
            }
            Prog::Exit(code) => {
                self.rt.exit(id, *code);
                return;
            }
            Prog::Report => {
                let env_foo = process
                    .env
                    .iter()
                    .find_map(|e| e.strip_prefix("FOO="))
                    .unwrap_or("");
                format!(
                    "FOO={env_foo}\nCWD={}\nID={}:{}\nARGS={},{}\n",
                    process.cwd, process.uid, process.gid, process.args[3], process.args[4]
                )
            }
            Prog::BothStreams => "out\nerr\n".to_string(),
            Prog::Limits => format!(
                "MEM={}\nCPU={}\n",
                config.memory_bytes.map_or("max".into(), |m| m.to_string()),
                config
                    .cpu_millis
                    .map_or("-1".into(), |c| (c * 100).to_string())
            ),
        };
        self.rt.append_log(id, &output).unwrap();
        self.rt.exit(id, 0);
    }

    async fn snapshot_exists(&self, id: &str) -> bool {
        self.rt.snapshot_exists(id)
    }

    async fn unreachable(&self) -> RuntimeError {
        self.rt.fail_next(FakeOp::List, "connection refused");
        self.rt.list().await.unwrap_err()
    }
}

// ---------------------------------------------------------------------------
// The containerd backend

struct CdBackend {
    rt: Containerd,
    image: String,
    dir: tempfile::TempDir,
    /// Last, so the runtime's connection closes before the purge.
    _purge: NamespacePurge,
}

impl CdBackend {
    async fn setup(test: &str) -> Option<Self> {
        if std::env::var("SHOAL_E2E").as_deref() != Ok("1") {
            println!("skipped {test} against containerd: set SHOAL_E2E=1 (needs root and containerd at {DEFAULT_SOCKET})");
            return None;
        }
        let (rt, purge) = test_namespace("shoal-test").await;
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("busybox.tar");
        write_rootfs_layout(
            &busybox_rootfs(dir.path()),
            "shoal-busybox:test",
            File::create(&archive).unwrap(),
        )
        .unwrap();
        let image = rt.import(archive, None).await.unwrap().remove(0).name;
        Some(CdBackend {
            rt,
            image,
            dir,
            _purge: purge,
        })
    }
}

impl Backend for CdBackend {
    type R = Containerd;
    fn rt(&self) -> &Containerd {
        &self.rt
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }
    fn image(&self) -> &str {
        &self.image
    }
    async fn after_run(&self, _id: &str, _prog: &Prog) {}

    async fn before_exec(&self, _id: &str, _outcome: Option<i32>) {}

    async fn snapshot_exists(&self, id: &str) -> bool {
        let request = StatSnapshotRequest {
            snapshotter: DEFAULT_SNAPSHOTTER.into(),
            key: id.into(),
        };
        match SnapshotsClient::new(self.rt.channel())
            .stat(with_namespace!(request, self.rt.namespace()))
            .await
        {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => panic!("stat snapshot {id}: {s}"),
        }
    }

    async fn unreachable(&self) -> RuntimeError {
        let socket = self.dir().join("no-containerd.sock");
        Containerd::connect(&socket, self.rt.namespace(), DEFAULT_SNAPSHOTTER)
            .await
            .err()
            .expect("nothing listens on the socket")
    }
}

// ---------------------------------------------------------------------------
// Instantiation

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod fake {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::FakeBackend::new()).await;
                }
            )*
        }
        mod containerd {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(backend) = super::CdBackend::setup(stringify!($name)).await {
                        super::$name(&backend).await;
                    }
                }
            )*
        }
    };
}

suite!(
    run_then_list_shows_running,
    same_id_is_refused,
    missing_image_is_refused,
    invalid_config_is_refused,
    stop_returns_exit_code,
    stop_escalates_to_sigkill,
    missing_ids_are_not_errors,
    exec_runs_a_command_in_the_container,
    remove_forgets_everything,
    process_exits_by_itself,
    env_args_cwd_user_reach_the_process,
    log_gets_stdout_and_stderr,
    limits_reach_the_cgroup,
    list_skips_unlabelled_containers,
    import_rootfs_layout,
    import_docker_save,
    import_gzip_layers,
    import_rejects_garbage,
    unreachable_runtime_is_transient,
);

/// containerd only: an image whose snapshots are gone (imported without
/// unpacking, or garbage-collected) is unpacked again by `run`.
#[tokio::test]
async fn containerd_run_unpacks_missing_snapshots() {
    let Some(b) = CdBackend::setup("containerd_run_unpacks_missing_snapshots").await else {
        return;
    };
    let mut snapshots = SnapshotsClient::new(b.rt.channel());
    let ns = b.rt.namespace();
    let request = ListSnapshotsRequest {
        snapshotter: DEFAULT_SNAPSHOTTER.into(),
        filters: vec![],
    };
    let mut stream = snapshots
        .list(with_namespace!(request, ns))
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    assert_eq!(names.len(), 1, "one-layer image, one snapshot: {names:?}");
    for name in &names {
        let request = RemoveSnapshotRequest {
            snapshotter: DEFAULT_SNAPSHOTTER.into(),
            key: name.clone(),
        };
        snapshots
            .remove(with_namespace!(request, ns))
            .await
            .unwrap();
    }

    let prog = Prog::Exit(0);
    run(&b, &config(&b, "unpacked", &prog), &prog).await;
    assert_eq!(wait_stopped(&b, "unpacked").await, 0);
    assert!(b.snapshot_exists(&names[0]).await);
    b.rt.remove("unpacked").await.unwrap();
}

/// Cost of `run`: 20 sequential runs (each removed after), against containerd.
/// `SHOAL_E2E=1 cargo test -p shoal-runtime --test conformance run_timing -- --ignored --nocapture`
#[tokio::test]
#[ignore = "timing report, run by hand"]
async fn run_timing() {
    let Some(b) = CdBackend::setup("run_timing").await else {
        return;
    };
    let runs = 20;
    let (mut run_total, mut remove_total) = (Duration::ZERO, Duration::ZERO);
    for i in 0..runs {
        let c = config(&b, &format!("timed-{i}"), &Prog::Sleep);
        let start = Instant::now();
        b.rt.run(&c).await.unwrap();
        run_total += start.elapsed();
        let start = Instant::now();
        b.rt.remove(&c.id).await.unwrap();
        remove_total += start.elapsed();
    }
    println!(
        "run: {:?} per container, remove (with SIGKILL): {:?} per container, over {runs}",
        run_total / runs,
        remove_total / runs
    );
}

/// containerd only (the fake runs no binaries): a run that fails after the
/// container was created leaves nothing behind, and the id stays usable.
#[tokio::test]
async fn containerd_failed_run_leaves_nothing() {
    let Some(b) = CdBackend::setup("containerd_failed_run_leaves_nothing").await else {
        return;
    };
    let mut c = config(&b, "broken", &Prog::Sleep);
    c.command = Some(vec!["/no/such/binary".into()]);
    let err =
        b.rt.run(&c)
            .await
            .expect_err("a missing binary cannot start");
    // runc's complaint reaches us as gRPC Unknown: nothing tells it apart
    // from containerd failing in some other way.
    assert!(matches!(err, RuntimeError::Containerd { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert_eq!(status(&b, "broken").await, None);
    assert!(!b.snapshot_exists("broken").await);
    let containers = ContainersClient::new(b.rt.channel())
        .list(with_namespace!(
            ListContainersRequest { filters: vec![] },
            b.rt.namespace()
        ))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");

    let prog = Prog::Exit(0);
    run(&b, &config(&b, "broken", &prog), &prog).await;
    assert_eq!(wait_stopped(&b, "broken").await, 0);
    b.rt.remove("broken").await.unwrap();
}

/// containerd only: the container joins the network namespace it is given
/// (or the host's), and bind mounts show the host file read-only.
#[tokio::test]
async fn containerd_network_modes_and_bind_mounts() {
    let Some(b) = CdBackend::setup("containerd_network_modes_and_bind_mounts").await else {
        return;
    };
    let inode = |path: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .ino()
    };
    let netns = format!("shoal-conformance-{}", std::process::id());
    let netns_path = format!("/var/run/netns/{netns}");
    struct DeleteNetns(String);
    impl Drop for DeleteNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let made = std::process::Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .expect("ip netns add");
    assert!(made.success(), "ip netns add {netns}");
    let _delete = DeleteNetns(netns.clone());
    let resolv = b.dir().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
    let script = "echo NS=$(stat -L -c %i /proc/self/ns/net); cat /etc/resolv.conf; \
                  echo x 2>/dev/null >/etc/resolv.conf && echo WRITABLE || echo READONLY";
    let cases = [
        (
            "given",
            NetworkMode::Path(netns_path.clone().into()),
            inode(&netns_path),
        ),
        ("host", NetworkMode::Host, inode("/proc/self/ns/net")),
    ];
    for (id, network, expected) in cases {
        let mut c = config(&b, id, &Prog::Exit(0));
        c.command = Some(strings(&["sh", "-c", script]));
        c.network = network;
        c.mounts = vec![BindMount {
            source: resolv.clone(),
            destination: "/etc/resolv.conf".into(),
            read_only: true,
        }];
        b.rt.run(&c)
            .await
            .unwrap_or_else(|e| panic!("run {id}: {e}"));
        assert_eq!(wait_stopped(&b, id).await, 0);
        let log = wait_log(&c.log_path, "ONLY").await;
        assert!(log.contains(&format!("NS={expected}\n")), "{id}: {log}");
        assert!(log.contains("nameserver 192.0.2.53"), "{id}: {log}");
        assert!(log.contains("READONLY"), "{id}: {log}");
        b.rt.remove(id).await.unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "nameserver 192.0.2.53\n"
    );
}

/// containerd only: a task as every task runs, seen from inside. The
/// expectations come from the rules: no new privileges, a seccomp filter,
/// Docker's default capabilities without NET_RAW (bit 13), no user
/// namespace however the kernel is set, the host's memory and keys hidden,
/// /proc/sys read-only, and a network namespace of its own holding only a
/// loopback that is up and answers. A capability added opens its calls.
#[tokio::test]
async fn containerd_default_task_is_hardened() {
    let Some(b) = CdBackend::setup("containerd_default_task_is_hardened").await else {
        return;
    };
    let script = "grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd|CapPrm):' /proc/self/status; \
                  echo USERNS=$(unshare -U true 2>&1); \
                  echo NETNS=$(unshare -n true 2>&1); \
                  mkdir -p /m; echo MOUNT=$(mount -t tmpfs none /m 2>&1 && echo mounted); \
                  echo TIMERS=$(wc -c </proc/timer_list); \
                  echo FIRMWARE=$(ls /sys/firmware | wc -l); \
                  echo 1 2>/dev/null >/proc/sys/kernel/ns_last_pid; echo SYSCTL=$?; \
                  echo UP=$(for l in /sys/class/net/*; do [ ${l##*/} = lo ] || cat $l/operstate; done | grep -c '^up$'); \
                  echo ROUTES=$(tail -n +2 /proc/net/route | wc -l); \
                  echo LO=$(cat /sys/class/net/lo/operstate); \
                  echo PINGERS=$(cat /proc/sys/net/ipv4/ping_group_range); \
                  ping -c 1 -W 2 127.0.0.1 >/dev/null 2>&1; echo RAW=$?; \
                  mkdir /www && echo served >/www/index.html && httpd -p 127.0.0.1:8080 -h /www && \
                  echo LOOPBACK=$(wget -q -O - http://127.0.0.1:8080/); \
                  echo ONLY";
    let mut c = config(&b, "hardened", &Prog::Exit(0));
    c.command = Some(strings(&["sh", "-c", script]));
    b.rt.run(&c).await.expect("run hardened");
    assert_eq!(wait_stopped(&b, "hardened").await, 0);
    let log = wait_log(&c.log_path, "ONLY").await;
    // Docker's default set is a80425fb; without NET_RAW (1 << 13) it is:
    let caps = "00000000a80405fb";
    // EPERM, as the filter (or the missing capability) says, not ENOSYS.
    let refused = "Operation not permitted";
    for expected in [
        "NoNewPrivs:\t1".to_string(),
        "Seccomp:\t2".to_string(),
        format!("CapEff:\t{caps}"),
        format!("CapPrm:\t{caps}"),
        format!("CapBnd:\t{caps}"),
        format!("USERNS=unshare: unshare(0x10000000): {refused}"),
        format!("NETNS=unshare: unshare(0x40000000): {refused}"),
        // busybox's words for EPERM from mount(2).
        "MOUNT=mount: permission denied (are you root?)".to_string(),
        "TIMERS=0".into(),
        "FIRMWARE=0".into(),
        "SYSCTL=1".into(),
        // Only the loopback is up, and no route leads anywhere.
        "UP=0".into(),
        "ROUTES=0".into(),
        "LO=unknown".into(),
        // Every group may open ICMP datagram sockets (ping without raw
        // sockets); a raw socket, which busybox's ping asks for, is refused.
        "PINGERS=0 2147483647".into(),
        "RAW=1".into(),
        "LOOPBACK=served".into(),
    ] {
        assert!(log.contains(&expected), "no {expected:?} in:\n{log}");
    }
    b.rt.remove("hardened").await.unwrap();

    // A capability added lets through the calls the kernel checks it for:
    // with SYS_ADMIN the container mounts in its own mount namespace.
    let mut c = config(&b, "sysadmin", &Prog::Exit(0));
    c.command = Some(strings(&[
        "sh",
        "-c",
        "mkdir -p /m && mount -t tmpfs none /m && echo MOUNTED; echo ONLY",
    ]));
    let mut names: Vec<String> = [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ]
    .map(String::from)
    .to_vec();
    names.push("SYS_ADMIN".into());
    c.privileges.capabilities = Some(names);
    b.rt.run(&c).await.expect("run sysadmin");
    assert_eq!(wait_stopped(&b, "sysadmin").await, 0);
    let log = wait_log(&c.log_path, "ONLY").await;
    assert!(log.contains("MOUNTED"), "{log}");
    b.rt.remove("sysadmin").await.unwrap();
}
