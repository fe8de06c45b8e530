//! Real phones for the call tests: Debian's baresip 1.0, one process per
//! phone, driven through its stdin (the `stdio` + `menu` modules) and read
//! back from its log, which holds baresip's SIP trace (`-s`).
//!
//! - [`baresip`]: the binary, or `None` (the caller skips outside CI).
//! - [`write_sine_wav`]: the audio every phone sends.
//! - [`Phone`]: config and accounts written, process spawned (killed by PID
//!   on drop), commands, bounded waits for log lines, the parsed trace
//!   ([`Traced`]) and what it says about RTP.
//!
//! Settings that matter with baresip 1.0 (found by experiment):
//! - `net_interface 127.0.0.1`: without it the SDP offers the machine's
//!   first non-loopback address and media leaves loopback (`lo` is refused:
//!   "could not get IPv4 address"). `sip_listen 127.0.0.1:0` only binds SIP.
//! - `audio_source aufile,WAV`: baresip *hangs up* when the file ends
//!   ("menu: audio error (0,end of file)"), so the WAV must outlast the call.
//! - No audio player module exists without sound hardware (aufile is a
//!   source only in 1.0); RTP is still received and counted.
//! - The trace prints each message between `ESC[36;1m#` + `TRANSPORT SRC ->
//!   DST` and `ESC[;m`; a response shows the Via sent-by as DST, but goes
//!   down the connection its request came on.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use sipmesh_actors::sip::{NameAddr, SipMessage, StartLine};

use crate::common::{poll_until, tail, Cluster, DOMAIN};
use crate::sip_ua::{ca_path, client_addr, password};

/// baresip's modules in Debian.
pub const MODULES: &str = "/usr/lib/baresip/modules";
/// Default wait for something a phone should print.
pub const PHONE_WAIT: Duration = Duration::from_secs(10);
/// `-t`: every phone quits by itself after this long, whatever the test does.
pub const PHONE_LIFETIME_S: u32 = 90;
/// Length of the WAV the phones send: longer than any call of the tests,
/// since baresip ends a call when its audio file ends.
pub const WAV_SECONDS: u32 = 40;
/// What baresip prints once a message has been sent or received.
const TRACE_START: &str = "\x1b[36;1m#\n";
const TRACE_END: &str = "\x1b[;m";

/// `baresip` from PATH.
pub fn baresip() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("baresip"))
            .find(|p| p.is_file())
    })
}

/// A 440 Hz sine, 8 kHz mono S16LE (what aufile and PCMU want), `seconds` long.
pub fn write_sine_wav(path: &Path, seconds: u32) {
    let rate = 8000u32;
    let samples: Vec<u8> = (0..rate * seconds)
        .flat_map(|i| {
            let t = f64::from(i) / f64::from(rate);
            ((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16).to_le_bytes()
        })
        .collect();
    let data_len = samples.len() as u32;
    let mut wav = Vec::with_capacity(44 + samples.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes()); // byte rate
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.extend_from_slice(&samples);
    std::fs::write(path, wav).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// How a phone answers an incoming call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `answermode=auto`: at once.
    Auto,
    /// baresip's default: it rings until `/accept`.
    Manual,
}

/// One SIP message of the trace.
#[derive(Debug)]
pub struct Traced {
    /// Sent by the phone (else received).
    pub sent: bool,
    /// `TLS 127.0.0.1:A -> 127.0.0.1:B` as printed.
    pub path: String,
    pub msg: SipMessage,
}

impl Traced {
    /// `INVITE` for a request, `200 INVITE` (status and CSeq method) for a response.
    pub fn summary(&self) -> String {
        match &self.msg.start {
            StartLine::Request { method, .. } => method.to_string(),
            StartLine::Response { code, .. } => {
                let method = self.msg.cseq().map(|c| c.method.to_string()).unwrap_or_default();
                format!("{code} {method}")
            }
        }
    }

    pub fn call_id(&self) -> &str {
        self.msg.call_id().unwrap_or("")
    }

    /// The port of the body's `m=audio` line.
    pub fn sdp_audio_port(&self) -> Option<u16> {
        String::from_utf8_lossy(&self.msg.body)
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| p.parse().ok())
    }

    /// The body as text.
    pub fn body(&self) -> String {
        String::from_utf8_lossy(&self.msg.body).into_owned()
    }
}

