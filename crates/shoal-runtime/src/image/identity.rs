//! How images and their parts are named: digests, chain ids of layer
//! stacks, normalized references, and the platform manifest picked from an
//! index.

use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::{invalid, Descriptor};
use crate::Result;

/// Accepts only `sha256:<64 lowercase hex>`: the one algorithm in use, and a
/// shape that is safe to put in paths and keys.
pub fn check_digest(digest: &str) -> Result<()> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| invalid(format!("digest {digest:?} is not sha256")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(format!("digest {digest:?} is malformed")));
    }
    Ok(())
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The identity of a stack of layers: the snapshot name containerd gives the
/// unpacked result of `diff_ids[..=i]`, for each `i`.
pub fn chain_ids(diff_ids: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        check_digest(d)?;
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    Ok(out)
}

/// Normalizes an image name the way Docker does:
/// `busybox` → `docker.io/library/busybox:latest`.
pub fn normalize_name(name: &str) -> Result<String> {
    oci_spec::distribution::Reference::from_str(name)
        .map(|r| r.to_string())
        .map_err(|e| invalid(format!("image name {name:?} is not a valid reference: {e}")))
}

/// This machine's architecture as OCI spells it.
pub fn host_arch() -> &'static str {
    oci_arch(std::env::consts::ARCH)
}

/// An architecture as Rust or `uname -m` spell it (`x86_64`), as OCI does
/// (`amd64`).
pub fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i686" => "386",
        "powerpc64" | "powerpc64le" | "ppc64le" => "ppc64le",
        other => other,
    }
}

/// Picks the manifest to run from an index: linux on this architecture, else
/// the first linux one, else (no platforms given at all) the first.
pub fn pick_manifest(manifests: &[Descriptor]) -> Result<&Descriptor> {
    let linux = |d: &&Descriptor| d.platform.as_ref().is_some_and(|p| p.os == "linux");
    manifests
        .iter()
        .filter(linux)
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.architecture == host_arch())
        })
        .or_else(|| manifests.iter().find(linux))
        .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
        .ok_or_else(|| invalid("index holds no linux manifest"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Platform;

    #[test]
    fn chain_ids_match_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_digest(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&["md5:00".into()]).is_err());
        assert!(chain_ids(&[]).unwrap().is_empty());
    }

    #[test]
    fn names_normalize() {
        assert_eq!(
            normalize_name("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_name("busybox:1").unwrap(),
            "docker.io/library/busybox:1"
        );
        assert_eq!(normalize_name("ghcr.io/a/b:c").unwrap(), "ghcr.io/a/b:c");
        assert!(normalize_name("Not Valid").is_err());
    }

    #[test]
    fn platform_pick_prefers_host() {
        let d = |os: &str, arch: &str, digest: char| Descriptor {
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            ..Descriptor::default()
        };
        let list = vec![
            d("unknown", "unknown", 'a'),
            d("linux", "s390x", 'b'),
            d("linux", host_arch(), 'c'),
        ];
        assert!(pick_manifest(&list).unwrap().digest.ends_with('c'));
        assert!(pick_manifest(&list[..2]).unwrap().digest.ends_with('b'));
        assert!(pick_manifest(&list[..1]).is_err());
    }
}
