//! The logging binary containerd's shim runs beside each container.
//!
//! containerd 1.6's shim, given a `file://` log, writes stdout and stderr
//! to the same file through one writer that the stdout copy closes when
//! stdout ends, so whatever stderr still had in its pipe is lost (a process
//! that prints an error and exits loses the error). With a `binary://` log
//! the shim instead starts a program with the container's stdout on fd 3,
//! its stderr on fd 4 and a readiness pipe on fd 5, and keeps it for the
//! container's life. This is that program: it appends both streams to the
//! task's log file until both end, and outlives the agent like the shim.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

/// The fds the shim hands a logging binary.
const STDOUT_FD: i32 = 3;
const STDERR_FD: i32 = 4;
const READY_FD: i32 = 5;
/// Bytes read from a stream before they are appended.
const CHUNK_BYTES: usize = 16 << 10;

/// Appends the container's stdout and stderr to `path` until both end.
///
/// Only for a process started by containerd's shim as a logging binary:
/// it takes over fds 3, 4 and 5.
pub fn run(path: &Path) -> std::io::Result<()> {
    // The shim sends SIGTERM when it closes the container's IO, which
    // would cut the copy short; the pipes' end is what stops this process
    // (and the shim kills it after 12 s if they never end).
    // SAFETY: setting a signal's disposition to "ignore" has no
    // preconditions; this process has no handlers of its own.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let open = || OpenOptions::new().create(true).append(true).open(path);
    let (out_log, err_log) = (open()?, open()?);
    // SAFETY: the shim starts this process with these three fds open and
    // nothing else in the process owns them; each is taken exactly once.
    let (stdout, stderr, ready) = unsafe {
        (
            File::from_raw_fd(STDOUT_FD),
            File::from_raw_fd(STDERR_FD),
            File::from_raw_fd(READY_FD),
        )
    };
    // Closing the readiness pipe tells the shim the log is open.
    drop(ready);
    let errors = std::thread::spawn(move || copy(stderr, err_log));
    let outcome = copy(stdout, out_log);
    let err_outcome = errors
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("stderr copy panicked")));
    outcome.and(err_outcome)
}

/// Copies until the stream ends, writing each chunk as it comes (one
/// append each, so lines of the two streams interleave as they were written).
fn copy(mut from: File, mut to: File) -> std::io::Result<()> {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => to.write_all(&buffer[..read])?,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// The `binary://` URI that makes the shim run `binary log-writer PATH`.
pub fn binary_uri(binary: &Path, log_path: &Path) -> String {
    let mut uri = String::from("binary://");
    escape_into(&mut uri, binary.as_os_str().as_encoded_bytes(), true);
    uri.push_str("?log-writer=");
    escape_into(&mut uri, log_path.as_os_str().as_encoded_bytes(), false);
    uri
}

/// Percent-encodes all but unreserved characters (and `/` in paths).
fn escape_into(uri: &mut String, bytes: &[u8], keep_slash: bool) {
    for byte in bytes {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                uri.push(char::from(*byte))
            }
            b'/' if keep_slash => uri.push('/'),
            _ => uri.push_str(&format!("%{byte:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_uri_escapes_what_a_url_would_read_otherwise() {
        let uri = super::binary_uri(
            std::path::Path::new("/usr/bin/shoal"),
            std::path::Path::new("/var/lib/shoal/odd dir %20 #1/a+b?.log"),
        );
        assert_eq!(
            uri,
            "binary:///usr/bin/shoal?log-writer=%2Fvar%2Flib%2Fshoal%2Fodd%20dir%20%2520%20%231%2Fa%2Bb%3F.log"
        );
    }
}