/// A baresip process registered as one user on one node.
pub struct Phone {
    /// For messages: `alice`, `bob-fe2`, …
    pub name: String,
    pub aor: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// Every node's client address: a trace line from one is received.
    nodes: Vec<SocketAddr>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Phone {
    /// Write `DIR/NAME/{config,accounts}`, start `baresip -f DIR/NAME -s -t ..`
    /// registered as `user` on `node` over TLS, and wait until it is registered.
    pub fn start(cluster: &Cluster, name: &str, user: &str, node: &str, answer: Answer, wav: &Path) -> Phone {
        let bin = baresip().expect("baresip in PATH");
        let dir = cluster.tmp.path().join("phones").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir phone dir");
        std::fs::write(dir.join("config"), config(&ca_path(cluster), wav)).expect("write config");
        std::fs::write(
            dir.join("accounts"),
            account(user, &password(cluster, user), client_addr(cluster, node), answer),
        )
        .expect("write accounts");
        let log = dir.join("baresip.log");
        let out = std::fs::File::create(&log).expect("create phone log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new(bin);
        cmd.arg("-f")
            .arg(&dir)
            .arg("-s")
            .args(["-t", &PHONE_LIFETIME_S.to_string()])
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn baresip for {name}: {e}"));
        let stdin = child.stdin.take();
        let phone = Phone {
            name: name.to_owned(),
            aor: format!("sip:{user}@{DOMAIN}"),
            dir,
            log,
            nodes: cluster.info.nodes.iter().map(|n| n.client()).collect(),
            child: Some(child),
            stdin,
        };
        phone.wait_for("useragent registered successfully", 1);
        phone
    }

    /// One menu command line (`/dial sip:bob@contoso.test`, `/hangup`, …).
    pub fn cmd(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("phone stdin");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: write {line:?} to baresip: {e}", self.name));
    }

    /// The log so far (console output and trace).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// How often `needle` occurs in the log.
    pub fn count(&self, needle: &str) -> usize {
        self.output().matches(needle).count()
    }

    /// Wait (bounded by [`PHONE_WAIT`]) until the log holds `needle` at least
    /// `n` times; panic with the log's tail otherwise.
    pub fn wait_for(&self, needle: &str, n: usize) {
        self.wait_until(&format!("{n}× {needle:?}"), || self.count(needle) >= n);
    }

    /// Wait (bounded) until `what` holds; panic with the log's tail otherwise.
    pub fn wait_until(&self, what: &str, mut f: impl FnMut() -> bool) {
        if poll_until(PHONE_WAIT, Duration::from_millis(50), || f().then_some(())).is_none() {
            panic!(
                "{}: no {what} within {PHONE_WAIT:?}\n---- {} (tail)\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 80)
            );
        }
    }

    /// Every message of the trace, in order.
    pub fn trace(&self) -> Vec<Traced> {
        let out = self.output();
        let mut msgs = Vec::new();
        for chunk in out.split(TRACE_START).skip(1) {
            let Some(end) = chunk.find(TRACE_END) else {
                continue; // still being written
            };
            let Some((path, raw)) = chunk[..end].split_once('\n') else {
                continue;
            };
            let msg = SipMessage::parse(Bytes::from(raw.to_owned()))
                .unwrap_or_else(|e| panic!("{}: unparsable traced message ({e}):\n{raw}", self.name));
            // `TLS SRC -> DST`: received when the source is a node.
            let src = path
                .split_whitespace()
                .nth(1)
                .and_then(|a| a.parse::<SocketAddr>().ok());
            let sent = !src.is_some_and(|a| self.nodes.contains(&a));
            msgs.push(Traced {
                sent,
                path: path.to_owned(),
                msg,
            });
        }
        msgs
    }

    /// Summaries ([`Traced::summary`]) of the messages of `call_id` the phone
    /// sent (`sent`) or received, in order.
    pub fn flow(&self, call_id: &str, sent: bool) -> Vec<String> {
        self.trace()
            .iter()
            .filter(|t| t.sent == sent && t.call_id() == call_id)
            .map(Traced::summary)
            .collect()
    }

    /// The `n`-th (from 0) dialog-creating INVITE (no To tag) this phone
    /// sent (`sent`) or received.
    pub fn initial_invite(&self, n: usize, sent: bool) -> Traced {
        self.trace()
            .into_iter()
            .filter(|t| t.sent == sent && t.summary() == "INVITE" && t.msg.to_hdr().is_ok_and(|to| to.tag().is_none()))
            .nth(n)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no initial INVITE #{n} (sent={sent}) in the trace\n{}",
                    self.name,
                    tail(&self.log, 60)
                )
            })
    }

    /// Every Record-Route entry the phone received (all calls), in order.
    pub fn received_record_routes(&self) -> Vec<NameAddr> {
        self.trace()
            .iter()
            .filter(|t| !t.sent)
            .flat_map(|t| {
                t.msg.record_routes().unwrap_or_else(|e| {
                    panic!(
                        "{}: bad Record-Route ({e}):\n{}",
                        self.name,
                        String::from_utf8_lossy(&t.msg.to_bytes())
                    )
                })
            })
            .collect()
    }

    /// Where the phone said RTP first arrived from: `stream: incoming rtp for
    /// 'audio' established, receiving from ADDR`, each occurrence.
    pub fn rtp_sources(&self) -> Vec<SocketAddr> {
        self.output()
            .lines()
            .filter_map(|l| l.split("established, receiving from ").nth(1))
            .filter_map(|a| a.trim().parse().ok())
            .collect()
    }

    /// The last `audio=TX/RX (bit/s)` of the call status line baresip
    /// prints every ~100 ms of an established call.
    pub fn last_audio_bitrates(&self) -> Option<(u64, u64)> {
        let out = self.output();
        let at = out.rfind(" audio=").or_else(|| out.rfind("] audio="))?;
        let rest = &out[at..].split_once("audio=")?.1;
        let (rates, _) = rest.split_once(" (bit/s)")?;
        let (tx, rx) = rates.split_once('/')?;
        Some((tx.parse().ok()?, rx.parse().ok()?))
    }

    /// `/quit`, then wait (bounded) for the process to exit, so the trace is
    /// complete (its un-REGISTER included); killed if it does not exit.
    pub fn quit(&mut self) {
        if self.stdin.is_some() {
            self.cmd("/quit");
        }
        self.stdin = None;
        let Some(child) = self.child.as_mut() else { return };
        let exited = poll_until(PHONE_WAIT, Duration::from_millis(50), || {
            child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            eprintln!("{}: baresip did not quit within {PHONE_WAIT:?}; killed", self.name);
            self.kill();
        }
        self.child = None;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill signals this child's PID only.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "==== {} at failure ({})\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 60)
            );
        }
        self.stdin = None;
        self.kill();
    }
}

/// The `config` file of a phone.
pub fn config(ca: &Path, wav: &Path) -> String {
    format!(
        "sip_cafile {}\n\
         sip_listen 127.0.0.1:0\n\
         net_interface 127.0.0.1\n\
         module_path {MODULES}\n\
         module stdio.so\n\
         module g711.so\n\
         module aufile.so\n\
         module_app account.so\n\
         module_app menu.so\n\
         audio_player aufile,/dev/null\n\
         audio_source aufile,{}\n",
        ca.display(),
        wav.display()
    )
}

/// The `accounts` line of `user` on the node at `node` (TLS through its
/// client port; `outbound` makes every request go there).
pub fn account(user: &str, password: &str, node: SocketAddr, answer: Answer) -> String {
    let mode = match answer {
        Answer::Auto => ";answermode=auto",
        Answer::Manual => "",
    };
    format!("<sip:{user}@{DOMAIN}>;auth_pass={password};outbound=\"sip:{node};transport=tls\";regint=600{mode}\n")
}
