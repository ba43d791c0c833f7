//! Protocol 2: one engine process per (engine, model), spoken to in JSON lines. The harness
//! starts the command once (stdin and stdout are the protocol channel, stderr goes to a file),
//! sends `load`, then `forward` / `decode` / `block` requests, each answered by one line, each
//! with its own timeout. A crash or a timeout kills the process group and fails that request;
//! the next request starts the engine again. At the end the harness sends `shutdown` and kills
//! the group. Tensors still travel as files in a request directory, as in protocol 1.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process;
use super::spec::EngineSpec;
use crate::error::{Error, Result};

/// Sessions alive in this process, (process group, temp dir): removed at `exit` too, since the
/// CLI ends errors with `process::exit`, which runs no destructors.
static LIVE: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());

extern "C" fn end_live_sessions() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for (pgid, dir) in live {
        #[cfg(unix)]
        process::kill_group(pgid as libc::pid_t);
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn register(pgid: u32, dir: &Path) {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function that only takes a lock and removes files.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(end_live_sessions);
        #[cfg(unix)]
        on_signals::install();
    });
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push((pgid, dir.to_path_buf()));
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP end the live sessions too: engines run in process groups
/// of their own, which a terminal's Ctrl-C does not reach, and their directories would stay.
/// The handler only writes the signal number to a pipe (async-signal-safe); a thread reading it
/// ends the sessions, then re-raises the signal with its default action, so the exit status is
/// the signal's as before.
#[cfg(unix)]
mod on_signals {
    use std::sync::atomic::{AtomicI32, Ordering};

    static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn handler(sig: libc::c_int) {
        let fd = WRITE_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let b = sig as u8;
            // SAFETY: write(2) on a pipe is async-signal-safe.
            unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
        }
    }

    pub(super) fn install() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe(2) fills the two descriptors.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return;
        }
        WRITE_FD.store(fds[1], Ordering::Relaxed);
        let read = fds[0];
        std::thread::spawn(move || {
            let mut b = 0u8;
            // SAFETY: reads one byte into `b`.
            if unsafe { libc::read(read, (&mut b as *mut u8).cast(), 1) } == 1 {
                super::end_live_sessions();
                let sig = libc::c_int::from(b);
                // SAFETY: back to the default action, then the same signal again.
                unsafe {
                    libc::signal(sig, libc::SIG_DFL);
                    libc::raise(sig);
                }
            }
        });
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installs a handler that only writes to a pipe; a signal the process was
            // told to ignore (nohup) stays ignored.
            unsafe {
                let previous = libc::signal(sig, handler as *const () as libc::sighandler_t);
                if previous == libc::SIG_IGN {
                    libc::signal(sig, libc::SIG_IGN);
                }
            }
        }
    }
}

fn unregister(pgid: u32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|(p, _)| *p != pgid);
}

/// What the engine said it can do in its `load` reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    /// Incremental decoding through its KV cache (`decode` requests).
    pub decode: bool,
    /// Blocks it can run alone on a given input (`block` requests), as `(path, input tap)`.
    pub blocks: Vec<(String, String)>,
    /// HF taps it can produce for this model (None: whatever it is asked).
    pub taps: Option<Vec<String>>,
    /// Free text the engine reports about itself (version, settings), shown with every trial.
    pub info: Option<String>,
}

/// A running engine process.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
    next_id: u64,
    pub capabilities: Capabilities,
    /// How long `load` took (the engine's start-up, imports included).
    pub started_in: Duration,
}

fn tail(stderr: &Path) -> String {
    let lines = process::tail(stderr, 20);
    if lines.is_empty() {
        "; it printed nothing on stderr".into()
    } else {
        format!("; the last {} lines of its stderr:\n    | {}", lines.len(), lines.join("\n    | "))
    }
}

