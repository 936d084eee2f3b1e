//! The CLI's credentials: a config file of contexts (like kubeconfig),
//! each an API address, the cluster's CA and a token. The file is
//! `--config FILE`, else `$SHOAL_CONFIG`, else
//! `$HOME/.config/shoal/config.json`; it may also be a single credential
//! (`DATA_DIR/admin.json` of the node that formed a cluster).
//! `$SHOAL_TOKEN` overrides the token and `--addr` the address.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_api::client::Credential;
use zeroize::Zeroizing;

/// Largest config file read.
const CONFIG_BYTES_MAX: u64 = 1 << 20;

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Credential>,
}

pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".config/shoal/config.json")
}

/// The file the CLI reads: `--config`, `$SHOAL_CONFIG`, or the default.
pub fn path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SHOAL_CONFIG").map(PathBuf::from))
        .unwrap_or_else(default_path)
}

fn read(path: &Path) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > CONFIG_BYTES_MAX => {
            anyhow::bail!("{} is larger than a shoal config can be", path.display())
        }
        Ok(_) => Ok(Some(Zeroizing::new(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        ))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn load_file(path: &Path) -> anyhow::Result<ConfigFile> {
    match read(path)? {
        None => Ok(ConfigFile::default()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a shoal config", path.display())),
    }
}

/// The credential the CLI uses now.
pub fn credential(explicit: Option<&Path>, addr: Option<&str>) -> anyhow::Result<Credential> {
    let path = path(explicit);
    let missing = || {
        anyhow::anyhow!(
            "no credentials in {}: run `shoal dev` on this machine, or give --config DATA_DIR/admin.json (or SHOAL_CONFIG) of the node that formed the cluster, or pick a context with `shoal context use NAME`",
            path.display()
        )
    };
    let bytes = read(&path)?.ok_or_else(missing)?;
    let mut credential = match serde_json::from_slice::<Credential>(&bytes) {
        Ok(credential) => credential,
        Err(_) => {
            let file: ConfigFile = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is neither a shoal config nor a credential (admin.json)",
                    path.display()
                )
            })?;
            let current = file.current.clone().ok_or_else(missing)?;
            file.contexts.get(&current).cloned().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: the current context `{current}` is not in the file; see `shoal context ls`",
                    path.display()
                )
            })?
        }
    };
    if let Ok(token) = std::env::var("SHOAL_TOKEN") {
        if !token.trim().is_empty() {
            credential.token = token.trim().to_string();
        }
    }
    if let Some(addr) = addr {
        credential.addr = addr.to_string();
    }
    Ok(credential)
}

pub fn save_file(path: &Path, file: &ConfigFile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let body = Zeroizing::new(serde_json::to_vec_pretty(file)?);
    write_private(path, &body)
}

/// Writes `body` to `path` (mode 0600) through a file beside it, renamed.
fn write_private(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    // Of this process: a node may write the same file (its `admin.json`).
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    out.write_all(body)
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

/// Makes the credential the CLI uses (a single credential, or the current
/// context of a config) trust `ca_pem` where it trusted `was` (one that
/// changed meanwhile, another context made current, is left alone); the
/// file it changed.
pub fn replace_ca(explicit: Option<&Path>, was: &str, ca_pem: &str) -> anyhow::Result<PathBuf> {
    let path = path(explicit);
    let bytes = read(&path)?.ok_or_else(|| anyhow::anyhow!("{} is gone", path.display()))?;
    let changed = || {
        anyhow::anyhow!(
            "{}: the credential changed meanwhile (another context?); it was left as it is: its CA is to be the cluster's new root (`shoal context add NAME --from DATA_DIR/admin.json` of a node)",
            path.display()
        )
    };
    if let Ok(mut credential) = serde_json::from_slice::<Credential>(&bytes) {
        // The node that formed the cluster rewrites its own `admin.json`.
        if credential.ca_pem == ca_pem {
            return Ok(path);
        }
        if credential.ca_pem != was {
            return Err(changed());
        }
        credential.ca_pem = ca_pem.to_string();
        let body = Zeroizing::new(serde_json::to_vec_pretty(&credential)?);
        write_private(&path, &body)?;
        return Ok(path);
    }
    let mut file: ConfigFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a shoal config", path.display()))?;
    let current = file
        .current
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{}: no current context", path.display()))?;
    let context = file.contexts.get_mut(&current).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the current context `{current}` is not in the file",
            path.display()
        )
    })?;
    if context.ca_pem == ca_pem {
        return Ok(path);
    }
    if context.ca_pem != was {
        return Err(changed());
    }
    context.ca_pem = ca_pem.to_string();
    save_file(&path, &file)?;
    Ok(path)
}

/// Adds or replaces context `name` in the default config and makes it current.
pub fn save_context(name: &str, credential: Credential) -> anyhow::Result<PathBuf> {
    let path = path(None);
    let mut file = load_file(&path)?;
    file.contexts.insert(name.to_string(), credential);
    file.current = Some(name.to_string());
    save_file(&path, &file)?;
    Ok(path)
}
