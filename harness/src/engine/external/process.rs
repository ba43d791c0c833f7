//! Running an engine's command with a timeout. The command gets its own process group; when it
//! times out the whole group is killed (its children too), and after a normal exit whatever it
//! left running in the group is killed as well. stdout and stderr go to files, so a chatty
//! engine can never block on a full pipe.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How a run ended.
#[derive(Debug)]
pub enum Ended {
    Exited(ExitStatus),
    /// Killed at the timeout, after this long.
    TimedOut(Duration),
}

/// Run `cmd` with stdout/stderr into the given files; kill its process group at `timeout`.
#[cfg(unix)]
pub fn run(mut cmd: Command, timeout: Duration, stdout: &Path, stderr: &Path) -> Result<(Ended, Duration)> {
    use std::os::unix::process::CommandExt;
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| Error::io(p, &e));
    cmd.stdin(Stdio::null()).stdout(file(stdout)?).stderr(file(stderr)?).process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        Error::engine(format!("cannot start `{prog}`: {}", crate::error::lowercase_first(&e.to_string())))
    })?;
    let pid = child.id() as libc::pid_t;
    let deadline = start + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if exited_unreaped(pid) {
            // The leader is a zombie until reaped, so its pid (= the group id) cannot be reused.
            kill_group(pid);
            let status = child.wait().map_err(|e| Error::engine(format!("waiting for the engine: {e}")))?;
            return Ok((Ended::Exited(status), start.elapsed()));
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(pid);
            let _ = child.wait();
            return Ok((Ended::TimedOut(timeout), start.elapsed()));
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

#[cfg(not(unix))]
pub fn run(_cmd: Command, _timeout: Duration, _stdout: &Path, _stderr: &Path) -> Result<(Ended, Duration)> {
    Err(Error::engine("external engines need a Unix system (process groups)").hint("run on Linux or macOS"))
}

/// Whether `pid` has exited, without reaping it (WNOWAIT leaves it reapable).
#[cfg(unix)]
fn exited_unreaped(pid: libc::pid_t) -> bool {
    // SAFETY: waitid only writes into the zeroed siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        #[cfg(target_os = "linux")]
        let who = info.si_pid();
        #[cfg(not(target_os = "linux"))]
        let who = info.si_pid;
        r == 0 && who != 0
    }
}

#[cfg(unix)]
pub(crate) fn kill_group(pgid: libc::pid_t) {
    // SAFETY: plain syscall; ESRCH (nothing left in the group) is fine.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// The last `n` lines of a log file (at most 64 KiB read), each cut at 400 characters.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return vec![] };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return vec![];
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| {
            if l.chars().count() > 400 {
                format!("{}...", l.chars().take(400).collect::<String>())
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// `exited with status 1`, `was killed by signal 11 (SIGSEGV)`.
pub fn describe_status(status: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGBUS => " (SIGBUS)",
                libc::SIGFPE => " (SIGFPE)",
                libc::SIGILL => " (SIGILL)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            return format!("was killed by signal {sig}{name}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => "ended without an exit status".into(),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn exit_status_and_stderr_tail() {
        let d = tempfile::tempdir().unwrap();
        let (out, err) = (d.path().join("out"), d.path().join("err"));
        let cmd = sh("for i in $(seq 1 30); do echo line $i >&2; done; exit 3");
        let (ended, _) = run(cmd, Duration::from_secs(10), &out, &err).unwrap();
        let Ended::Exited(st) = ended else { panic!("{ended:?}") };
        assert_eq!(describe_status(&st), "exited with status 3");
        let t = tail(&err, 20);
        assert_eq!((t.len(), t[0].as_str(), t[19].as_str()), (20, "line 11", "line 30"));
    }

    #[test]
    fn timeout_kills_the_group() {
        let d = tempfile::tempdir().unwrap();
        let (out, err) = (d.path().join("out"), d.path().join("err"));
        let start = Instant::now();
        let (ended, took) = run(sh("sleep 30 & sleep 30"), Duration::from_millis(300), &out, &err).unwrap();
        assert!(matches!(ended, Ended::TimedOut(_)), "{ended:?}");
        assert!(took < Duration::from_secs(5) && start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn what_the_engine_leaves_running_is_killed_after_it_exits() {
        let d = tempfile::tempdir().unwrap();
        let pid_file = d.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; exit 0", pid_file.display());
        let (ended, _) = run(sh(&script), Duration::from_secs(10), &d.path().join("o"), &d.path().join("e")).unwrap();
        assert!(matches!(ended, Ended::Exited(s) if s.success()), "{ended:?}");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit(')').next()?.trim().chars().next()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while state().is_some_and(|s| s != 'Z') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(state().is_none_or(|s| s == 'Z'), "the background child {pid} survived");
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = run(Command::new("/no/such/engine"), Duration::from_secs(1), &d.path().join("o"), &d.path().join("e"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot start `/no/such/engine`"), "{e}");
    }
}
