//! Running external programs (CNI plugins, `ip`, `iptables`) with a time
//! limit and a bound on what we read back.
//!
//! A plugin that hangs or floods its stdout must not hang or exhaust the
//! agent, so every child is killed when its time runs out and its output is
//! cut at a stated number of bytes. [`CommandRunner`] is the one small trait
//! at this OS boundary: [`SystemRunner`] runs real programs, [`FakeRunner`]
//! records the commands and answers from a script so that unit tests check
//! the commands without root.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Default limit for one run of a program.
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default bound on each of stdout and stderr.
pub const OUTPUT_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// How often a running child is polled for its exit.
const POLL_INTERVAL_MS: u64 = 5;

/// Limits applied to every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecLimits {
    /// The child is killed after this long.
    pub timeout_ms: u64,
    /// Bytes kept from each of stdout and stderr; more is an error.
    pub output_bytes_max: usize,
}

impl Default for ExecLimits {
    fn default() -> Self {
        Self {
            timeout_ms: TIMEOUT_MS_DEFAULT,
            output_bytes_max: OUTPUT_BYTES_MAX_DEFAULT,
        }
    }
}

/// What a finished program left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when a signal ended the program.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// A successful run with the given stdout (for fakes).
    pub fn ok(stdout: &str) -> Self {
        Self {
            code: Some(0),
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        }
    }

    /// A failed run with the given exit code and stderr (for fakes).
    pub fn failed(code: i32, stderr: &str) -> Self {
        Self {
            code: Some(code),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as text, invalid UTF-8 replaced.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text, trimmed, invalid UTF-8 replaced.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// Why a program could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start `{program}`: {source}; check that it is installed and executable")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` did not finish within {timeout_ms} ms and was killed; it may be stuck on a lock or the kernel, try it by hand")]
    Timeout { program: String, timeout_ms: u64 },
    #[error(
        "`{program}` wrote more than {output_bytes_max} bytes to {stream}; the output was refused"
    )]
    OutputTooLarge {
        program: String,
        stream: &'static str,
        output_bytes_max: usize,
    },
    #[error("talking to `{program}` failed: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `program` with `args` and `env`, writes `stdin` to it, and waits at
/// most `limits.timeout_ms`. Blocking: call it from a blocking thread.
pub fn run_bounded(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    stdin: Option<&[u8]>,
    limits: ExecLimits,
) -> Result<CommandOutput, ExecError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ExecError::Spawn {
        program: program.to_owned(),
        source,
    })?;

    let stdout = child
        .stdout
        .take()
        .map(|s| read_bounded(s, limits.output_bytes_max));
    let stderr = child
        .stderr
        .take()
        .map(|s| read_bounded(s, limits.output_bytes_max));
    let io_error = |source| ExecError::Io {
        program: program.to_owned(),
        source,
    };
    if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), stdin) {
        // A child that exits without reading its stdin closes the pipe: not
        // our error, its exit code tells the story.
        match pipe.write_all(bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io_error(e));
            }
        }
        drop(pipe);
    }

    let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
    let status = loop {
        match child.try_wait().map_err(io_error)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ExecError::Timeout {
                    program: program.to_owned(),
                    timeout_ms: limits.timeout_ms,
                });
            }
            None => thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
        }
    };

    // The child is gone, so its pipes are closed, unless it left a
    // grandchild holding them (a daemonizing plugin): then we stop waiting
    // at the deadline and leave the reader to end with the grandchild.
    let collect = |reader: Option<mpsc::Receiver<Bounded>>, stream: &'static str| {
        let bounded = match reader {
            Some(receiver) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match receiver.recv_timeout(left) {
                    Ok(bounded) => bounded,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        return Err(ExecError::Timeout {
                            program: program.to_owned(),
                            timeout_ms: limits.timeout_ms,
                        })
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => Bounded::default(),
                }
            }
            None => Bounded::default(),
        };
        if bounded.overflowed {
            return Err(ExecError::OutputTooLarge {
                program: program.to_owned(),
                stream,
                output_bytes_max: limits.output_bytes_max,
            });
        }
        Ok(bounded.bytes)
    };
    let stdout = collect(stdout, "stdout")?;
    let stderr = collect(stderr, "stderr")?;
    Ok(CommandOutput {
        code: status.code(),
        stdout,
        stderr,
    })
}

