//! Running `nodetool` and `cqlsh`: a child process in its own process group, output captured up to
//! a limit, and the whole group killed when the time runs out (nodetool is a shell script that
//! starts a JVM; killing only the script would leave the JVM running).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::error::CassandraError;

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// One command to run.
#[derive(Debug)]
pub(crate) struct Invocation<'a> {
    pub program: &'a Path,
    /// Which config setting names `program` (for error messages).
    pub setting: &'static str,
    pub args: Vec<String>,
    /// The command line shown in errors and logs: secrets left out.
    pub display: String,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// Which config setting bounds `timeout` (for error messages).
    pub timeout_setting: &'static str,
    pub max_output: u64,
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R, cap: u64) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut overflow = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // Keep draining past the cap so the child never blocks on a full pipe.
                if (out.len() as u64) + (n as u64) <= cap {
                    out.extend_from_slice(&buf[..n]);
                } else {
                    overflow = true;
                }
            }
        }
    }
    (out, overflow)
}

/// Runs the command to completion or until the timeout, when its process group is killed.
pub(crate) async fn run(inv: Invocation<'_>) -> Result<Output, CassandraError> {
    let mut cmd = Command::new(inv.program);
    cmd.args(&inv.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &inv.env {
        cmd.env(k, v);
    }
    tracing::debug!(command = %inv.display, "running");
    let mut child = cmd.spawn().map_err(|source| CassandraError::Spawn {
        program: inv.program.to_owned(),
        command: inv.display.clone(),
        setting: inv.setting,
        source,
    })?;
    let pid = child.id();
    // If this future is dropped (the caller gave up), the whole group goes too, not only the script.
    let mut guard = GroupGuard(pid);
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_capped(s, inv.max_output)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(read_capped(s, inv.max_output)));
    let status = match tokio::time::timeout(inv.timeout, child.wait()).await {
        Ok(Ok(status)) => {
            // The leader is reaped; its group lives on only while members remain (then its id
            // cannot be reused), which is the only case the collection timeout below handles.
            guard.0 = None;
            status
        }
        Ok(Err(e)) => {
            guard.0 = None;
            return Err(CassandraError::Spawn {
                program: inv.program.to_owned(),
                command: inv.display,
                setting: inv.setting,
                source: e,
            });
        }
        Err(_) => {
            kill_group(pid);
            // Disarm before reaping: once reaped, the pid may be reused and must not be signalled.
            guard.0 = None;
            let _ = child.kill().await;
            return Err(CassandraError::Timeout {
                command: inv.display,
                after: inv.timeout,
                setting: inv.timeout_setting,
            });
        }
    };
    // The group may hold children that keep the pipes open after the leader exited: bound the wait.
    let collect = async {
        let out = match stdout {
            Some(h) => h.await.unwrap_or_default(),
            None => Default::default(),
        };
        let err = match stderr {
            Some(h) => h.await.unwrap_or_default(),
            None => Default::default(),
        };
        (out, err)
    };
    let ((out, out_over), (err, err_over)) = match tokio::time::timeout(Duration::from_secs(5), collect).await {
        Ok(v) => v,
        Err(_) => {
            kill_group(pid);
            return Err(CassandraError::Timeout {
                command: inv.display,
                after: inv.timeout,
                setting: inv.timeout_setting,
            });
        }
    };
    if out_over || err_over {
        return Err(CassandraError::Parse {
            command: inv.display,
            reason: format!("the output exceeded max_output ({} bytes)", inv.max_output),
            excerpt: String::from_utf8_lossy(&out[..out.len().min(200)]).into_owned(),
        });
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(Output {
        code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

/// Kills the process group on drop unless disarmed (`.0 = None`).
#[derive(Debug)]
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // The child leads its own group (process_group(0)): this reaches the JVM under the script.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn inv(script: &str, timeout: Duration) -> Invocation<'static> {
        Invocation {
            program: Path::new("/bin/sh"),
            setting: "nodetool",
            args: vec!["-c".into(), script.into()],
            display: "sh test".into(),
            env: vec![("CASSETTE_TEST_VAR".into(), "hello".into())],
            timeout,
            timeout_setting: "command_timeout",
            max_output: 1 << 20,
        }
    }

    #[tokio::test]
    async fn captures_output_exit_code_and_env() {
        let o = run(inv("echo out $CASSETTE_TEST_VAR; echo err >&2; exit 3", Duration::from_secs(10))).await.unwrap();
        assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (Some(3), "out hello\n", "err\n"));
    }

    #[tokio::test]
    async fn kills_the_whole_group_on_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("grandchild-survived");
        // The grandchild would write the marker after 2 s unless the group is killed.
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let start = Instant::now();
        let e = run(inv(&script, Duration::from_millis(300))).await.unwrap_err();
        assert!(matches!(e, CassandraError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn missing_programs_and_huge_output_are_errors() {
        let mut i = inv("true", Duration::from_secs(5));
        i.program = Path::new("/nonexistent/nodetool");
        let e = run(i).await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/nodetool") && e.contains("set nodetool"), "{e}");
        let mut i = inv("head -c 3000000 /dev/zero", Duration::from_secs(10));
        i.max_output = 1 << 20;
        let e = run(i).await.unwrap_err().to_string();
        assert!(e.contains("max_output"), "{e}");
    }

    #[tokio::test]
    async fn a_cancelled_run_kills_the_group() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("survived");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let r = tokio::time::timeout(Duration::from_millis(300), run(inv(&script, Duration::from_secs(60)))).await;
        assert!(r.is_err(), "the caller gave up first");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the grandchild outlived the cancelled call");
    }

    #[tokio::test]
    async fn reports_signals() {
        let o = run(inv("kill -TERM $$", Duration::from_secs(5))).await.unwrap();
        assert_eq!((o.code, o.signal), (None, Some(15)));
    }
}
