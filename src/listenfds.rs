//! Listening sockets handed to a node through the systemd socket-activation
//! protocol (`sd_listen_fds(3)`): the sockets are fds 3, 4, ...,
//! `LISTEN_FDS` counts them, `LISTEN_FDNAMES` names them (colon-separated)
//! and `LISTEN_PID`, when set, is the pid they are meant for.
//!
//! - [`parse`]: the pure reading of those variables into [`Named`] slots.
//! - [`Inherited::from_env`]: the node side; takes the sockets named
//!   [`MESH`] and [`CLIENT`] and clears the variables.
//! - [`Inherited::into_listeners`]: tokio listeners for [`sipmesh_actors::run`].
//! - [`hand_over`]: the launcher side; maps sockets to fds 3.. of a child
//!   [`Command`] and sets the variables.
//!
//! `cluster up` uses both sides, so a port it bound and wrote into the
//! topology is never released before the node accepts on it. A systemd
//! `.socket` unit with `FileDescriptorName=mesh` (or `client`) works the same.
//! A launcher cannot know the child's pid before exec, so [`hand_over`] leaves
//! `LISTEN_PID` unset, which the protocol allows.

use std::net::TcpListener;
use std::os::fd::{OwnedFd, RawFd};
use std::process::Command;

use command_fds::{CommandFdExt as _, FdMapping};

/// Count of inherited sockets.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Their names, colon-separated, in fd order.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The pid they are meant for (absent: the process that finds them).
pub const LISTEN_PID: &str = "LISTEN_PID";
/// A non-systemd extension (catflap) that moves the first fd; not supported,
/// so it is cleared before `listenfd` could honour it.
const LISTEN_FDS_FIRST_FD: &str = "LISTEN_FDS_FIRST_FD";
/// The first inherited fd (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;
/// Name of the mesh (MTLS) socket.
pub const MESH: &str = "mesh";
/// Name of the SIP client (TLS) socket.
pub const CLIENT: &str = "client";
/// `LISTEN_FDNAMES` name of an edge's federation listener.
pub const FEDERATION: &str = "federation";
/// `LISTEN_FDNAMES` name of the metrics listener.
pub const METRICS: &str = "metrics";
/// `LISTEN_FDNAMES` name of the admin HTTP listener (the mesh page).
pub const HTTP: &str = "http";

/// What is wrong with the inherited sockets; each names the offending value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// `LISTEN_PID` is not a pid.
    #[error("{LISTEN_PID}={0:?} is not a process id")]
    BadPid(String),
    /// `LISTEN_FDS` is not a count.
    #[error("{LISTEN_FDS}={0:?} is not a count of file descriptors")]
    BadCount(String),
    /// Sockets without names: which is the mesh port?
    #[error("{LISTEN_FDS}={0} but {LISTEN_FDNAMES} is not set; name each socket {MESH} or {CLIENT}")]
    NoNames(usize),
    /// Not one name per socket.
    #[error("{LISTEN_FDS}={count} but {LISTEN_FDNAMES}={names:?} names {named} socket(s)")]
    CountMismatch {
        /// `LISTEN_FDS`.
        count: usize,
        /// `LISTEN_FDNAMES`.
        names: String,
        /// How many names it holds.
        named: usize,
    },
    /// A name other than `mesh` or `client`.
    #[error("{LISTEN_FDNAMES}={names:?}: unknown socket name {name:?} (expected {MESH}, {CLIENT}, {FEDERATION}, {METRICS} or {HTTP})")]
    UnknownName {
        /// `LISTEN_FDNAMES`.
        names: String,
        /// The unknown one.
        name: String,
    },
    /// The same name twice.
    #[error("{LISTEN_FDNAMES}={names:?}: {name:?} names two sockets")]
    DuplicateName {
        /// `LISTEN_FDNAMES`.
        names: String,
        /// The repeated one.
        name: &'static str,
    },
    /// The fd is not a TCP socket, or cannot be made non-blocking.
    #[error("inherited fd {fd} ({name}): {cause}")]
    Fd {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: &'static str,
        /// What failed.
        cause: std::io::Error,
    },
}

/// Which inherited fd (as an offset from [`FIRST_FD`]) holds which socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Named {
    /// The mesh socket's offset.
    pub mesh: Option<usize>,
    /// The client socket's offset.
    pub client: Option<usize>,
    /// Offset of the federation socket.
    pub federation: Option<usize>,
    /// Offset of the metrics socket.
    pub metrics: Option<usize>,
    /// Offset of the admin HTTP socket.
    pub http: Option<usize>,
}