#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    overflowed: bool,
}

/// Reads up to `bytes_max` bytes (and one more to notice overflow) on a
/// thread, then closes the pipe, so a flooding child gets EPIPE instead of
/// filling our memory.
fn read_bounded<R: Read + Send + 'static>(reader: R, bytes_max: usize) -> mpsc::Receiver<Bounded> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let limit = u64::try_from(bytes_max)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        // A read error ends the stream early; the exit code still tells
        // whether the program succeeded, so what was read is kept.
        let _ = reader.take(limit).read_to_end(&mut bytes);
        let overflowed = bytes.len() > bytes_max;
        bytes.truncate(bytes_max);
        // The caller may have stopped waiting; nobody to tell then.
        let _ = sender.send(Bounded { bytes, overflowed });
    });
    receiver
}

/// The boundary through which `ip` and `iptables` are run.
pub trait CommandRunner: Send + Sync {
    /// Runs `program args...` to its end (within the runner's limits).
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, ExecError>;
}

/// Runs real programs with [`run_bounded`].
#[derive(Clone, Debug, Default)]
pub struct SystemRunner {
    pub limits: ExecLimits,
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, ExecError> {
        run_bounded(program, args, &[], None, self.limits)
    }
}

/// Runs every command of an inner runner inside the named network namespace
/// (`ip netns exec NAME ...`), so tests and tools can aim the same code at a
/// scratch namespace instead of the host.
#[derive(Clone, Debug)]
pub struct InNetns<R> {
    pub inner: R,
    pub netns: String,
}

impl<R: CommandRunner> CommandRunner for InNetns<R> {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, ExecError> {
        let mut wrapped = vec!["netns".to_owned(), "exec".to_owned(), self.netns.clone()];
        wrapped.push(program.to_owned());
        wrapped.extend(args.iter().cloned());
        self.inner.run("ip", &wrapped)
    }
}

/// A scripted runner for unit tests: every command is recorded as one line
/// (`program arg arg`); the first rule whose prefix matches the line gives
/// the answer (a rule is used up once when it is marked `once`), else the
/// command succeeds with empty output.
#[derive(Clone, Default)]
pub struct FakeRunner {
    state: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
struct FakeState {
    log: Vec<String>,
    rules: VecDeque<(String, CommandOutput, bool)>,
}

impl FakeRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers every command starting with `prefix` with `output`.
    pub fn answer(&self, prefix: &str, output: CommandOutput) {
        self.lock()
            .rules
            .push_back((prefix.to_owned(), output, false));
    }

    /// Answers the next command starting with `prefix` with `output`, once.
    pub fn answer_once(&self, prefix: &str, output: CommandOutput) {
        self.lock()
            .rules
            .push_back((prefix.to_owned(), output, true));
    }

    /// The commands run so far, one line each.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// Forgets the commands run so far (the rules stay).
    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock has already failed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CommandRunner for FakeRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, ExecError> {
        let mut line = program.to_owned();
        for arg in args {
            line.push(' ');
            line.push_str(arg);
        }
        let mut state = self.lock();
        state.log.push(line.clone());
        let found = state
            .rules
            .iter()
            .position(|(prefix, _, _)| line.starts_with(prefix.as_str()));
        match found {
            Some(index) => {
                let (_, output, once) = &state.rules[index];
                let output = output.clone();
                if *once {
                    state.rules.remove(index);
                }
                Ok(output)
            }
            None => Ok(CommandOutput::ok("")),
        }
    }
}

