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
    /// TLS with basic auth: the CA file (the registry's own self-signed
    /// certificate) and the password of user `docker`.
    pub tls: Option<(std::path::PathBuf, String)>,
    /// Bearer-token auth: the token server, which knows user `docker`.
    pub tokens: Option<TokenServer>,
}

impl Registry {
    /// Plain HTTP, anonymous.
    pub fn start() -> Registry {
        Self::start_with(false)
    }

    /// HTTPS with a certificate made here (`openssl`) and basic auth: the
    /// registry makes its htpasswd with user `docker` and a password it logs.
    pub fn start_tls() -> Registry {
        Self::start_with(true)
    }

    /// Plain HTTP with the Docker token flow: the registry answers 401
    /// naming a token server of the test's own (`realm`), which hands
    /// user `docker` (password [`TokenServer::password`]) a JWT signed
    /// with a key whose certificate the registry trusts.
    pub fn start_token() -> Registry {
        let tokens = TokenServer::start();
        let mut registry = Self::start_configured(false, Some(&tokens));
        registry.tokens = Some(tokens);
        registry
    }

    fn start_with(tls: bool) -> Registry {
        Self::start_configured(tls, None)
    }

    fn start_configured(tls: bool, tokens: Option<&TokenServer>) -> Registry {
        let dir = tempfile::tempdir().expect("registry dir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let ca = dir.path().join("ca.crt");
        if tls {
            // A CA of the test's own, and the registry's certificate from it.
            let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
            std::fs::write(
                path("leaf.ext"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )
            .expect("extensions");
            let openssl = |args: &[&str]| {
                let output = Command::new("openssl")
                    .args(args)
                    .output()
                    .expect("openssl must be installed");
                assert!(output.status.success(), "openssl {args:?}: {output:?}");
            };
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=shoal test CA",
                "-keyout",
                &path("ca.key"),
                "-out",
                &path("ca.crt"),
            ]);
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &path("registry.key"),
                "-out",
                &path("registry.csr"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &path("registry.csr"),
                "-CA",
                &path("ca.crt"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &path("leaf.ext"),
                "-out",
                &path("registry.crt"),
            ]);
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                path("registry.crt"),
                path("registry.key"),
                path("htpasswd")
            ));
        }
        if let Some(tokens) = tokens {
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                tokens.port,
                tokens.cert.display()
            ));
        }
        std::fs::write(&config, yaml).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("registry.log")).expect("log"))
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let mut registry = Registry {
            child,
            port,
            dir,
            tls: None,
            tokens: None,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "docker-registry did not listen on {port}: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if tls {
            let password = registry
                .log()
                .split_whitespace()
                .find_map(|word| word.strip_prefix("password="))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("no provisioned password in: {}", registry.log()));
            registry.tls = Some((ca, password));
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the registry (SIGKILL, mid-answer if it is answering).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a killed registry again, on the same port and storage.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("log");
        self.child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "docker-registry did not listen again on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
        let mut skopeo = Command::new("skopeo");
        skopeo.args(["copy", "--insecure-policy"]);
        if let Some(tokens) = &self.tokens {
            skopeo
                .arg("--dest-tls-verify=false")
                .arg("--dest-creds")
                .arg(format!("docker:{}", tokens.password));
        }
        match &self.tls {
            _ if self.tokens.is_some() => {}
            Some((ca, password)) => {
                let certs = self.dir.path().join("certs.d");
                std::fs::create_dir_all(&certs).expect("certs dir");
                std::fs::copy(ca, certs.join("ca.crt")).expect("ca");
                skopeo
                    .arg("--dest-cert-dir")
                    .arg(&certs)
                    .arg("--dest-creds")
                    .arg(format!("docker:{password}"));
            }
            None => {
                skopeo.arg("--dest-tls-verify=false");
            }
        }
        let output = skopeo
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

    /// Pushes an image index `HOST/repo:tag` with one manifest per
    /// `(architecture, rootfs)` (architectures as OCI names them: `amd64`,
    /// `arm64`, ...), each of its own one-layer root filesystem (`skopeo
    /// copy --all` from an OCI layout directory); returns the index digest
    /// the registry holds. Plain HTTP registries only.
    pub fn push_index(&self, repo: &str, tag: &str, images: &[(&str, &Path)]) -> String {
        assert!(
            self.tls.is_none() && self.tokens.is_none(),
            "plain HTTP only"
        );
        use serde_json::{json, Value};
        use shoal_runtime::image::sha256_digest;
        const INDEX: &str = "application/vnd.oci.image.index.v1+json";
        const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let layout = self.dir.path().join(format!("layout-{n}"));
        std::fs::create_dir_all(&layout).expect("layout dir");
        let blob = |digest: &str| layout.join("blobs").join(digest.replacen(':', "/", 1));
        let read = |digest: &str| -> Value {
            serde_json::from_slice(&std::fs::read(blob(digest)).expect("blob")).expect("JSON blob")
        };
        let write = |bytes: &[u8]| -> (String, usize) {
            let digest = sha256_digest(bytes);
            std::fs::write(blob(&digest), bytes).expect("write blob");
            (digest, bytes.len())
        };
        let mut entries = Vec::new();
        for (index, (arch, rootfs)) in images.iter().enumerate() {
            // Each image's layout is unpacked over the last: blobs add up,
            // index.json names the newest.
            let archive = self.dir.path().join(format!("push-{n}-{index}.tar"));
            shoal_runtime::image::write_rootfs_layout(
                rootfs,
                &format!("{repo}:{tag}"),
                File::create(&archive).expect("archive"),
            )
            .expect("OCI layout of the rootfs");
            let status = Command::new("tar")
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&layout)
                .status()
                .expect("tar");
            assert!(status.success(), "unpacking the layout");
            let top: Value = serde_json::from_slice(
                &std::fs::read(layout.join("index.json")).expect("index.json"),
            )
            .expect("index.json is JSON");
            let manifest = read(
                top["manifests"][0]["digest"]
                    .as_str()
                    .expect("manifest digest"),
            );
            let mut config = read(
                manifest["config"]["digest"]
                    .as_str()
                    .expect("config digest"),
            );
            config["architecture"] = json!(arch);
            let (config_digest, config_size) = write(&serde_json::to_vec(&config).expect("config"));
            let mut manifest = manifest.clone();
            manifest["config"]["digest"] = json!(config_digest);
            manifest["config"]["size"] = json!(config_size);
            let (digest, size) = write(&serde_json::to_vec(&manifest).expect("manifest"));
            entries.push(json!({
                "mediaType": MANIFEST, "digest": digest, "size": size,
                "platform": {"os": "linux", "architecture": arch},
            }));
        }
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries});
        let (index_digest, size) = write(&serde_json::to_vec(&index).expect("index"));
        let top = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": INDEX, "digest": index_digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }]});
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&top).expect("index.json"),
        )
        .expect("write index.json");
        let digest_file = self.dir.path().join(format!("push-{n}.digest"));
        let output = Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--insecure-policy",
                "--dest-tls-verify=false",
            ])
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .output()
            .expect("skopeo (Debian package skopeo) must be installed");
        assert!(
            output.status.success(),
            "skopeo copy --all failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // skopeo writes the index anew (its own JSON), so the registry's
        // digest is the one to pin.
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

/// A TCP proxy in front of a registry that lets its answers through at
/// `bytes_per_s`, so that pulls that start together are still under way
/// together. Stops accepting when dropped.
pub struct Throttle {
    pub port: u16,
    /// The clients' connections, to cut them.
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    /// Bytes let through to clients so far, headers included.
    pub served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Throttle {
    pub fn start(upstream: u16, bytes_per_s: u64) -> Throttle {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the throttle");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stopped, counted, open) = (stop.clone(), served.clone(), connections.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                if let Ok(kept) = client.try_clone() {
                    let mut open = open.lock().expect("connections");
                    open.retain(|c: &TcpStream| c.peer_addr().is_ok());
                    open.push(kept);
                }
                // Requests go up unhindered.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_r, &mut server_w);
                    let _ = server_w.shutdown(std::net::Shutdown::Write);
                });
                // Answers come down at the rate, 16 KiB at a time.
                let (mut server_r, mut client_w) = (server, client);
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    let pause = Duration::from_secs_f64(buf.len() as f64 / bytes_per_s as f64);
                    loop {
                        match server_r.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if client_w.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                counted.fetch_add(n as u64, Ordering::Relaxed);
                                std::thread::sleep(pause.mul_f64(n as f64 / buf.len() as f64));
                            }
                        }
                    }
                    let _ = client_w.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Throttle {
            port,
            connections,
            served,
            stop,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts every client connection open now, as a registry that dies
    /// does (what it had sent into socket buffers is lost with it).
    pub fn cut(&self) {
        for connection in self.connections.lock().expect("connections").drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const TOKEN_SERVICE: &str = "shoal-test";
const TOKEN_ISSUER: &str = "shoal-test-issuer";

/// A token server for the Docker token flow: `GET /token?scope=…&service=…`
/// with user `docker`'s basic credentials answers a JWT (RS256, its
/// certificate in the `x5c` header) granting the actions asked; wrong
/// credentials get 401, none get a token that grants nothing. Stops
/// accepting when dropped.
pub struct TokenServer {
    pub port: u16,
    pub password: String,
    /// The certificate the registry trusts for tokens.
    cert: std::path::PathBuf,
    /// Scopes of the tokens handed out, in order.
    pub granted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    fn start() -> TokenServer {
        use base64::Engine as _;
        let dir = tempfile::tempdir().expect("token dir");
        let key = dir.path().join("token.key");
        let cert = dir.path().join("token.crt");
        let output = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=shoal test token issuer"])
            .args(["-addext", "keyUsage=digitalSignature,keyCertSign"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl must be installed");
        assert!(output.status.success(), "openssl: {output:?}");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(der.status.success(), "openssl x509: {der:?}");
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let password = format!("token-pass-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let granted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stopped, log, secret, signing_key) =
            (stop.clone(), granted.clone(), password.clone(), key.clone());
        std::thread::spawn(move || {
            let mut serial = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                serial += 1;
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                answer_token(stream, &secret, &x5c, &signing_key, serial, &log);
            }
        });
        TokenServer {
            port,
            password,
            cert,
            granted,
            stop,
            _dir: dir,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request and answers it (one request per connection).
fn answer_token(
    mut stream: std::net::TcpStream,
    password: &str,
    x5c: &str,
    key: &Path,
    serial: u64,
    granted: &std::sync::Mutex<Vec<String>>,
) {
    use base64::Engine as _;
    use std::io::{BufRead, BufReader, Write};
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("scope="))
        .map(|scope| {
            scope
                .replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",")
        })
        .collect();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("docker:{password}"))
    );
    let (status, body) = match authorization.as_deref() {
        Some(given) if given != expected => (
            "401 Unauthorized",
            r#"{"details":"wrong credentials"}"#.to_string(),
        ),
        given => {
            // Anonymous: a token that grants nothing.
            let access: Vec<serde_json::Value> = if given.is_some() {
                scopes
                    .iter()
                    .filter_map(|scope| {
                        let mut parts = scope.splitn(3, ':');
                        let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            granted.lock().expect("granted").push(format!(
                "{}:{}",
                given.is_some(),
                scopes.join(" ")
            ));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs();
            let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
            let claims = serde_json::json!({
                "iss": TOKEN_ISSUER, "sub": if given.is_some() { "docker" } else { "" },
                "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                "jti": format!("t{serial}"), "access": access,
            });
            let signing_input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let mut openssl = Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(key)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("openssl");
            openssl
                .stdin
                .take()
                .expect("stdin")
                .write_all(signing_input.as_bytes())
                .expect("sign input");
            let signed = openssl.wait_with_output().expect("openssl dgst");
            let token = format!("{signing_input}.{}", b64(&signed.stdout));
            (
                "200 OK",
                serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                    .to_string(),
            )
        }
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
