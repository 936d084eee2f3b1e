//! The audit log: a line for every mutating request a node answers,
//! refused ones included, and every proposal forwarded to it as leader;
//! lines bounded, files rotated by size with a few kept, refusals
//! rate-limited per source and in all.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::clock::now_ms;

/// Where other nodes forward proposals to the leader.
const FORWARD_PATH: &str = "/v1/raft/propose";
/// Bytes of `audit.log` before it is rotated to `audit.log.1`.
const AUDIT_FILE_BYTES_MAX: u64 = 16 << 20;
/// Rotated files kept (`audit.log.1` … `.4`); the oldest goes.
const AUDIT_FILES_KEPT: u32 = 4;
/// Characters of a path and of a refusal's words kept in one line.
const AUDIT_PATH_CHARS_MAX: usize = 256;
const AUDIT_WORDS_CHARS_MAX: usize = 512;
/// Refused requests written one by one per source address and second;
/// beyond, counted in one line.
const AUDIT_REFUSALS_PER_SOURCE_PER_SECOND: u32 = 10;
/// Source addresses whose refusals are being counted, at most (the
/// counts start over when more come).
const AUDIT_SOURCES_TRACKED_MAX: usize = 4096;
/// Refused requests written one by one per second from all sources
/// together, so that many addresses cannot rotate the accepted
/// mutations out of the kept files.
const AUDIT_REFUSALS_PER_SECOND: u32 = 100;

/// Lines of one kind written per second: up to a rate, the rest counted.
#[derive(Debug)]
pub struct LineRate {
    since: std::time::Instant,
    written: u32,
    suppressed: u64,
}

impl LineRate {
    pub fn new() -> LineRate {
        LineRate {
            since: std::time::Instant::now(),
            written: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line fits in this second at `per_second`; and,
    /// when this call starts a new second, how many lines the one that
    /// ended did not write (0 when none), for the caller to say so.
    pub fn admit(&mut self, per_second: u32) -> (bool, u64) {
        let mut ended = 0;
        if self.since.elapsed() >= std::time::Duration::from_secs(1) {
            ended = self.suppressed;
            *self = LineRate::new();
        }
        if self.written < per_second {
            self.written += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }

    /// Ends the second being counted (tests).
    #[cfg(test)]
    pub fn end_second(&mut self) {
        self.since = self
            .since
            .checked_sub(std::time::Duration::from_secs(2))
            .unwrap_or(self.since);
    }
}

/// The record of mutating requests on this node: bounded lines, rotated by
/// size with a few files kept, refusals rate-limited per source.
pub struct Audit {
    path: PathBuf,
    file: Mutex<Option<AuditFile>>,
    /// [`AUDIT_FILE_BYTES_MAX`], smaller in tests.
    file_bytes_max: u64,
    /// [`AUDIT_REFUSALS_PER_SECOND`], larger in tests that count lines.
    refusals_per_second: u32,
    /// Refusals written per source address.
    refusals: Mutex<std::collections::HashMap<std::net::IpAddr, LineRate>>,
    /// And from all sources together.
    all_refusals: Mutex<LineRate>,
}

struct AuditFile {
    file: std::fs::File,
    bytes: u64,
}

/// At most `max` characters of `text`.
fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]).into(),
        None => text.into(),
    }
}

#[derive(Serialize)]
pub struct AuditRecord<'a> {
    pub at_ms: u64,
    pub caller: String,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<&'a str>,
    /// A proposal forwarded to the leader: its command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<&'a str>,
    /// And who vouched for it: the operator's token, or a voter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<&'a str>,
    /// What an accepted mutation changed (`app web`, `token ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<&'a str>,
}

impl Audit {
    pub fn open(data_dir: &Path) -> anyhow::Result<Audit> {
        let path = data_dir.join("audit.log");
        let file = open_audit_file(&path)
            .map_err(|error| anyhow::anyhow!("opening {}: {error}", path.display()))?;
        Ok(Audit {
            path,
            file: Mutex::new(Some(file)),
            file_bytes_max: AUDIT_FILE_BYTES_MAX,
            refusals_per_second: AUDIT_REFUSALS_PER_SECOND,
            refusals: Mutex::new(std::collections::HashMap::new()),
            all_refusals: Mutex::new(LineRate::new()),
        })
    }