/// A program that could not run, or ran and failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// Runs `program args…` with `runner`, a non-zero exit an error that names
/// the whole command and what it said on stderr: the one way shoal runs
/// `ip`, `iptables` and the like when it needs them to succeed.
pub fn run_checked<R: CommandRunner + ?Sized>(
    runner: &R,
    program: &str,
    args: &[String],
) -> Result<CommandOutput, RunError> {
    let output = runner.run(program, args)?;
    if output.success() {
        Ok(output)
    } else {
        Err(RunError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: output.stderr_text().trim().to_string(),
        })
    }
}

/// Turns string slices into the owned argument list the runners take.
pub fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_runs_too_long_is_killed() {
        let limits = ExecLimits {
            timeout_ms: 100,
            output_bytes_max: 1024,
        };
        let started = Instant::now();
        let err = run_bounded("sleep", &args(&["5"]), &[], None, limits).unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hold_us() {
        let limits = ExecLimits {
            timeout_ms: 300,
            output_bytes_max: 1024,
        };
        let started = Instant::now();
        // The shell exits at once; its background sleep keeps stdout open.
        let err = run_bounded(
            "sh",
            &args(&["-c", "sleep 5 & echo started"]),
            &[],
            None,
            limits,
        )
        .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn output_beyond_the_bound_is_refused() {
        let limits = ExecLimits {
            timeout_ms: 5_000,
            output_bytes_max: 10,
        };
        let err =
            run_bounded("head", &args(&["-c", "11", "/dev/zero"]), &[], None, limits).unwrap_err();
        assert!(
            matches!(
                err,
                ExecError::OutputTooLarge {
                    stream: "stdout",
                    ..
                }
            ),
            "{err}"
        );
        let ok = run_bounded("head", &args(&["-c", "10", "/dev/zero"]), &[], None, limits).unwrap();
        assert_eq!(ok.stdout.len(), 10);
        // A child that never stops writing is cut off, not waited for.
        let started = Instant::now();
        let err = run_bounded("yes", &[], &[], None, limits).unwrap_err();
        assert!(matches!(err, ExecError::OutputTooLarge { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn stdin_env_and_exit_code_reach_the_caller() {
        let env = vec![("SHOAL_TEST_VALUE".to_owned(), "42".to_owned())];
        let out = run_bounded(
            "sh",
            &args(&["-c", "cat; echo $SHOAL_TEST_VALUE; echo oops >&2; exit 3"]),
            &env,
            Some(b"hello\n"),
            ExecLimits::default(),
        )
        .unwrap();
        assert_eq!(out.stdout_text(), "hello\n42\n");
        assert_eq!(out.stderr_text(), "oops");
        assert_eq!(out.code, Some(3));
    }

    #[test]
    fn the_fake_records_and_answers_by_prefix() {
        let fake = FakeRunner::new();
        fake.answer_once("ip route", CommandOutput::failed(2, "no"));
        assert!(!fake.run("ip", &args(&["route", "show"])).unwrap().success());
        assert!(fake.run("ip", &args(&["route", "show"])).unwrap().success());
        assert_eq!(fake.log(), vec!["ip route show", "ip route show"]);
    }

    #[test]
    fn a_checked_run_takes_a_failure_as_an_error_naming_the_command() {
        let fake = FakeRunner::new();
        fake.answer_once(
            "ip link",
            CommandOutput::failed(1, "Cannot find device \"x\"\n"),
        );
        let error = run_checked(&fake, "ip", &args(&["link", "del", "x"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`ip link del x` failed: Cannot find device \"x\""
        );
        assert!(run_checked(&fake, "ip", &args(&["link", "del", "x"])).is_ok());
        // A program that does not start is the runner's error, as it was.
        let error = run_checked(&SystemRunner::default(), "/nonexistent/ip", &[]).unwrap_err();
        assert!(
            matches!(error, RunError::Exec(ExecError::Spawn { .. })),
            "{error}"
        );
    }
}
