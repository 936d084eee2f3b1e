//! Files a service's tasks get from the cluster: its secrets (sealed in
//! the state, written only to memory on the node) and its configs.
//!
//! A service lists them as `secrets: [{name, target, mode, uid, gid}]` and
//! the same for `configs`; each becomes one read-only file in the
//! container. Written only when listed (shoal 0.8, log format 8), so a
//! spec without them is the bytes older formats read.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Secrets, and configs, one service may list.
pub const FILES_MAX: usize = 64;
/// Longest name of a secret or config.
pub const OBJECT_NAME_CHARS_MAX: usize = 64;
/// Longest target path.
pub const TARGET_BYTES_MAX: usize = 1024;

/// Which store a file comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }

    /// The spec's field that lists files of this kind.
    pub fn field(self) -> &'static str {
        match self {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        }
    }

    /// Where a file whose target is a bare name (or none) goes.
    pub fn default_dir(self) -> &'static str {
        match self {
            FileKind::Secret => "/run/secrets",
            FileKind::Config => "",
        }
    }

    /// The mode a file gets when the spec names none.
    pub fn default_mode(self) -> FileMode {
        match self {
            FileKind::Secret => FileMode(0o400),
            FileKind::Config => FileMode(0o444),
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One secret or config a service's tasks get as a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The secret's or config's name (`shoal secret ls`, `shoal config ls`).
    pub name: String,
    /// Where the file appears in the container: an absolute path, or a
    /// file name under `/run/secrets` (secrets) or `/` (configs). By
    /// default the name there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Permission bits in octal, as a string (`"0440"`); `"0400"` for a
    /// secret and `"0444"` for a config by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
    /// The file's owner; the service's `user`, else root, by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The file's group; the service's `user`'s, else root's, by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl FileRef {
    /// The path of the file in the container.
    pub fn target_path(&self, kind: FileKind) -> String {
        match &self.target {
            Some(target) if target.starts_with('/') => target.clone(),
            Some(file) => format!("{}/{file}", kind.default_dir()),
            None => format!("{}/{}", kind.default_dir(), self.name),
        }
    }

    pub fn mode_or_default(&self, kind: FileKind) -> FileMode {
        self.mode.unwrap_or(kind.default_mode())
    }
}

/// Permission bits of a file (at most `0777`), written as a string of
/// octal digits so that YAML's and JSON's readings of `0440` cannot differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileMode(pub u32);

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl std::str::FromStr for FileMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(format!(
                "`{text}` is not a mode: write octal permission bits as a string, e.g. \"0440\""
            ));
        }
        let bits = u32::from_str_radix(digits, 8).map_err(|error| error.to_string())?;
        if bits > 0o777 {
            return Err(format!(
                "`{text}`: only permission bits (at most \"0777\"), no setuid, setgid or sticky bit"
            ));
        }
        Ok(FileMode(bits))
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("octal permission bits as a string, e.g. \"0440\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<FileMode, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, number: u64) -> Result<FileMode, E> {
                Err(E::custom(format!(
                    "the number {number} is ambiguous (YAML reads 0440 as octal or decimal by version): write the mode as a string in quotes, e.g. \"0440\""
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, number: i64) -> Result<FileMode, E> {
                self.visit_u64(number.unsigned_abs())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for FileMode {
    fn schema_name() -> Cow<'static, str> {
        "FileMode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Permission bits in octal, as a string (\"0440\").",
            "type": "string",
            "pattern": "^(0o)?[0-7]{1,4}$"
        })
    }
}

/// Checks the name of a secret or config: 1 to 64 letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit (it is a file name in the
/// container by default).
pub fn check_object_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > OBJECT_NAME_CHARS_MAX
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "`{name}` is not a name: 1 to {OBJECT_NAME_CHARS_MAX} letters, digits, `-`, `_` and `.`, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Paths a file may not be put under: the kernel's and the runtime's.
const FORBIDDEN_DIRS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Checks a target as written: an absolute path without `.`, `..` or
/// empty parts, or a bare file name.
pub fn check_target(target: &str) -> Result<(), String> {
    if target.is_empty() || target.len() > TARGET_BYTES_MAX || target.contains('\0') {
        return Err(format!(
            "1 to {TARGET_BYTES_MAX} bytes, no NUL; write an absolute path such as `/etc/app/key.pem` or a file name"
        ));
    }
    let Some(path) = target.strip_prefix('/') else {
        if target.contains('/') || target == "." || target == ".." {
            return Err(format!(
                "`{target}` is neither an absolute path nor a file name; write e.g. `/etc/app/{}`",
                target.rsplit('/').next().unwrap_or("file")
            ));
        }
        return Ok(());
    };
    if path.is_empty()
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!(
            "`{target}` must name a file by a plain absolute path (no `.`, `..`, `//` or trailing `/`)"
        ));
    }
    check_path(target)
}

