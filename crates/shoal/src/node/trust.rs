//! The node's place in the cluster's PKI: its key and certificate in
//! `DATA_DIR/pki`, how it gets them (forming a cluster, or joining with a
//! token that pins the CA), renewing them before they expire, and signing
//! for others when it holds the data key.
//!
//! Files (all mode 0600, in a 0700 directory):
//! - `roots.pem`: the roots the node trusts;
//! - `roots.generation`: the generation of the CA record they came from,
//!   once the node followed one (roots never go back to an older one);
//! - `node.pem`, `node.key`: its certificate chain and private key;
//! - `data.key`: the data key the CA's key (and later secrets) are sealed
//!   with; voter-capable nodes only.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use shoal_pki::ca::Ca;
use shoal_pki::identity::{Identity, Role};
use shoal_pki::seal::DataKey;
use shoal_pki::tls::Credentials;
use shoal_pki::token::ApiToken;
use shoal_state::security::{ApiRole, ApiTokenRecord, CaRecord, NodeRole};
use zeroize::Zeroizing;

/// The id the data key seals under (one data key per cluster today).
pub const DATA_KEY_ID: u32 = 1;
/// Additional data the CA's key is sealed with.
pub const CA_KEY_AAD: &[u8] = b"shoal ca key";

/// `ca`'s key sealed with the data key, as a CA record keeps it (hex);
/// [`Trust::signer`] opens it.
pub fn seal_ca_key(data_key: &DataKey, ca: &Ca) -> anyhow::Result<String> {
    let sealed = shoal_pki::seal::seal(data_key, DATA_KEY_ID, CA_KEY_AAD, ca.key_pem().as_bytes())?;
    Ok(hex::encode(sealed))
}

pub struct Trust {
    pub credentials: Arc<Credentials>,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Voter-capable nodes only.
    pub data_key: Option<DataKey>,
    pub identity: Identity,
    dir: PathBuf,
    /// The generation of the CA record the roots came from (0: not known).
    roots_generation: std::sync::atomic::AtomicU32,
}

/// What the node that forms a cluster proposes once its log runs.
pub struct Formation {
    pub ca: CaRecord,
    pub admin_token: ApiToken,
    pub admin_record: ApiTokenRecord,
}

pub fn node_role(role: Role) -> NodeRole {
    match role {
        Role::Voter => NodeRole::Voter,
        Role::Worker => NodeRole::Worker,
    }
}