/// Read the values of `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` for
/// process `me`. `Ok(None)`: nothing is inherited (no `LISTEN_FDS`, a count
/// of 0, or sockets meant for another pid, which `sd_listen_fds` ignores too).
pub fn parse(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Option<Named>, ActivationError> {
    let Some(count_text) = count else {
        return Ok(None);
    };
    if let Some(p) = pid.filter(|p| !p.is_empty()) {
        let pid: u32 = p.parse().map_err(|_| ActivationError::BadPid(p.to_owned()))?;
        if pid != me {
            return Ok(None);
        }
    }
    let count: usize = count_text
        .parse()
        .map_err(|_| ActivationError::BadCount(count_text.to_owned()))?;
    if count == 0 {
        return Ok(None);
    }
    let names = names.ok_or(ActivationError::NoNames(count))?;
    let list: Vec<&str> = names.split(':').collect();
    if list.len() != count {
        return Err(ActivationError::CountMismatch {
            count,
            names: names.to_owned(),
            named: list.len(),
        });
    }
    let mut named = Named::default();
    for (offset, name) in list.into_iter().enumerate() {
        let (slot, name) = match name {
            MESH => (&mut named.mesh, MESH),
            CLIENT => (&mut named.client, CLIENT),
            FEDERATION => (&mut named.federation, FEDERATION),
            METRICS => (&mut named.metrics, METRICS),
            HTTP => (&mut named.http, HTTP),
            other => {
                return Err(ActivationError::UnknownName {
                    names: names.to_owned(),
                    name: other.to_owned(),
                })
            }
        };
        if slot.replace(offset).is_some() {
            return Err(ActivationError::DuplicateName {
                names: names.to_owned(),
                name,
            });
        }
    }
    Ok(Some(named))
}

/// The listening sockets a node inherited (std sockets, non-blocking).
#[derive(Debug, Default)]
pub struct Inherited {
    /// The mesh socket, if one was named `mesh`.
    pub mesh: Option<TcpListener>,
    /// The client socket, if one was named `client`.
    pub client: Option<TcpListener>,
    /// The federation socket, if one was named `federation`.
    pub federation: Option<TcpListener>,
    /// The metrics socket, if one was named `metrics`.
    pub metrics: Option<TcpListener>,
    /// The admin HTTP socket, if one was named `http`.
    pub http: Option<TcpListener>,
}

impl Inherited {
    /// Take the sockets this process inherited and clear the `LISTEN_*`
    /// variables (so no child of ours sees them). Call it before any thread
    /// starts: it changes the environment.
    pub fn from_env() -> Result<Inherited, ActivationError> {
        let var = |k| std::env::var(k).ok();
        let parsed = parse(
            var(LISTEN_PID).as_deref(),
            var(LISTEN_FDS).as_deref(),
            var(LISTEN_FDNAMES).as_deref(),
            std::process::id(),
        );
        // listenfd reads LISTEN_FDS and LISTEN_PID itself and clears them.
        std::env::remove_var(LISTEN_FDS_FIRST_FD);
        let mut fds = listenfd::ListenFd::from_env();
        std::env::remove_var(LISTEN_FDNAMES);
        std::env::remove_var(LISTEN_FDS);
        std::env::remove_var(LISTEN_PID);
        let Some(named) = parsed? else {
            return Ok(Inherited::default());
        };
        let mut take = |offset: Option<usize>, name: &'static str| -> Result<Option<TcpListener>, ActivationError> {
            let Some(offset) = offset else {
                return Ok(None);
            };
            let fd = FIRST_FD + offset as RawFd;
            let fail = |cause| ActivationError::Fd { fd, name, cause };
            // listenfd checks that the fd is a TCP stream socket and sets CLOEXEC.
            let listener = fds
                .take_tcp_listener(offset)
                .map_err(fail)?
                .ok_or_else(|| fail(std::io::Error::other("not passed")))?;
            listener.set_nonblocking(true).map_err(fail)?;
            Ok(Some(listener))
        };
        let inherited = Inherited {
            mesh: take(named.mesh, MESH)?,
            client: take(named.client, CLIENT)?,
            federation: take(named.federation, FEDERATION)?,
            metrics: take(named.metrics, METRICS)?,
            http: take(named.http, HTTP)?,
        };
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        tracing::info!(
            mesh = ?addr(&inherited.mesh),
            client = ?addr(&inherited.client),
            "inherited listening sockets"
        );
        Ok(inherited)
    }

    /// The tokio listeners for [`sipmesh_actors::run`]; a socket not
    /// inherited stays `None` (bound from the config). Needs a tokio runtime.
    pub fn into_listeners(self) -> std::io::Result<sipmesh_actors::Listeners> {
        let tokio = |l: Option<TcpListener>| l.map(tokio::net::TcpListener::from_std).transpose();
        Ok(sipmesh_actors::Listeners {
            mesh: tokio(self.mesh)?,
            client: tokio(self.client)?,
            federation: tokio(self.federation)?,
            metrics: tokio(self.metrics)?,
            http: tokio(self.http)?,
            debug: None,
        })
    }
}