impl Session {
    /// Start the engine and load `model` (the `load` request's `model` object).
    pub fn start(spec: &EngineSpec, model: Value, options: &Value) -> Result<Session> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("harness-{}-session-", spec.name))
            .tempdir()
            .map_err(|e| Error::io(&std::env::temp_dir(), &e))?;
        let stderr = dir.path().join("stderr.log");
        let file = std::fs::File::create(&stderr).map_err(|e| Error::io(&stderr, &e))?;
        let args: Vec<&String> =
            spec.command.iter().filter(|a| !a.contains(super::spec::REQUEST_PLACEHOLDER)).collect();
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..])
            .current_dir(&spec.root)
            .envs(&spec.env)
            .env("HARNESS_PROTOCOL", "2")
            .env_remove(super::REQUEST_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::engine(format!("cannot start `{}`: {}", args[0], crate::error::lowercase_first(&e.to_string())))
                .file(&spec.file)
                .hint("check `command:` (it runs from the repository root)")
        })?;
        register(child.id(), dir.path());
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        // A reader thread, so a request can time out while the engine is silent.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l.trim().is_empty() => continue,
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let mut s = Session {
            child,
            stdin,
            lines,
            stderr,
            _dir: dir,
            next_id: 0,
            capabilities: Capabilities::default(),
            started_in: Duration::ZERO,
        };
        let start = Instant::now();
        let reply = s.request(
            spec,
            json!({"op": "load", "protocol": 2, "engine": spec.name, "model": model, "options": options}),
        )?;
        s.started_in = start.elapsed();
        s.capabilities = parse_capabilities(&reply);
        Ok(s)
    }

    /// Send one request (an `id` is added) and wait for its reply, up to the engine's timeout.
    /// `ok: false` replies become errors with the engine's message and hint.
    pub fn request(&mut self, spec: &EngineSpec, mut req: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        req["id"] = json!(id);
        let op = req["op"].as_str().unwrap_or("?").to_string();
        let line = serde_json::to_string(&req).map_err(|e| Error::engine(e.to_string()))? + "\n";
        let dead = |s: &mut Session, what: String| {
            s.kill();
            Error::engine(format!("engine `{}` {what}{}", spec.name, tail(&s.stderr))).file(&spec.file)
        };
        if self.stdin.write_all(line.as_bytes()).and_then(|_| self.stdin.flush()).is_err() {
            let status = self.child.try_wait().ok().flatten();
            let how = status.map_or("is not running".to_string(), |st| process::describe_status(&st));
            return Err(dead(self, format!("{how} (protocol 2, before its `{op}` request)")));
        }
        let start = Instant::now();
        let reply = loop {
            let left = spec.timeout.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => match serde_json::from_str::<Value>(&l) {
                    Ok(v) if v.get("id").and_then(Value::as_u64) == Some(id) => break v,
                    // A reply to an earlier request that timed out, or stray output: skip it.
                    Ok(_) => continue,
                    Err(_) => {
                        return Err(dead(
                            self,
                            format!(
                                "wrote a line on stdout that is not JSON: {:?} (protocol 2: stdout carries only \
                                 replies; print anything else to stderr)",
                                l.chars().take(120).collect::<String>()
                            ),
                        ));
                    }
                },
                Err(RecvTimeoutError::Timeout) => {
                    return Err(dead(
                        self,
                        format!(
                            "did not answer its `{op}` request within its timeout of {} s and was killed with its \
                             process group (the next request starts it again)",
                            spec.timeout.as_secs_f64()
                        ),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    let how = status.map_or("exited".to_string(), |st| process::describe_status(&st));
                    return Err(dead(
                        self,
                        format!("{how} during its `{op}` request (the next request starts it again)"),
                    ));
                }
            }
        };
        if reply.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(reply);
        }
        let msg = reply.get("error").and_then(Value::as_str).unwrap_or("failed without a message");
        let mut e = Error::engine(format!("engine `{}` refused `{op}`: {msg}", spec.name)).file(&spec.file);
        if let Some(h) = reply.get("hint").and_then(Value::as_str) {
            e = e.hint(h);
        }
        Err(e)
    }

    /// Whether the process is still there to take requests.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(&mut self) {
        #[cfg(unix)]
        process::kill_group(self.child.id() as libc::pid_t);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.stdin.write_all(b"{\"op\": \"shutdown\"}\n");
            let _ = self.stdin.flush();
            // A moment to exit by itself; then the group goes.
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until && self.alive() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
        unregister(self.child.id());
    }
}

/// The `load` reply's capabilities: `{"capabilities": {"decode": true, "blocks": [{"path":
/// "model.layers.0", "input": "model.embed_tokens"}]}, "taps": [...], "info": "..."}`.
pub fn parse_capabilities(reply: &Value) -> Capabilities {
    let caps = reply.get("capabilities").cloned().unwrap_or(Value::Null);
    let blocks = caps
        .get("blocks")
        .and_then(Value::as_array)
        .map(|bs| {
            bs.iter()
                .filter_map(|b| Some((b.get("path")?.as_str()?.to_string(), b.get("input")?.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Capabilities {
        decode: caps.get("decode").and_then(Value::as_bool).unwrap_or(false),
        blocks,
        taps: reply
            .get("taps")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect()),
        info: reply.get("info").and_then(Value::as_str).map(String::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse_and_default_to_nothing() {
        let c = parse_capabilities(&json!({"ok": true}));
        assert_eq!(c, Capabilities::default());
        let c = parse_capabilities(&json!({"ok": true, "capabilities": {"decode": true,
            "blocks": [{"path": "model.layers.0", "input": "model.embed_tokens"}, {"bad": 1}]},
            "taps": ["logits"], "info": "v1.2"}));
        assert!(c.decode);
        assert_eq!(c.blocks, vec![("model.layers.0".to_string(), "model.embed_tokens".to_string())]);
        assert_eq!(c.taps, Some(vec!["logits".to_string()]));
        assert_eq!(c.info.as_deref(), Some("v1.2"));
    }
}