pub fn pki_role(role: NodeRole) -> Role {
    match role {
        NodeRole::Voter => Role::Voter,
        NodeRole::Worker => Role::Worker,
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // Of this process: the CLI may write the same file (`admin.json`).
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

impl Trust {
    fn build(
        dir: &Path,
        roots_pem: &str,
        chain_pem: &str,
        key_pem: &str,
        data_key: Option<DataKey>,
    ) -> anyhow::Result<Trust> {
        let credentials = Credentials::new(roots_pem)?;
        let identity = credentials.set_identity(chain_pem, key_pem)?;
        Ok(Trust {
            server_tls: shoal_pki::tls::server_config(credentials.clone())?,
            client_tls: shoal_pki::tls::client_config(credentials.clone())?,
            credentials,
            data_key,
            identity,
            dir: dir.to_path_buf(),
            roots_generation: std::sync::atomic::AtomicU32::new(
                read(&dir.join("roots.generation"))
                    .ok()
                    .flatten()
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(0),
            ),
        })
    }

    /// The directory of the node's keys.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's credentials from its data dir, if it has any.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Trust>> {
        let (Some(roots), Some(chain), Some(key)) = (
            read(&dir.join("roots.pem"))?,
            read(&dir.join("node.pem"))?,
            read(&dir.join("node.key"))?.map(Zeroizing::new),
        ) else {
            return Ok(None);
        };
        let data_key = match read(&dir.join("data.key"))?.map(Zeroizing::new) {
            Some(text) => Some(
                DataKey::from_hex(&text)
                    .with_context(|| format!("reading {}", dir.join("data.key").display()))?,
            ),
            None => None,
        };
        let trust = Trust::build(dir, &roots, &chain, &key, data_key)
            .with_context(|| format!("reading the node's certificate in {}", dir.display()))?;
        // Expired lately (the node was off longer than its certificate
        // lived): it renews it as it starts. Longer ago: not by itself.
        let not_after = trust.not_after()?;
        if not_after + shoal_pki::tls::EXPIRED_RENEWAL_GRACE <= SystemTime::now() {
            anyhow::bail!(
                "this node's certificate expired at {}, more than {} ago; it cannot come back by itself: move {} away and join again with a new token (`shoal cluster token create`, then `--peer … --token …`)",
                humantime::format_rfc3339_seconds(not_after),
                humantime::format_duration(shoal_pki::tls::EXPIRED_RENEWAL_GRACE),
                dir.display()
            );
        }
        Ok(Some(trust))
    }

    /// Writes the node's credentials to its data dir.
    pub fn save(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing {}", self.dir.display()))?;
        write_private(
            &self.dir.join("roots.pem"),
            self.credentials.roots_pem().as_bytes(),
        )?;
        write_private(&self.dir.join("node.key"), key_pem.as_bytes())?;
        write_private(&self.dir.join("node.pem"), chain_pem.as_bytes())?;
        if let Some(key) = &self.data_key {
            write_private(&self.dir.join("data.key"), key.to_hex().as_bytes())?;
        }
        Ok(())
    }

    /// A new cluster: its data key, root CA, this node's certificate, and
    /// the first admin token. Nothing is written yet.
    pub fn form(
        dir: &Path,
        cluster_id: &str,
        name: &str,
        lifetime: Duration,
    ) -> anyhow::Result<(Trust, Formation, String, Zeroizing<String>)> {
        let now = SystemTime::now();
        let data_key = DataKey::generate();
        let ca = Ca::generate(cluster_id, 1, now)?;
        let identity = Identity {
            cluster_id: cluster_id.to_string(),
            role: Role::Voter,
            name: name.to_string(),
            admission: Identity::new_admission(),
        };
        let (chain, key) = ca.issue_new_key(&identity, lifetime, now)?;
        let key_sealed = seal_ca_key(&data_key, &ca)?;
        let record = CaRecord {
            roots_pem: ca.cert_pem().to_string(),
            signer_pem: ca.cert_pem().to_string(),
            chain_pem: String::new(),
            key_sealed,
            generation: 1,
        };
        let admin_token = ApiToken::generate();
        let admin_record = ApiTokenRecord {
            id: admin_token.id.clone(),
            name: "admin (made when the cluster formed)".to_string(),
            role: ApiRole::Admin,
            hash: admin_token.hash().to_hex(),
            created_at_ms: crate::clock::now_ms(),
            expires_at_ms: None,
            created_by: name.to_string(),
        };
        let trust = Trust::build(dir, ca.cert_pem(), &chain, &key, Some(data_key))?;
        Ok((
            trust,
            Formation {
                ca: record,
                admin_token,
                admin_record,
            },
            chain,
            key,
        ))
    }

    /// The joiner's side, once the cluster answered: its certificate, the
    /// roots, and (voters) the data key.
    pub fn joined(
        dir: &Path,
        roots_pem: &str,
        chain_pem: &str,
        key_pem: &str,
        data_key: Option<DataKey>,
    ) -> anyhow::Result<Trust> {
        let trust = Trust::build(dir, roots_pem, chain_pem, key_pem, data_key)?;
        trust.save(chain_pem, key_pem)?;
        Ok(trust)
    }

    /// When the node's current certificate expires.
    pub fn not_after(&self) -> anyhow::Result<SystemTime> {
        let chain = read(&self.dir.join("node.pem"))?.unwrap_or_default();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(chain.as_bytes())
            .map(|der: rustls::pki_types::CertificateDer<'static>| der);
        match der {
            Ok(der) => Ok(shoal_pki::identity::not_after(&der)?),
            // Formed but not saved yet: a fresh certificate.
            Err(_) => Ok(SystemTime::now() + Duration::from_secs(60)),
        }
    }

    /// When the node's current certificate started.
    pub fn not_before(&self) -> anyhow::Result<SystemTime> {
        let chain = read(&self.dir.join("node.pem"))?.unwrap_or_default();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(chain.as_bytes())
            .map(|der: rustls::pki_types::CertificateDer<'static>| der)?;
        Ok(shoal_pki::identity::not_before(&der)?)
    }

    /// The CA that signs now, opened with the data key; `None` on a node
    /// without the data key.
    pub fn signer(&self, record: &CaRecord) -> anyhow::Result<Option<Ca>> {
        let Some(data_key) = &self.data_key else {
            return Ok(None);
        };
        let sealed = hex::decode(&record.key_sealed).context("the CA key in the state")?;
        let key = shoal_pki::seal::open(
            |id| (id == DATA_KEY_ID).then_some(data_key),
            CA_KEY_AAD,
            &sealed,
        )
        .context("opening the CA key with this node's data key")?;
        let key = Zeroizing::new(String::from_utf8(key.to_vec()).context("the CA key")?);
        Ok(Some(Ca::from_pem(&record.signer_pem, &key)?))
    }

    /// Trusts `roots_pem`, the roots of the CA record of `generation`,
    /// from the next handshake on, and keeps them for the next start.
    pub fn adopt_roots(&self, roots_pem: &str, generation: u32) -> anyhow::Result<()> {
        self.credentials.set_roots(roots_pem)?;
        write_private(&self.dir.join("roots.pem"), roots_pem.as_bytes())?;
        write_private(
            &self.dir.join("roots.generation"),
            generation.to_string().as_bytes(),
        )?;
        self.roots_generation
            .store(generation, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The generation of the CA record the roots came from (0: not known).
    pub fn roots_generation(&self) -> u32 {
        self.roots_generation
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The node's certificate chain, as it shows it.
    pub fn chain_pem(&self) -> String {
        self.credentials.chain_pem().unwrap_or_default()
    }

    /// Installs a renewed certificate (and the roots of the moment).
    pub fn renewed(&self, roots_pem: &str, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        self.credentials.set_roots(roots_pem)?;
        self.credentials.set_identity(chain_pem, key_pem)?;
        self.save(chain_pem, key_pem)
    }
}

/// Writes the first admin credential once (mode 0600).
pub fn write_admin(
    data_dir: &Path,
    credential: &shoal_api::client::Credential,
) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("admin.json");
    let body = Zeroizing::new(serde_json::to_vec_pretty(credential)?);
    write_private(&path, &body)?;
    Ok(path)
}