/// Make `sockets` fds 3, 4, ... of the process `cmd` spawns, named in order,
/// with `LISTEN_FDS` and `LISTEN_FDNAMES` set and `LISTEN_PID` unset.
/// `cmd` owns the sockets from now on: drop it after `spawn` so the child
/// holds the only copies.
pub fn hand_over(cmd: &mut Command, sockets: Vec<(&'static str, OwnedFd)>) -> anyhow::Result<()> {
    let names: Vec<&str> = sockets.iter().map(|(name, _)| *name).collect();
    cmd.env(LISTEN_FDS, sockets.len().to_string())
        .env(LISTEN_FDNAMES, names.join(":"))
        .env_remove(LISTEN_PID)
        .env_remove(LISTEN_FDS_FIRST_FD);
    let mappings = sockets
        .into_iter()
        .zip(FIRST_FD..)
        .map(|((_, parent_fd), child_fd)| FdMapping { parent_fd, child_fd })
        .collect();
    cmd.fd_mappings(mappings)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 4242;

    fn err(pid: Option<&str>, count: Option<&str>, names: Option<&str>) -> String {
        parse(pid, count, names, ME).expect_err("should be refused").to_string()
    }

    #[test]
    fn names_pick_the_slots_in_any_order() {
        assert_eq!(
            parse(None, Some("2"), Some("mesh:client"), ME).unwrap(),
            Some(Named {
                mesh: Some(0),
                client: Some(1),
                federation: None,
                metrics: None,
                http: None,
            })
        );
        assert_eq!(
            parse(Some("4242"), Some("2"), Some("client:mesh"), ME).unwrap(),
            Some(Named {
                mesh: Some(1),
                client: Some(0),
                federation: None,
                metrics: None,
                http: None,
            })
        );
        assert_eq!(
            parse(None, Some("3"), Some("mesh:client:federation"), ME).unwrap(),
            Some(Named {
                mesh: Some(0),
                client: Some(1),
                federation: Some(2),
                metrics: None,
                http: None,
            })
        );
        assert_eq!(
            parse(Some(""), Some("1"), Some("client"), ME).unwrap(),
            Some(Named {
                mesh: None,
                client: Some(0),
                federation: None,
                metrics: None,
                http: None,
            })
        );
    }

    #[test]
    fn nothing_inherited() {
        assert_eq!(parse(None, None, None, ME).unwrap(), None);
        assert_eq!(parse(None, None, Some("mesh"), ME).unwrap(), None);
        assert_eq!(parse(None, Some("0"), None, ME).unwrap(), None);
        // Meant for another process (e.g. the parent of a systemd service).
        assert_eq!(parse(Some("1"), Some("2"), Some("mesh:client"), ME).unwrap(), None);
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            err(Some("me"), Some("1"), Some("mesh")),
            r#"LISTEN_PID="me" is not a process id"#
        );
        assert_eq!(
            err(None, Some("two"), Some("mesh")),
            r#"LISTEN_FDS="two" is not a count of file descriptors"#
        );
        assert_eq!(
            err(None, Some("-1"), None),
            r#"LISTEN_FDS="-1" is not a count of file descriptors"#
        );
        assert_eq!(
            err(None, Some("2"), None),
            "LISTEN_FDS=2 but LISTEN_FDNAMES is not set; name each socket mesh or client"
        );
        assert_eq!(
            err(None, Some("2"), Some("mesh")),
            r#"LISTEN_FDS=2 but LISTEN_FDNAMES="mesh" names 1 socket(s)"#
        );
        assert_eq!(
            err(None, Some("1"), Some("mesh:client")),
            r#"LISTEN_FDS=1 but LISTEN_FDNAMES="mesh:client" names 2 socket(s)"#
        );
        assert_eq!(
            err(None, Some("2"), Some("mesh:sip")),
            r#"LISTEN_FDNAMES="mesh:sip": unknown socket name "sip" (expected mesh, client, federation, metrics or http)"#
        );
        // systemd's default name is the socket unit's name.
        assert_eq!(
            err(None, Some("1"), Some("sipmesh.socket")),
            r#"LISTEN_FDNAMES="sipmesh.socket": unknown socket name "sipmesh.socket" (expected mesh, client, federation, metrics or http)"#
        );
        assert_eq!(
            err(None, Some("1"), Some("")),
            r#"LISTEN_FDNAMES="": unknown socket name "" (expected mesh, client, federation, metrics or http)"#
        );
        assert_eq!(
            err(None, Some("2"), Some("mesh:mesh")),
            r#"LISTEN_FDNAMES="mesh:mesh": "mesh" names two sockets"#
        );
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating() {
        assert_eq!(
            err(None, Some("18446744073709551615"), Some("mesh")),
            r#"LISTEN_FDS=18446744073709551615 but LISTEN_FDNAMES="mesh" names 1 socket(s)"#
        );
    }
}