    /// Whether a refusal of a request from `source` is written on its own
    /// line; the count of a second that ended is written first.
    pub fn refusal_written(&self, source: Option<std::net::IpAddr>) -> bool {
        let (fits, ended) = self
            .all_refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(self.refusals_per_second);
        self.note_suppressed("several sources", "requests", ended);
        if !fits {
            return false;
        }
        let Some(source) = source else {
            return true;
        };
        let (fits, ended) = {
            let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if refusals.len() >= AUDIT_SOURCES_TRACKED_MAX && !refusals.contains_key(&source) {
                refusals.clear();
            }
            refusals
                .entry(source)
                .or_insert_with(LineRate::new)
                .admit(AUDIT_REFUSALS_PER_SOURCE_PER_SECOND)
        };
        self.note_suppressed(
            &format!("source:{source}"),
            &format!("requests from {source}"),
            ended,
        );
        fits
    }

    /// Says in one line (as `caller`) that `count` refusals of `what` were
    /// not written one by one.
    pub fn note_suppressed(&self, caller: &str, what: &str, count: u64) {
        if count == 0 {
            return;
        }
        let note = format!("{count} more refused {what} in one second, not written one by one");
        tracing::warn!("{note}");
        self.write(&AuditRecord {
            at_ms: now_ms(),
            caller: caller.to_string(),
            method: "-",
            path: "-",
            status: 0,
            refused: Some(&note),
            command: None,
            operator: None,
            object: None,
        });
    }

    /// The same log, with room for `per_second` refusals a second from all
    /// sources together (for tests that count every line).
    #[cfg(test)]
    pub fn with_refusal_rate(mut self, per_second: u32) -> Audit {
        self.refusals_per_second = per_second;
        self
    }

    /// A proposal another node forwarded to this one, the leader: taken
    /// on an operator's word (`operator`), or refused (`refused`).
    pub fn record_forward(
        &self,
        by: &str,
        command: &str,
        operator: Option<&str>,
        refused: Option<&str>,
    ) {
        self.record(&AuditRecord {
            at_ms: now_ms(),
            caller: by.to_string(),
            method: "POST",
            path: FORWARD_PATH,
            status: if refused.is_some() { 403 } else { 200 },
            refused,
            command: Some(command),
            operator,
            object: None,
        });
    }

    /// Writes `record` with its words clipped.
    pub fn record(&self, record: &AuditRecord<'_>) {
        let path = clip(record.path, AUDIT_PATH_CHARS_MAX);
        let refused = record
            .refused
            .map(|words| clip(words, AUDIT_WORDS_CHARS_MAX));
        let object = record.object.map(|words| clip(words, AUDIT_PATH_CHARS_MAX));
        self.write(&AuditRecord {
            caller: record.caller.clone(),
            path: &path,
            refused: refused.as_deref(),
            object: object.as_deref(),
            ..*record
        });
    }

    fn write(&self, record: &AuditRecord<'_>) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // Full (or lost to an earlier failure): rotated, or reopened; the
        // old file stays in use when that fails, and it is tried again at
        // the next line.
        let full = file
            .as_ref()
            .is_none_or(|f| f.bytes + line.len() as u64 > self.file_bytes_max);
        if full {
            let renamed = match file.as_ref() {
                Some(_) => rotate(&self.path),
                None => Ok(()),
            };
            match renamed {
                Err(error) => {
                    tracing::warn!(%error, path = %self.path.display(), "rotating the audit log")
                }
                Ok(()) => match open_audit_file(&self.path) {
                    Ok(fresh) => *file = Some(fresh),
                    Err(error) => {
                        tracing::warn!(%error, path = %self.path.display(), "opening the audit log");
                        // The old handle (now `.1`) takes lines until the
                        // next try, a file's length later.
                        if let Some(old) = file.as_mut() {
                            old.bytes = 0;
                        }
                    }
                },
            }
        }
        if let Some(file) = file.as_mut() {
            match file.file.write_all(&line) {
                Ok(()) => file.bytes += line.len() as u64,
                Err(error) => {
                    tracing::warn!(%error, path = %self.path.display(), "writing the audit log")
                }
            }
        }
    }
}

