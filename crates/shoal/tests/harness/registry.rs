//! A real registry for end-to-end tests: Debian's `docker-registry`
//! (distribution) on a loopback port of the test's own, with images pushed
//! into it by `skopeo`, stopped by its pid when dropped.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{free_port, COUNTER};

pub struct Registry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("registry dir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("registry.log")).expect("log"))
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let registry = Registry { child, port, dir };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "docker-registry did not listen on {port}: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's own log (its access log lines included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes `rootfs` as a one-layer image `HOST/repo:tag`; returns the
    /// manifest digest the registry holds.
    pub fn push_rootfs(&self, rootfs: &Path, repo: &str, tag: &str) -> String {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let archive = self.dir.path().join(format!("push-{n}.tar"));
        shoal_runtime::image::write_rootfs_layout(
            rootfs,
            &format!("{repo}:{tag}"),
            File::create(&archive).expect("archive"),
        )
        .expect("OCI layout of the rootfs");
        let digest_file = self.dir.path().join(format!("push-{n}.digest"));
        let output = Command::new("skopeo")
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci-archive:{}:{tag}", archive.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .output()
            .expect("skopeo (Debian package skopeo) must be installed");
        assert!(
            output.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_to_string(digest_file)
            .expect("digest file")
            .trim()
            .to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
