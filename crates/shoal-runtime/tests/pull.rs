//! Registry pulls into containerd against a real registry: Debian's
//! `docker-registry` (distribution) on loopback, images pushed into it with
//! `skopeo`. Faults come from an HTTP proxy between shoal and the registry
//! that cuts or bends blob responses and counts every byte it serves.
//! Needs `SHOAL_E2E=1`, root, containerd, `docker-registry` and `skopeo`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::InfoRequest;
use containerd_client::tonic::{Code, Request};
use containerd_client::with_namespace;
use futures::StreamExt;
use shoal_runtime::containerd::Containerd;
use shoal_runtime::image::{write_layers_layout, write_rootfs_layout};
use shoal_runtime::registry::RegistryAccess;
use shoal_runtime::{ContainerConfig, ContainerStatus, ErrorKind, ImageStore, Runtime, LABEL_TASK};

mod support;
use support::{busybox_rootfs, test_namespace, NamespacePurge};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A `docker-registry` of the test's own, on a free loopback port, with its
/// storage in a temporary directory; stopped (by its pid) when dropped.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let registry = Registry {
            child,
            port,
            _dir: dir,
        };
        let url = format!("http://127.0.0.1:{port}/v2/");
        for _ in 0..100 {
            if let Ok(r) = http().get(&url).send().await {
                if r.status().is_success() {
                    return registry;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("docker-registry did not answer on {url}");
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    shoal_runtime::registry::install_ring();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A busybox image unique to this test (so no other namespace of the shared
/// content store holds its layer), pushed with skopeo to `host/repo:tag`;
/// returns the manifest digest skopeo pushed.
fn push_busybox(dir: &Path, host: &str, repo: &str, tag: &str) -> String {
    push_busybox_with(dir, host, repo, tag, &[])
}

/// Pushed with skopeo's `extra` arguments (e.g. the layers' compression).
fn push_busybox_with(dir: &Path, host: &str, repo: &str, tag: &str, extra: &[&str]) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let rootfs = busybox_rootfs(dir);
    std::fs::write(
        rootfs.join("etc/shoal-test"),
        format!("{}-{n}-{repo}", std::process::id()),
    )
    .unwrap();
    let archive = dir.join(format!("push-{n}.tar"));
    write_rootfs_layout(
        &rootfs,
        &format!("{repo}:{tag}"),
        File::create(&archive).unwrap(),
    )
    .unwrap();
    let digest_file = dir.join(format!("push-{n}.digest"));
    let output = Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
        .args(extra)
        .arg("--digestfile")
        .arg(&digest_file)
        .arg(format!("oci-archive:{}:{tag}", archive.display()))
        .arg(format!("docker://{host}/{repo}:{tag}"))
        .output()
        .expect("skopeo (Debian package skopeo) must be installed");
    assert!(
        output.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(digest_file)
        .unwrap()
        .trim()
        .to_string()
}

async fn setup(test: &str) -> Option<(Containerd, NamespacePurge, tempfile::TempDir)> {
    if std::env::var("SHOAL_E2E").as_deref() != Ok("1") {
        println!(
            "skipped {test}: set SHOAL_E2E=1 (needs root, containerd, docker-registry, skopeo)"
        );
        return None;
    }
    let (rt, purge) = test_namespace("shoal-pull").await;
    Some((rt, purge, tempfile::tempdir().unwrap()))
}

/// Runs `cat /etc/shoal-test` from `image` and returns what it printed.
async fn run_cat(rt: &Containerd, dir: &Path, image: &str) -> String {
    let id = format!("pull-run-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let log = dir.join(format!("{id}.log"));
    let config = ContainerConfig {
        command: Some(vec!["cat".into(), "/etc/shoal-test".into()]),
        labels: BTreeMap::from([(LABEL_TASK.to_string(), id.clone())]),
        ..ContainerConfig::new(id.clone(), image, log.clone())
    };
    rt.run(&config).await.unwrap();
    for _ in 0..300 {
        let list = rt.list().await.unwrap();
        if let Some(c) = list.iter().find(|c| c.id == id) {
            if let ContainerStatus::Stopped { exit_code } = c.status {
                assert_eq!(
                    exit_code,
                    0,
                    "{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                rt.remove(&id).await.unwrap();
                return std::fs::read_to_string(&log).unwrap_or_default();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("container {id} did not exit");
}

async fn blob_stored(rt: &Containerd, digest: &str) -> bool {
    let request = InfoRequest {
        digest: digest.to_string(),
    };
    match ContentClient::new(rt.channel())
        .info(with_namespace!(request, rt.namespace()))
        .await
    {
        Ok(_) => true,
        Err(s) if s.code() == Code::NotFound => false,
        Err(s) => panic!("content info {digest}: {s}"),
    }
}

#[tokio::test]
async fn pulls_by_tag_and_digest_and_runs_the_image() {
    let Some((rt, _purge, dir)) = setup("pulls_by_tag_and_digest_and_runs_the_image").await else {
        return;
    };
    let registry = Registry::start().await;
    let digest = push_busybox(dir.path(), &registry.host(), "test/busybox", "v1");
    let access = RegistryAccess::default();

    let reference = format!("{}/test/busybox:v1", registry.host());
    // Watched while it runs: how far it is, never past its total, never
    // back; gone once it ended.
    let pull = rt.pull(&reference, &access);
    tokio::pin!(pull);
    let mut seen = Vec::new();
    let info = loop {
        tokio::select! {
            info = &mut pull => break info.unwrap(),
            () = tokio::time::sleep(std::time::Duration::from_millis(1)) => {
                seen.extend(rt.pull_progress(&reference));
            }
        }
    };
    assert!(!seen.is_empty(), "the pull was never seen under way");
    for pair in seen.windows(2) {
        assert!(pair[0].done_bytes <= pair[1].done_bytes, "{pair:?}");
    }
    for progress in &seen {
        assert!(progress.total_bytes > 100_000, "{progress:?}");
        assert!(progress.done_bytes <= progress.total_bytes, "{progress:?}");
        assert_eq!(progress.layers.len(), 1, "{progress:?}");
    }
    assert!(rt.pull_progress(&reference).is_none());
    assert_eq!(info.name, reference);
    assert_eq!(
        info.digest, digest,
        "the image is named at the digest the registry holds"
    );
    assert!(info.size_bytes > 100_000, "{info:?}");
    let listed = rt.images().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.name == reference && i.digest == digest),
        "{listed:?}"
    );
    let printed = run_cat(&rt, dir.path(), &reference).await;
    assert!(printed.contains("test/busybox"), "{printed:?}");

    // By digest: named by the digest reference, no layer fetched again.
    let by_digest = format!("{}/test/busybox@{digest}", registry.host());
    let info = rt.pull(&by_digest, &access).await.unwrap();
    assert_eq!(info.digest, digest);
    assert!(run_cat(&rt, dir.path(), &by_digest)
        .await
        .contains("test/busybox"));

    // A tag the registry does not have, a repository it does not have.
    for missing in ["test/busybox:nope", "test/nothing:v1"] {
        let err = rt
            .pull(&format!("{}/{missing}", registry.host()), &access)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ImageMissing, "{err}");
        assert!(err.to_string().contains(missing), "{err}");
    }
    // Nothing listens: may work later.
    let err = rt
        .pull(
            &format!("127.0.0.1:{}/test/busybox:v1", free_port()),
            &access,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
}

/// What the proxy does to blob responses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Ends the first response of every blob after this many bytes.
    CutFirstAfter(usize),
    /// Flips one bit in the middle of every blob larger than 4 KiB.
    Bend,
    /// Sends this many bytes of every blob larger than 4 KiB, then
    /// nothing, holding the connection open.
    StallAfter(usize),
}

#[derive(Default)]
struct Served {
    /// (blob digest, Range header) of every blob request.
    requests: Vec<(String, Option<String>)>,
    /// Bytes of each blob that went out.
    bytes: BTreeMap<String, usize>,
}

struct Proxy {
    upstream: String,
    fault: Fault,
    served: Mutex<Served>,
}

async fn proxy(State(proxy): State<Arc<Proxy>>, request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_string();
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut forward = http().request(
        request.method().clone(),
        format!("http://{}{path}{query}", proxy.upstream),
    );
    for (name, value) in request.headers() {
        if name != "host" {
            forward = forward.header(name, value);
        }
    }
    let upstream = forward.send().await.unwrap();
    let mut response = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        response = response.header(name, value);
    }
    let blob = path
        .split_once("/blobs/")
        .map(|(_, digest)| digest.to_string())
        .filter(|d| d.starts_with("sha256:"));
    let Some(digest) = blob else {
        return response
            .body(Body::from(upstream.bytes().await.unwrap()))
            .unwrap();
    };
    let first = {
        let mut served = proxy.served.lock().unwrap();
        let range = request
            .headers()
            .get("range")
            .map(|r| r.to_str().unwrap().to_string());
        let first = !served.requests.iter().any(|(d, _)| *d == digest);
        served.requests.push((digest.clone(), range));
        first
    };
    let cut = match proxy.fault {
        Fault::CutFirstAfter(n) if first => Some(n),
        _ => None,
    };
    let size: usize = upstream
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    if let Fault::StallAfter(n) = proxy.fault {
        if size > 4096 {
            let bytes = upstream.bytes().await.unwrap();
            let head = bytes.slice(..n.min(bytes.len()));
            let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
                .chain(futures::stream::pending());
            return response.body(Body::from_stream(body)).unwrap();
        }
    }
    let bend_at = (proxy.fault == Fault::Bend && size > 4096).then_some(size / 2);
    let state = proxy.clone();
    let mut sent = 0usize;
    let body = upstream.bytes_stream().map(move |chunk| {
        let mut chunk = chunk.map_err(std::io::Error::other)?.to_vec();
        if let Some(at) = bend_at {
            if (sent..sent + chunk.len()).contains(&at) {
                chunk[at - sent] ^= 0x01;
            }
        }
        if let Some(limit) = cut {
            if sent + chunk.len() > limit {
                let keep = limit.saturating_sub(sent);
                chunk.truncate(keep);
                *state
                    .served
                    .lock()
                    .unwrap()
                    .bytes
                    .entry(digest.clone())
                    .or_default() += keep;
                sent += keep;
                return if keep > 0 {
                    Ok(bytes::Bytes::from(chunk))
                } else {
                    Err(std::io::Error::other("cut by the test proxy"))
                };
            }
        }
        sent += chunk.len();
        *state
            .served
            .lock()
            .unwrap()
            .bytes
            .entry(digest.clone())
            .or_default() += chunk.len();
        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk))
    });
    // After a cut chunk, the next poll fails the body, which drops the
    // connection mid-response.
    response.body(Body::from_stream(body)).unwrap()
}

async fn start_proxy(upstream: String, fault: Fault) -> (String, Arc<Proxy>) {
    let state = Arc::new(Proxy {
        upstream,
        fault,
        served: Mutex::new(Served::default()),
    });
    let app = axum::Router::new()
        .fallback(proxy)
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (host, state)
}

#[tokio::test]
async fn a_cut_download_resumes_without_fetching_a_byte_twice() {
    let Some((rt, _purge, dir)) =
        setup("a_cut_download_resumes_without_fetching_a_byte_twice").await
    else {
        return;
    };
    let registry = Registry::start().await;
    push_busybox(dir.path(), &registry.host(), "test/resume", "v1");
    const CUT: usize = 64 << 10;
    let (host, proxy) = start_proxy(registry.host(), Fault::CutFirstAfter(CUT)).await;

    let reference = format!("{host}/test/resume:v1");
    let info = rt
        .pull(&reference, &RegistryAccess::default())
        .await
        .unwrap();
    assert!(run_cat(&rt, dir.path(), &reference)
        .await
        .contains("test/resume"));

    let served = proxy.served.lock().unwrap();
    let layer = served
        .bytes
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(d, _)| d.clone())
        .unwrap();
    let layer_requests: Vec<_> = served
        .requests
        .iter()
        .filter(|(d, _)| *d == layer)
        .collect();
    assert_eq!(
        layer_requests.len(),
        2,
        "one cut request, one resumed: {layer_requests:?}"
    );
    assert_eq!(layer_requests[0].1, None);
    assert_eq!(
        layer_requests[1].1.as_deref(),
        Some(format!("bytes={CUT}-").as_str()),
        "the second request asks for the rest"
    );
    // Every byte of the layer went out exactly once: the image's size is
    // the config plus the layer, and the proxy served that much for it.
    let config_bytes: usize = served
        .bytes
        .iter()
        .filter(|(d, _)| **d != layer)
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(
        served.bytes[&layer] + config_bytes,
        info.size_bytes as usize,
        "bytes served: {:?}",
        served.bytes
    );
}

/// The ids of the leases in the test's namespace.
async fn leases(rt: &Containerd) -> Vec<String> {
    let request = containerd_client::services::v1::ListRequest::default();
    LeasesClient::new(rt.channel())
        .list(with_namespace!(request, rt.namespace()))
        .await
        .unwrap()
        .into_inner()
        .leases
        .into_iter()
        .map(|lease| lease.id)
        .collect()
}

#[tokio::test]
async fn a_pull_given_up_by_its_caller_leaves_no_lease() {
    let Some((rt, _purge, dir)) = setup("a_pull_given_up_by_its_caller_leaves_no_lease").await
    else {
        return;
    };
    let registry = Registry::start().await;
    push_busybox(dir.path(), &registry.host(), "test/abandoned", "v1");
    let (host, _proxy) = start_proxy(registry.host(), Fault::StallAfter(16 << 10)).await;
    let reference = format!("{host}/test/abandoned:v1");

    let access = RegistryAccess::default();
    let mut pull = Box::pin(rt.pull(&reference, &access));
    // The pull stalls in its layer, holding its lease.
    let mut held = Vec::new();
    for _ in 0..100 {
        tokio::select! {
            result = &mut pull => panic!("the stalled pull ended: {result:?}"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        held = leases(&rt).await;
        if !held.is_empty() {
            break;
        }
    }
    assert_eq!(held.len(), 1, "the pull holds one lease: {held:?}");
    // Its caller gives up: the future is dropped mid-layer.
    drop(pull);
    let mut left = held.clone();
    for _ in 0..50 {
        left = leases(&rt).await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "leases left behind: {left:?}");
}

#[tokio::test]
async fn layers_unpack_in_their_order_while_later_ones_download() {
    let Some((rt, _purge, dir)) =
        setup("layers_unpack_in_their_order_while_later_ones_download").await
    else {
        return;
    };
    let registry = Registry::start().await;
    // Busybox, then three layers that each write the file `cat` prints:
    // the top one must win.
    let base = busybox_rootfs(dir.path());
    let mut uppers = Vec::new();
    for n in 1..=3 {
        let upper = dir.path().join(format!("upper-{n}"));
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/shoal-test"), format!("layer {n}")).unwrap();
        // Some bulk, so that layers take turns downloading.
        let bulk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * n) as u8).collect();
        std::fs::write(upper.join(format!("bulk-{n}")), bulk).unwrap();
        uppers.push(upper);
    }
    let mut layers = vec![base.as_path()];
    layers.extend(uppers.iter().map(|p| p.as_path()));
    let archive = dir.path().join("layers.tar");
    write_layers_layout(&layers, "test/layers:v1", File::create(&archive).unwrap()).unwrap();
    let host = registry.host();
    let output = Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}:v1", archive.display()))
        .arg(format!("docker://{host}/test/layers:v1"))
        .output()
        .expect("skopeo");
    assert!(output.status.success(), "{output:?}");
    let reference = format!("{host}/test/layers:v1");
    rt.pull(&reference, &RegistryAccess::default())
        .await
        .unwrap();
    let printed = run_cat(&rt, dir.path(), &reference).await;
    assert_eq!(printed.trim(), "layer 3");
}

#[tokio::test]
async fn a_zstd_image_pulls_and_runs() {
    let Some((rt, _purge, dir)) = setup("a_zstd_image_pulls_and_runs").await else {
        return;
    };
    let registry = Registry::start().await;
    let host = registry.host();
    push_busybox_with(
        dir.path(),
        &host,
        "test/zstd",
        "v1",
        &["--dest-compress-format", "zstd"],
    );
    let reference = format!("{host}/test/zstd:v1");
    // The registry holds its layer as zstd.
    let manifest = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo inspect");
    let manifest = String::from_utf8_lossy(&manifest.stdout);
    assert!(manifest.contains("tar+zstd"), "{manifest}");
    rt.pull(&reference, &RegistryAccess::default())
        .await
        .unwrap();
    let printed = run_cat(&rt, dir.path(), &reference).await;
    assert!(printed.contains("test/zstd"), "{printed:?}");
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_never_stored() {
    let Some((rt, _purge, dir)) =
        setup("a_blob_that_does_not_match_its_digest_is_never_stored").await
    else {
        return;
    };
    let registry = Registry::start().await;
    push_busybox(dir.path(), &registry.host(), "test/bent", "v1");
    let (host, proxy) = start_proxy(registry.host(), Fault::Bend).await;

    let reference = format!("{host}/test/bent:v1");
    let err = rt
        .pull(&reference, &RegistryAccess::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("not stored"), "{err}");

    let layers: Vec<String> = {
        let served = proxy.served.lock().unwrap();
        served
            .bytes
            .iter()
            .filter(|(_, n)| **n > 4096)
            .map(|(d, _)| d.clone())
            .collect()
    };
    assert!(!layers.is_empty());
    for layer in &layers {
        assert!(
            !blob_stored(&rt, layer).await,
            "bent blob {layer} was stored"
        );
    }
    let images = rt.images().await.unwrap();
    assert!(images.iter().all(|i| i.name != reference), "{images:?}");
    // The same image straight from the registry is fine.
    let direct = format!("{}/test/bent:v1", registry.host());
    rt.pull(&direct, &RegistryAccess::default()).await.unwrap();
    assert!(run_cat(&rt, dir.path(), &direct)
        .await
        .contains("test/bent"));
}