/// Opens (creating, 0600) an audit file to append to, with its size.
fn open_audit_file(path: &Path) -> std::io::Result<AuditFile> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let bytes = file.metadata()?.len();
    Ok(AuditFile { file, bytes })
}

/// `audit.log` → `audit.log.1` → … → `audit.log.N`, the oldest dropped.
fn rotate(path: &Path) -> std::io::Result<()> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    for n in (1..AUDIT_FILES_KEPT).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    std::fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal<'a>(path: &'a str, words: &'a str) -> AuditRecord<'a> {
        AuditRecord {
            at_ms: 1,
            caller: "anonymous".into(),
            method: "POST",
            path,
            status: 401,
            refused: Some(words),
            command: None,
            operator: None,
            object: None,
        }
    }

    #[test]
    fn lines_are_bounded_and_files_rotate_with_four_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let mut audit = Audit::open(dir.path()).expect("audit");
        audit.file_bytes_max = 4096;
        let long = "x".repeat(100_000);
        audit.record(&refusal(&long, &long));
        let first = std::fs::read_to_string(dir.path().join("audit.log")).expect("log");
        assert!(first.len() < 1200, "a line of {} bytes", first.len());
        for _ in 0..200 {
            audit.record(&refusal("/v1/apps", "no credential"));
        }
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "audit.log",
                "audit.log.1",
                "audit.log.2",
                "audit.log.3",
                "audit.log.4"
            ]
        );
        for file in &files {
            let len = std::fs::metadata(dir.path().join(file))
                .expect("file")
                .len();
            assert!(len <= 4096, "{file}: {len} bytes");
        }
    }

    #[test]
    fn refusals_from_one_source_are_written_up_to_a_rate_then_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let audit = Audit::open(dir.path()).expect("audit");
        let (noisy, other): (std::net::IpAddr, std::net::IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        let written = (0..15)
            .filter(|_| audit.refusal_written(Some(noisy)))
            .count();
        assert_eq!(written, AUDIT_REFUSALS_PER_SOURCE_PER_SECOND as usize);
        assert!(
            audit.refusal_written(Some(other)),
            "another source is written"
        );
        // The next second: the count is written, and refusals again.
        if let Ok(mut refusals) = audit.refusals.lock() {
            if let Some(rate) = refusals.get_mut(&noisy) {
                rate.end_second();
            }
        }
        assert!(audit.refusal_written(Some(noisy)));
        let log = std::fs::read_to_string(dir.path().join("audit.log")).expect("log");
        assert!(
            log.contains("5 more refused requests from 192.0.2.1"),
            "{log}"
        );
    }

    #[test]
    fn rotation_loses_no_line_while_the_kept_files_hold_them() {
        let dir = tempfile::tempdir().expect("dir");
        let mut audit = Audit::open(dir.path()).expect("audit");
        audit.file_bytes_max = 4096;
        for index in 0..60 {
            audit.record(&refusal(&format!("/v1/apps/{index}"), "no credential"));
        }
        let lines: usize = ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
            .iter()
            .filter_map(|file| std::fs::read_to_string(dir.path().join(file)).ok())
            .map(|text| text.lines().count())
            .sum();
        assert_eq!(lines, 60);
    }

    #[test]
    fn many_sources_together_are_held_to_a_rate_too() {
        let dir = tempfile::tempdir().expect("dir");
        let audit = Audit::open(dir.path()).expect("audit");
        let written = (0..150u32)
            .filter(|n| {
                let source = std::net::IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + n));
                audit.refusal_written(Some(source))
            })
            .count();
        assert_eq!(written, AUDIT_REFUSALS_PER_SECOND as usize);
    }
}
