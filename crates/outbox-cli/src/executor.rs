//! [`CommandExecutor`]: the daemon's [`OperationExecutor`], which runs a configured
//! program once per compensation attempt (`[compensation] command` in the daemon's
//! configuration), so the user's compensation logic can live in any language.
//!
//! # The contract with the command
//!
//! Each attempt starts the program with its arguments, as configured, and:
//!
//! - the environment variable `OUTBOX_OPERATION_TYPE` holds the item's operation type;
//! - stdin carries the item's payload as one JSON document, then end-of-file;
//! - stdout is discarded; the last 2000 bytes of stderr become the failure reason.
//!
//! The outcome:
//!
//! | the command | the attempt | the item |
//! |---|---|---|
//! | exits 0 | succeeded | `resolved` |
//! | exits 75 (`EX_TEMPFAIL`) | failed, transient | retried with backoff (`manual_required` once its retries are used up) |
//! | is killed by a signal | failed, transient | retried |
//! | runs past `timeout_ms` (it is killed) | failed, transient | retried |
//! | cannot be started (missing program, no permission) | failed, transient | retried, so fixing the host recovers it |
//! | exits with any other code | failed, permanent | `manual_required` at once |
//!
//! The command must be idempotent: an attempt that succeeded may run again if the daemon
//! stops before recording it. The payload is never logged.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use outbox_ports::{ExecuteError, OperationExecutor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The environment variable carrying the operation type to the command.
pub(crate) const OPERATION_TYPE_ENV: &str = "OUTBOX_OPERATION_TYPE";

/// The exit code that asks for a retry (`EX_TEMPFAIL` of sysexits.h).
pub(crate) const EXIT_TEMPFAIL: i32 = 75;

/// How much of the command's stderr (its end) goes into the failure reason.
const STDERR_TAIL: usize = 2000;

/// Runs a program per compensation attempt; see the [module](self) for the contract.
#[derive(Debug)]
pub(crate) struct CommandExecutor {
    program: String,
    args: Vec<String>,
    timeout: Duration,
    /// Once cancelled, no attempt starts (see [`Self::parked`]).
    shutdown: CancellationToken,
    parked: Notify,
}

impl CommandExecutor {
    /// Runs `command` (program, then arguments; not empty) for each attempt, killing it
    /// after `timeout`. `None` for an empty command.
    pub(crate) fn new(command: &[String], timeout: Duration) -> Option<Self> {
        let (program, args) = command.split_first()?;
        Some(Self {
            program: program.clone(),
            args: args.to_vec(),
            timeout,
            shutdown: CancellationToken::new(),
            parked: Notify::new(),
        })
    }

    /// Starts no attempt once `shutdown` is cancelled: the attempt waits forever instead,
    /// so the item stays reserved and is retried after its reservation (by this daemon
    /// restarted, or another), without spending one of its retries. An attempt already
    /// running finishes.
    pub(crate) fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Resolves once an attempt was held back because of the shutdown: the worker is
    /// then idle for good and the process may exit.
    pub(crate) async fn parked(&self) {
        self.parked.notified().await;
    }

    async fn attempt(&self, operation_type: &str, payload: &[u8]) -> Result<(), ExecuteError> {
        let program = &self.program;
        let mut child = Command::new(program)
            .args(&self.args)
            .env(OPERATION_TYPE_ENV, operation_type)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                warn!(%program, error = %e, "cannot start the compensation command");
                ExecuteError::Retryable(format!("cannot start `{program}`: {e}"))
            })?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command that exits without reading its input closes the pipe: not
                // an error of ours, its exit status tells.
                let _ = stdin.write_all(payload).await;
                let _ = stdin.shutdown().await;
            }
        };
        let run = async {
            let (status, tail, ()) = tokio::join!(child.wait(), tail(stderr), feed);
            (status, tail)
        };
        let Ok((status, tail)) = tokio::time::timeout(self.timeout, run).await else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            warn!(%program, timeout = ?self.timeout, "the compensation command timed out and was killed");
            return Err(ExecuteError::Retryable(format!(
                "`{program}` did not finish within {:?} and was killed",
                self.timeout
            )));
        };
        let status = status
            .map_err(|e| ExecuteError::Retryable(format!("cannot wait for `{program}`: {e}")))?;
        outcome(program, status, &tail)
    }
}

/// The attempt's result from the command's exit status and the end of its stderr.
fn outcome(program: &str, status: ExitStatus, stderr: &str) -> Result<(), ExecuteError> {
    let said = if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    };
    match status.code() {
        Some(0) => Ok(()),
        Some(EXIT_TEMPFAIL) => Err(ExecuteError::Retryable(format!(
            "`{program}` exited with {EXIT_TEMPFAIL} (temporary failure){said}"
        ))),
        Some(code) => Err(ExecuteError::Permanent(format!(
            "`{program}` exited with {code}{said}"
        ))),
        None => Err(ExecuteError::Retryable(format!(
            "`{program}` was killed by {}{said}",
            signal(status)
        ))),
    }
}

#[cfg(unix)]
fn signal(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    status
        .signal()
        .map_or_else(|| "a signal".to_owned(), |n| format!("signal {n}"))
}

#[cfg(not(unix))]
fn signal(_: ExitStatus) -> String {
    "a signal".to_owned()
}