/// Files the node itself puts in a task: its network's.
const NODE_FILES: [&str; 2] = ["/etc/hosts", "/etc/resolv.conf"];

/// Checks where a file lands in the container (a target as resolved):
/// not in or at the kernel's and the runtime's directories, not on a file
/// the node puts there itself.
pub fn check_path(path: &str) -> Result<(), String> {
    if let Some(dir) = FORBIDDEN_DIRS
        .iter()
        .find(|dir| path == **dir || path.starts_with(&format!("{dir}/")))
    {
        return Err(format!(
            "`{path}` is {dir} or under it, which the kernel and the runtime own; choose another path"
        ));
    }
    if NODE_FILES.contains(&path) {
        return Err(format!(
            "`{path}` is made by the node for the task's network; choose another path"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_strings_of_permission_bits() {
        assert_eq!("0440".parse::<FileMode>(), Ok(FileMode(0o440)));
        assert_eq!("400".parse::<FileMode>(), Ok(FileMode(0o400)));
        assert_eq!("0o600".parse::<FileMode>(), Ok(FileMode(0o600)));
        assert_eq!(FileMode(0o440).to_string(), "0440");
        for bad in ["", "0948", "4755", "rw", "00440"] {
            assert!(bad.parse::<FileMode>().is_err(), "{bad}");
        }
        let number = serde_json::from_str::<FileMode>("288").expect_err("a number");
        assert!(
            number.to_string().contains("as a string in quotes"),
            "{number}"
        );
        assert_eq!(
            serde_json::to_string(&FileMode(0o400)).expect("json"),
            r#""0400""#
        );
    }

    #[test]
    fn names_and_targets() {
        for good in ["db", "db-password", "tls.key", "A_1"] {
            assert_eq!(check_object_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(65);
        for bad in ["", ".env", "-x", "a/b", "a b", long.as_str()] {
            assert!(check_object_name(bad).is_err(), "{bad}");
        }
        for good in ["/etc/app/key.pem", "key.pem", "/x"] {
            assert_eq!(check_target(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/",
            "etc/x",
            "/etc//x",
            "/etc/x/",
            "/a/../b",
            "/./a",
            "..",
            "/proc/x",
            "/sys/fs/x",
            "/dev/shm/x",
            "/proc",
            "/etc/hosts",
            "/etc/resolv.conf",
        ] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_default_to_the_name_under_the_kind_s_directory() {
        let file = |target: Option<&str>| FileRef {
            name: "db".into(),
            target: target.map(str::to_string),
            mode: None,
            uid: None,
            gid: None,
        };
        assert_eq!(file(None).target_path(FileKind::Secret), "/run/secrets/db");
        assert_eq!(file(None).target_path(FileKind::Config), "/db");
        assert_eq!(
            file(Some("pw")).target_path(FileKind::Secret),
            "/run/secrets/pw"
        );
        assert_eq!(
            file(Some("/etc/pw")).target_path(FileKind::Config),
            "/etc/pw"
        );
        assert_eq!(
            file(None).mode_or_default(FileKind::Secret),
            FileMode(0o400)
        );
        assert_eq!(
            file(None).mode_or_default(FileKind::Config),
            FileMode(0o444)
        );
    }
}
