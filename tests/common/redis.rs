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
//!
//! Likewise a Redis Cluster ([`cluster_urls`]): the masters named by
//! `TOWER_SSR_REDIS_CLUSTER_URLS`, or else three of this process's own
//! ([`Cluster::start`]); tests that need it carry
//! `#[cfg_attr(not(tower_ssr_redis_cluster), ignore = "...")]`, set when
//! the variable is set or `redis-server` and `redis-cli` are on `PATH`.
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
    spawn_watched_in(port, extra, None)
}

/// [`spawn_watched`], and once the server is stopped, `dir` (its working
/// directory) is removed, even when this process was killed.
fn spawn_watched_in(port: u16, extra: &[&str], dir: Option<&str>) -> Option<Child> {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .ok()?;
    Command::new("sh")
        .arg("-c")
        // `cat` returns at end of input; then the server is stopped. A
        // TERM to the shell stops it too.
        .arg(r#"redis-server "$@" </dev/null & r=$!; trap 'kill $r; wait $r; [ -n "$TSR_DIR" ] && rm -rf "$TSR_DIR"; exit' TERM INT; cat >/dev/null; kill $r; wait $r; [ -n "$TSR_DIR" ] && rm -rf "$TSR_DIR""#)
        .env("TSR_DIR", dir.unwrap_or(""))
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
pub fn wait_up(port: u16, child: &mut Child) -> bool {
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

/// The seed URLs of the Redis Cluster the tests share:
/// `TOWER_SSR_REDIS_CLUSTER_URLS` (comma-separated) when set, else a
/// cluster of three masters of this process's own, made once (see
/// [`Cluster::start`]) and stopped when the process ends.
///
/// # Panics
///
/// When neither is available: a test that needs a cluster must be ignored
/// (`tower_ssr_redis_cluster` unset), never pass without it.
pub fn cluster_urls() -> Vec<String> {
    static URLS: OnceLock<Vec<String>> = OnceLock::new();
    static OWN: OnceLock<Cluster> = OnceLock::new();
    URLS.get_or_init(|| match std::env::var("TOWER_SSR_REDIS_CLUSTER_URLS") {
        Ok(urls) if !urls.trim().is_empty() => urls
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect(),
        _ => {
            let cluster = Cluster::start(3);
            let urls = cluster.urls();
            let _ = OWN.set(cluster);
            urls
        }
    })
    .clone()
}

/// A Redis Cluster of this process's own: masters on free loopback ports,
/// each in a temporary directory (its `nodes.conf`), no replicas, no
/// persistence; stopped (and the directories removed) when this is
/// dropped or the process ends, however it ends.
pub struct Cluster {
    /// The masters' ports.
    pub ports: Vec<u16>,
    /// The watching shells (see [`spawn_watched`]); dropping one stops
    /// its node.
    nodes: Vec<Child>,
    /// Each node's directory (its `nodes.conf`), for [`Cluster::restart`].
    dirs: Vec<String>,
    /// Each node's `redis-server` pid, for signals.
    pids: Vec<u32>,
    /// Watchers of nodes [`Cluster::kill`]ed: their shells are gone, their
    /// `cat` holds on until this is dropped (it never removes a directory
    /// a restarted node uses).
    retired: Vec<Child>,
}

impl Cluster {
    /// Starts `masters` `redis-server --cluster-enabled yes` and joins them
    /// with `redis-cli --cluster create … --cluster-replicas 0`, then
    /// waits until every node says `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` cannot run, or the cluster does
    /// not form in a few tries.
    pub fn start(masters: usize) -> Cluster {
        for _ in 0..3 {
            if let Some(cluster) = Self::try_start(masters) {
                return cluster;
            }
        }
        panic!("a redis cluster of {masters} masters did not form in 3 tries");
    }

    fn try_start(masters: usize) -> Option<Cluster> {
        let mut cluster = Cluster {
            ports: Vec::new(),
            nodes: Vec::new(),
            dirs: Vec::new(),
            pids: Vec::new(),
            retired: Vec::new(),
        };
        for _ in 0..masters {
            let port = cluster_port();
            let dir = std::env::temp_dir()
                .join(format!("tower-ssr-cluster-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).ok()?;
            let dir_arg = dir.to_str()?.to_owned();
            let mut node = spawn_node(port, &dir_arg);
            // Kept first, so that a failed try still stops it.
            let up = wait_up(port, &mut node);
            cluster.nodes.push(node);
            if !up {
                return None;
            }
            cluster.ports.push(port);
            cluster.dirs.push(dir_arg);
            cluster.pids.push(pid(port));
        }
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is not on PATH");
        if !status.success() {
            return None;
        }
        cluster.wait_ok().then_some(cluster)
    }

    /// Whether every node says `cluster_state:ok` before the patience
    /// runs out.
    pub fn wait_ok(&self) -> bool {
        let start = Instant::now();
        while start.elapsed() < START_PATIENCE {
            if self.is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether every node says `cluster_state:ok` now.
    pub fn is_ok(&self) -> bool {
        self.ports
            .iter()
            .all(|&p| command(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    }

    /// The nodes' `redis-server` pids, in the order of [`Cluster::ports`].
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// The index (in [`Cluster::ports`]) of the master that holds `key`'s
    /// slot: the one node that does not answer `-MOVED`.
    ///
    /// # Panics
    ///
    /// When no node answers for it.
    pub fn owner(&self, key: &str) -> usize {
        self.ports
            .iter()
            .position(|&p| command(p, &["EXISTS", key]).starts_with(':'))
            .unwrap_or_else(|| panic!("no master answers for {key}"))
    }

    /// Pauses node `i` (`SIGSTOP`): it holds every connection, answers
    /// nothing.
    pub fn pause(&self, i: usize) {
        signal(self.pids[i], "STOP");
    }

    /// Resumes node `i` (`SIGCONT`).
    pub fn resume(&self, i: usize) {
        signal(self.pids[i], "CONT");
    }

    /// Kills node `i` (`SIGKILL`, paused or not: a crash; its data is
    /// gone, its `nodes.conf` stays) and waits until its port is free.
    pub fn kill(&mut self, i: usize) {
        signal(self.pids[i], "KILL");
        // The watching shell goes without its trap (SIGKILL): it must not
        // remove the directory the restarted node reads.
        // A placeholder until the restart: a process done at once.
        let placeholder = Command::new("true")
            .stdin(Stdio::piped())
            .spawn()
            .expect("true");
        let mut watcher = std::mem::replace(&mut self.nodes[i], placeholder);
        let _ = watcher.kill();
        let _ = watcher.wait();
        self.retired.push(watcher);
        let start = Instant::now();
        while answers_ping(self.ports[i]) {
            assert!(start.elapsed() < START_PATIENCE, "node {i} did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Restarts node `i` after [`Cluster::kill`]: the same port and
    /// `nodes.conf`, so it rejoins as the master of its slots (empty).
    /// Does not wait for `cluster_state:ok` ([`Cluster::wait_ok`]).
    ///
    /// # Panics
    ///
    /// When it does not answer `PING`.
    pub fn restart(&mut self, i: usize) {
        let mut node = spawn_node(self.ports[i], &self.dirs[i]);
        assert!(
            wait_up(self.ports[i], &mut node),
            "node {i} did not restart"
        );
        let mut placeholder = std::mem::replace(&mut self.nodes[i], node);
        let _ = placeholder.wait();
        self.pids[i] = pid(self.ports[i]);
    }

    /// The seed URLs, one per master.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // End of input: the watching shell stops the node and removes
            // its directory.
            drop(node.stdin.take());
            let _ = node.wait();
        }
        // Their `cat`s end with their input.
        self.retired.clear();
    }
}

/// A cluster node on `port` in `dir` (its `nodes.conf`), watched: see
/// [`spawn_watched`].
fn spawn_node(port: u16, dir: &str) -> Child {
    spawn_watched_in(
        port,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--dir",
            dir,
        ],
        Some(dir),
    )
    .expect("redis-server is not on PATH")
}

/// The pid of the `redis-server` on `port` (from `INFO server`).
///
/// # Panics
///
/// When it does not say.
pub fn pid(port: u16) -> u32 {
    let info = command(port, &["INFO", "server"]);
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_id from port {port}: {info:?}"))
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to process `pid`.
///
/// # Panics
///
/// When `kill` fails.
pub fn signal(pid: u32, signal: &str) {
    // The shell's own `kill`: no procps needed.
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {pid}"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

/// A free loopback port whose cluster bus port (the port + 10000) is free
/// and in range too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Sends one command (plain arguments) to the node on `port` and returns
/// the reply as text (bulk strings whole; enough for `CLUSTER INFO`,
/// `CLUSTER KEYSLOT`, `DBSIZE`, `EXISTS`). Empty when the node does not
/// answer.
pub fn command(port: u16, args: &[&str]) -> String {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    raw_command(("127.0.0.1", port), &args)
}

/// Sends one RESP command to `addr` and reads one reply (a bulk string
/// is read to its end).
pub fn raw_command(addr: impl std::net::ToSocketAddrs, args: &[&[u8]]) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(START_PATIENCE));
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        cmd.extend_from_slice(a);
        cmd.extend_from_slice(b"\r\n");
    }
    if s.write_all(&cmd).is_err() {
        return String::new();
    }
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if reply_complete(&got) {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether `got` holds one whole RESP reply of the simple kinds (status,
/// error, integer, bulk string); other kinds are read as one line.
fn reply_complete(got: &[u8]) -> bool {
    let Some(eol) = got.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if got[0] != b'$' {
        return true;
    }
    let len: i64 = std::str::from_utf8(&got[1..eol])
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(-1);
    len < 0 || got.len() >= eol + 2 + len as usize + 2
}