/// Reads `pipe` to its end, keeping the last [`STDERR_TAIL`] bytes, trimmed.
async fn tail(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::with_capacity(STDERR_TAIL);
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

#[async_trait]
impl OperationExecutor for CommandExecutor {
    async fn execute(
        &self,
        operation_type: &str,
        payload: &serde_json::Value,
    ) -> Result<(), ExecuteError> {
        if self.shutdown.is_cancelled() {
            self.parked.notify_one();
            std::future::pending::<()>().await;
        }
        let payload = serde_json::to_vec(payload)
            .map_err(|e| ExecuteError::Permanent(format!("cannot encode the payload: {e}")))?;
        self.attempt(operation_type, &payload).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    fn sh(script: &str, timeout: Duration) -> CommandExecutor {
        let command = ["/bin/sh", "-c", script].map(str::to_owned);
        CommandExecutor::new(&command, timeout).unwrap()
    }

    async fn run(script: &str) -> Result<(), ExecuteError> {
        sh(script, Duration::from_secs(10))
            .execute("refund", &json!({ "order": 7 }))
            .await
    }

    /// An empty directory of the test's own.
    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "outbox-cli-executor-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn quoted(path: &Path) -> String {
        format!("'{}'", path.display())
    }

    #[tokio::test]
    async fn exit_0_succeeds() {
        assert_eq!(run("exit 0").await, Ok(()));
    }

    #[tokio::test]
    async fn exit_75_is_transient() {
        let result = run("echo 'gateway busy' >&2; exit 75").await;
        let Err(ExecuteError::Retryable(message)) = result else {
            panic!("{result:?}");
        };
        assert!(message.contains("75"), "{message}");
        assert!(message.contains("gateway busy"), "{message}");
    }

    #[tokio::test]
    async fn other_exit_codes_are_permanent_with_the_end_of_stderr() {
        let result = run("echo 'ignored' >&2; echo 'card declined' >&2; exit 3").await;
        let Err(ExecuteError::Permanent(message)) = result else {
            panic!("{result:?}");
        };
        assert!(message.contains("exited with 3"), "{message}");
        assert!(message.contains("card declined"), "{message}");

        // A chatty command: only the end of what it said is kept.
        let result = run("i=0; while [ $i -lt 500 ]; do echo 'noise noise noise'; \
             i=$((i+1)); done >&2; echo 'the real reason' >&2; exit 1")
        .await;
        let Err(ExecuteError::Permanent(message)) = result else {
            panic!("{result:?}");
        };
        assert!(message.ends_with("the real reason"), "{message}");
        assert!(message.len() < STDERR_TAIL + 100, "{}", message.len());
    }

    #[tokio::test]
    async fn killed_by_a_signal_is_transient() {
        let result = run("kill -9 $$").await;
        let Err(ExecuteError::Retryable(message)) = result else {
            panic!("{result:?}");
        };
        assert!(message.contains("signal 9"), "{message}");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_command_and_is_transient() {
        let dir = scratch();
        let (pid, finished) = (dir.join("pid"), dir.join("finished"));
        let script = format!(
            "echo $$ > {}; sleep 1; touch {}",
            quoted(&pid),
            quoted(&finished)
        );
        let started = Instant::now();
        let result = sh(&script, Duration::from_millis(300))
            .execute("refund", &json!({}))
            .await;
        let Err(ExecuteError::Retryable(message)) = result else {
            panic!("{result:?}");
        };
        assert!(message.contains("killed"), "{message}");
        assert!(started.elapsed() < Duration::from_millis(900));
        // Killed and reaped: the process is gone and never finishes its script.
        let pid = std::fs::read_to_string(&pid).unwrap();
        assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists());
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert!(!finished.exists(), "the command ran on after the timeout");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_missing_program_is_transient() {
        let command = ["/nonexistent/compensate".to_owned()];
        let executor = CommandExecutor::new(&command, Duration::from_secs(1)).unwrap();
        let result = executor.execute("refund", &json!({})).await;
        let Err(ExecuteError::Retryable(message)) = result else {
            panic!("{result:?}");
        };
        assert!(message.contains("cannot start"), "{message}");
        assert!(message.contains("/nonexistent/compensate"), "{message}");
    }

    #[tokio::test]
    async fn the_command_gets_the_payload_on_stdin_and_the_operation_type() {
        let dir = scratch();
        let (op, input) = (dir.join("op"), dir.join("input"));
        let script = format!(
            "printf %s \"$OUTBOX_OPERATION_TYPE\" > {}; cat > {}",
            quoted(&op),
            quoted(&input)
        );
        let payload = json!({ "order": 7, "amount": "12.50", "note": "ünïcode" });
        let result = sh(&script, Duration::from_secs(10))
            .execute("refund.card", &payload)
            .await;
        assert_eq!(result, Ok(()));
        assert_eq!(std::fs::read_to_string(&op).unwrap(), "refund.card");
        let received: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&input).unwrap()).unwrap();
        assert_eq!(received, payload);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_command_that_does_not_read_its_input_is_judged_by_its_exit() {
        let big = json!({ "blob": "x".repeat(1 << 20) });
        let executor = sh("exit 0", Duration::from_secs(10));
        assert_eq!(executor.execute("refund", &big).await, Ok(()));
        let executor = sh("exit 3", Duration::from_secs(10));
        let result = executor.execute("refund", &big).await;
        assert!(
            matches!(result, Err(ExecuteError::Permanent(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn after_shutdown_no_attempt_starts() {
        let dir = scratch();
        let ran = dir.join("ran");
        let shutdown = CancellationToken::new();
        let executor = sh(&format!("touch {}", quoted(&ran)), Duration::from_secs(10))
            .with_shutdown(shutdown.clone());
        shutdown.cancel();
        let payload = json!({});
        tokio::select! {
            result = executor.execute("refund", &payload) => panic!("attempted: {result:?}"),
            () = executor.parked() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => panic!("not parked"),
        }
        assert!(!ran.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
