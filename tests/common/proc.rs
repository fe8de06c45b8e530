//! Processes and sockets as the OS sees them.
//!
//! - [`ProcGuard`]: a child process SIGKILLed and reaped on drop, panics included.
//! - [`pid_alive`], [`kill_sipmesh_pid`]: processes the harness did not spawn
//!   itself (the nodes of `cluster up`).
//! - [`tail`]: the end of a log file, for failure messages.
//! - [`free_addr`]: a port that was free a moment ago, for addresses that must
//!   be known before any node starts.
//! - [`socket_inodes`], [`tcp_rows`], [`established_between`]: ESTABLISHED TCP
//!   connections between two node processes, from `/proc`.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::poll::poll_until;

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// SIGKILL `pid` if it is still a live sipmesh process (guards against PID reuse).
pub fn kill_sipmesh_pid(pid: i32) {
    if pid <= 1 || !pid_alive(pid) {
        return;
    }
    let is_ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("sipmesh"))
        .unwrap_or(false);
    if is_ours {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// A child process killed (SIGKILL) and reaped on drop, with everything it
/// started: it leads a process group of its own, and the whole group is
/// killed (Kamailio's workers outlived a SIGKILL of their parent).
pub struct ProcGuard {
    child: Option<Child>,
    /// For messages.
    pub name: String,
}

impl ProcGuard {
    /// Spawn `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> ProcGuard {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ProcGuard {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// Its PID.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// Exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL its process group and reap it now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The group's id stays taken while any member lives, even after
            // the leader was reaped, so this cannot reach another group.
            let _ = nix::sys::signal::killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait (bounded) for it to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        poll_until(deadline, Duration::from_millis(20), || self.try_wait())
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A 127.0.0.1 port that was free a moment ago (bound, then released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// Socket inodes held by `pid` (from its `/proc/<pid>/fd` symlinks).
pub fn socket_inodes(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(i) = inode.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// One row of `/proc/net/tcp{,6}`.
#[derive(Clone, Debug)]
pub struct TcpRow {
    pub local_port: u16,
    pub remote_port: u16,
    /// Hex state; `01` = ESTABLISHED.
    pub state: String,
    pub inode: u64,
}

/// Every row of `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn tcp_rows() -> Vec<TcpRow> {
    let port = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let mut rows = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            if let (Some(local_port), Some(remote_port), Ok(inode)) = (port(f[1]), port(f[2]), f[9].parse()) {
                rows.push(TcpRow {
                    local_port,
                    remote_port,
                    state: f[3].to_owned(),
                    inode,
                });
            }
        }
    }
    rows
}

/// ESTABLISHED connections opened by process `a` to `b`'s mesh port, and by
/// `b` to `a`'s mesh port: `(a_to_b, b_to_a)`.
pub fn established_between(a_pid: i32, a_mesh_port: u16, b_pid: i32, b_mesh_port: u16) -> (usize, usize) {
    let a = socket_inodes(a_pid);
    let b = socket_inodes(b_pid);
    let rows = tcp_rows();
    let count = |mine: &HashSet<u64>, port: u16| {
        rows.iter()
            .filter(|r| r.state == "01" && mine.contains(&r.inode) && r.remote_port == port)
            .count()
    };
    (count(&a, b_mesh_port), count(&b, a_mesh_port))
}
