//! The peer cache: gossip addresses of known members, kept in a JSON file
//! so a restarted node (or a restarted cluster) finds the others again
//! without being told.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{PEERS_MAX, PEER_CACHE_FILE_MAX_BYTES};

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct PeerCacheFile {
    version: u32,
    cluster_id: String,
    /// The node that wrote the file (informative).
    node: String,
    updated_at_ms: u64,
    peers: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerCacheError {
    #[error("reading peer cache {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("peer cache {path} is over {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("peer cache {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("peer cache {path} has format version {found}, expected {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("peer cache {path} belongs to cluster {found:?}, not {expected:?}")]
    OtherCluster {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("writing peer cache {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The peers listed in `path`; none if the file does not exist.
pub(crate) fn read(path: &Path, cluster_id: &str) -> Result<Vec<SocketAddr>, PeerCacheError> {
    let read_err = |source| PeerCacheError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(read_err(err)),
    };
    let mut bytes = Vec::new();
    file.take(PEER_CACHE_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > PEER_CACHE_FILE_MAX_BYTES {
        return Err(PeerCacheError::TooLarge {
            path: path.to_owned(),
            max: PEER_CACHE_FILE_MAX_BYTES,
        });
    }
    let cache: PeerCacheFile =
        serde_json::from_slice(&bytes).map_err(|source| PeerCacheError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if cache.version != FORMAT_VERSION {
        return Err(PeerCacheError::Version {
            path: path.to_owned(),
            found: cache.version,
        });
    }
    if cache.cluster_id != cluster_id {
        return Err(PeerCacheError::OtherCluster {
            path: path.to_owned(),
            found: cache.cluster_id,
            expected: cluster_id.to_owned(),
        });
    }
    let mut peers = cache.peers;
    peers.sort_unstable();
    peers.dedup();
    peers.truncate(PEERS_MAX);
    Ok(peers)
}

/// Replaces `path` atomically (temporary file in the same directory,
/// fsync, rename) with `peers`.
pub(crate) fn write(
    path: &Path,
    cluster_id: &str,
    node: &str,
    updated_at_ms: u64,
    peers: &[SocketAddr],
) -> Result<(), PeerCacheError> {
    let write_err = |source| PeerCacheError::Write {
        path: path.to_owned(),
        source,
    };
    let cache = PeerCacheFile {
        version: FORMAT_VERSION,
        cluster_id: cluster_id.to_owned(),
        node: node.to_owned(),
        updated_at_ms,
        peers: peers.iter().take(PEERS_MAX).copied().collect(),
    };
    let mut json = serde_json::to_vec_pretty(&cache).map_err(|err| write_err(err.into()))?;
    json.push(b'\n');

    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut tmp_name = path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_else(|| "peers".into());
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/peers.json");
        assert_eq!(read(&path, "c").unwrap(), Vec::<SocketAddr>::new());
        let peers: Vec<SocketAddr> = vec!["127.0.0.2:7946".parse().unwrap()];
        write(&path, "c", "n1", 1, &peers).unwrap();
        assert_eq!(read(&path, "c").unwrap(), peers);
        assert!(matches!(
            read(&path, "other"),
            Err(PeerCacheError::OtherCluster { .. })
        ));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            read(&path, "c"),
            Err(PeerCacheError::Parse { .. })
        ));
    }
}
