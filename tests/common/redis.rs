//! A `redis-server` for the Redis tier's tests and benches: the one named
//! by `TOWER_SSR_REDIS_URL`, or else one of this process's own, started on
//! first use from `PATH` on a free loopback port with no persistence and
//! stopped when the process ends, however it ends.
//!
//! Tests that need it carry
//! `#[cfg_attr(not(tower_ssr_redis), ignore = "...")]`: `build.rs` sets
//! `tower_ssr_redis` when the variable is set or `redis-server` is on
//! `PATH`, so without either they are reported as ignored, never passed.
//! Tests sharing the server keep apart by key namespace.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a fresh `redis-server` may take to answer `PING`: a hang
/// guard, not a timing assertion.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// The URL of the Redis the tests share: `TOWER_SSR_REDIS_URL` when set,
/// else a `redis-server` of this process's own, started once.
///
/// # Panics
///
/// When neither is available: a test that needs Redis must be ignored
/// (`tower_ssr_redis` unset), never pass without it.
pub fn redis_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("TOWER_SSR_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let port = own_server();
            format!("redis://127.0.0.1:{port}")
        }
    })
    .clone()
}

/// Starts the process's own `redis-server` and keeps it for the whole
/// run; its port.
fn own_server() -> u16 {
    // Held until the process exits: the end of the pipe to the watcher.
    static SERVER: OnceLock<Child> = OnceLock::new();
    // A free port can be taken between the probe and the bind on a busy
    // machine: try a few.
    for _ in 0..5 {
        let port = free_port();
        let Some(mut child) = spawn_watched(port, &[]) else {
            panic!("redis-server is not on PATH and TOWER_SSR_REDIS_URL is unset");
        };
        if wait_up(port, &mut child) {
            SERVER.set(child).expect("one server per process");
            return port;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("redis-server did not start on a free port in 5 tries");
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `redis-server` on `port` (no persistence, loopback only, `extra`
/// arguments after), under a shell that stops it once this process's end
/// of the shell's stdin closes: at exit, even a killed one, the kernel
/// closes it and the server goes too. Killing the returned child (the
/// shell) also stops the server. `None` when `redis-server` cannot run.
pub fn spawn_watched(port: u16, extra: &[&str]) -> Option<Child> {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .ok()?;
    Command::new("sh")
        .arg("-c")
        // `cat` returns at end of input; then the server is stopped. A
        // TERM to the shell stops it too.
        .arg(r#"redis-server "$@" </dev/null & r=$!; trap 'kill $r; exit' TERM INT; cat >/dev/null; kill $r; wait $r"#)
        .arg("sh")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Whether the server on `port` answers `PING` before it exits or the
/// patience runs out.
fn wait_up(port: u16, child: &mut Child) -> bool {
    let start = Instant::now();
    while start.elapsed() < START_PATIENCE {
        if answers_ping(port) {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Whether something on `port` answers `PING` with `+PONG`.
pub fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(START_PATIENCE));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
