//! The `sipmesh` command: flag parsing and wiring only; the work lives in the
//! library crates.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sipmesh::{cluster, ctl, pki};
use sipmesh_actors::NodeConfig;
use sipmesh_state::Topology;

#[derive(Parser)]
#[command(name = "sipmesh", version, about = "A mesh of trusted SIP servers over mutual TLS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// A small file-based CA for labs and tests.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Work with topology files (the trusted-server set).
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Run every check against a node (--socket) or a local cluster (--dir):
    /// certificates and CRLs, links, topology versions, federation; exits 1
    /// with each problem and how to fix it.
    Check {
        /// One node's debug socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// A cluster directory (every node in its cluster.json).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Warn about certificates expiring within this many days.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Query a node through its debug socket.
    Ctl {
        /// The node's debug socket.
        #[arg(long)]
        socket: PathBuf,
        /// status | links | members | rejections | topology | registrations | federation | watch | reload | check | log-level | help
        cmd: String,
        /// Arguments: `log-level FILTER` (a RUST_LOG filter, e.g. `debug`),
        /// `federation explain DOMAIN`.
        args: Vec<String>,
        /// For `federation explain`: the From AOR of an inbound request to judge.
        #[arg(long)]
        from: Option<String>,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        /// For `check`: warn about certificates expiring within this many days.
        #[arg(long)]
        days: Option<u64>,
    },
    /// Measure a local cluster: relayed SIP latency and CPU per transaction, mesh formation.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// A local cluster on 127.0.0.1.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run a node in the foreground (SIGINT/SIGTERM stop it cleanly).
    Run {
        /// The node's node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Log lines as `text` (for people) or `json` (one object per line,
        /// with the span fields of the request it concerns).
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Honour SSLKEYLOGFILE (TLS secrets for Wireshark) when `tls.keylog`
        /// is not set; without this flag the variable is ignored.
        #[arg(long)]
        allow_keylog: bool,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a CA in a directory.
    InitCa {
        /// Directory for ca.pem, ca.key and index.json.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "sipmesh Root CA")]
        name: String,
    },
    /// Issue a server certificate (SAN DNS = fqdn, EKU serverAuth + clientAuth).
    Issue {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The server's FQDN.
        #[arg(long)]
        fqdn: String,
        /// Extra SAN IP addresses.
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Output directory for <fqdn>.pem and <fqdn>.key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Mark a certificate revoked (then publish a new CRL with `pki crl`).
    Revoke {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Serial number in hex.
        #[arg(long)]
        serial: String,
    },
    /// Write a CRL (PEM) listing every revoked certificate.
    Crl {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Check a topology file and list every problem at once.
    Validate {
        /// The topology file.
        file: PathBuf,
    },
    /// Make an admin signing key pair (topology-admin.key / topology-admin.pub).
    Keygen {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a topology file in place (after validating it).
    Sign {
        /// The topology file.
        file: PathBuf,
        /// The admin private key.
        #[arg(long)]
        key: PathBuf,
        /// Write the signed document here instead of in place.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign (with --key) and publish a topology to one node; it replicates to the rest.
    Publish {
        /// The topology file.
        file: PathBuf,
        /// The admin private key (without it the file must already be signed).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Debug socket of any node.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Show what a topology file would add, remove and change on the running mesh.
    Diff {
        /// The topology file.
        file: PathBuf,
        /// Debug socket of any node.
        #[arg(long)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// MESSAGEs from a client on node A to a client on node B at a fixed rate.
    Relay {
        /// Transactions per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Unmeasured warm-up seconds before.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// MESSAGE body bytes.
        #[arg(long, default_value_t = 100)]
        body: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The same load through a Kamailio chain and a sipmesh chain, side by side.
    Compare {
        /// Rates per second, each measured on both chains.
        #[arg(long, default_value = "3000,6000,12000")]
        rates: String,
        /// Measured seconds per rate.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Unmeasured warm-up seconds before each rate.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// MESSAGE body bytes.
        #[arg(long, default_value_t = 200)]
        body: usize,
        /// Skip the max-rate search.
        #[arg(long)]
        no_max_search: bool,
        /// Keep configs, logs, compare.json and compare.svg here.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// New TLS connections per second into a node's mesh port (mutual TLS)
    /// and client port, and into Kamailio's mutual-TLS port, with the
    /// server's CPU per handshake.
    Handshake {
        /// Measured seconds per door.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Parallel clients, each one connection at a time.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Skip Kamailio.
        #[arg(long)]
        no_kamailio: bool,
        /// Keep Kamailio's configs and logs here.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// N TLS clients connect and REGISTER with Digest to one node at once,
    /// while relayed MESSAGE traffic runs through it.
    Storm {
        /// Clients registering at once.
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        /// Relayed MESSAGEs per second through the storm.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Measured seconds of relayed traffic (the storm starts with them).
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time from starting N nodes to a full mesh.
    Mesh {
        /// Nodes.
        #[arg(long, default_value_t = 16)]
        nodes: usize,
        /// Repetitions.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start a local cluster and stay in the foreground.
    Up {
        /// Number of nodes [default: 3].
        #[arg(long)]
        nodes: Option<usize>,
        /// Directory for the cluster (a fresh one under the temp dir if absent).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// SIP domain; nodes are fe1.<domain>, fe2.<domain>, ...
        #[arg(long, default_value = "contoso.test")]
        domain: String,
        /// Heartbeat interval of the nodes, in ms.
        #[arg(long, default_value_t = sipmesh_actors::config::DEFAULT_HEARTBEAT_MS)]
        heartbeat_ms: u64,
        /// Cap of the redial backoff, in ms.
        #[arg(long, default_value_t = sipmesh_actors::config::DEFAULT_BACKOFF_CAP_MS)]
        backoff_cap_ms: u64,
        /// SIP transaction timer T1, in ms (requests time out after 64*T1).
        #[arg(long, default_value_t = sipmesh_actors::config::DEFAULT_T1_MS)]
        t1_ms: u64,
        /// Digest algorithms offered, in order, comma-separated (e.g. `MD5` for
        /// baresip 1.0, which refuses a challenge list that includes SHA-256).
        #[arg(long, value_delimiter = ',', value_parser = parse_algorithm)]
        digest_algorithms: Option<Vec<sipmesh_actors::auth::Algorithm>>,
        /// Add an edge, edge1.<domain>, with a federation listener and an
        /// external certificate (sip.<domain>) from DIR/federation-ca.
        #[arg(long)]
        edge: bool,
        /// With --edge: the DNS server (IP:PORT) the edge asks for partner
        /// SRV records and names (default: the system's resolvers).
        #[arg(long, requires = "edge")]
        federation_dns: Option<std::net::SocketAddr>,
        /// The DNS server (IP:PORT) nodes ask for members whose mesh_addr is
        /// a DNS name (default: the system's resolvers).
        #[arg(long)]
        mesh_dns: Option<std::net::SocketAddr>,
        /// Write each node's TLS secrets to NODE_DIR/tls-keys.log (NSS key log
        /// format, for Wireshark). Anyone who reads them can decrypt the traffic.
        #[arg(long)]
        keylog: bool,
    },
    /// Make two running local clusters (each started with --edge)
    /// allowed-server partners of each other: a new signed topology is
    /// published on each.
    Federate {
        /// The two cluster directories.
        #[arg(long, num_args = 1, required = true)]
        dir: Vec<PathBuf>,
    },
    /// Stop a cluster started elsewhere.
    Down {
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn parse_algorithm(s: &str) -> Result<sipmesh_actors::auth::Algorithm, String> {
    sipmesh_actors::auth::Algorithm::parse(s).ok_or_else(|| format!("unknown digest algorithm {s:?} (MD5 or SHA-256)"))
}

/// Install logging; the returned hook changes the filter at run time.
fn init_logging(json: bool) -> sipmesh_actors::admin::LogLevelHook {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{reload, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init();
    }
    std::sync::Arc::new(move |directive: &str| {
        let new = EnvFilter::try_new(directive).map_err(|e| format!("bad log filter {directive:?}: {e}"))?;
        handle.reload(new).map_err(|e| e.to_string())?;
        tracing::info!(filter = directive, "log filter changed");
        Ok(directive.to_owned())
    })
}

fn run_node(config: PathBuf, log_format: &str, allow_keylog: bool) -> anyhow::Result<()> {
    let set_log_level = init_logging(log_format == "json");
    // Sockets from `cluster up` or systemd; first, as it edits the environment.
    let inherited = sipmesh::listenfds::Inherited::from_env()?;
    if let Some(ppid) = std::env::var(cluster::PARENT_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        // Die with the launcher even if it is SIGKILLed.
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).context("prctl(PR_SET_PDEATHSIG)")?;
        if nix::unistd::getppid().as_raw() != ppid {
            anyhow::bail!("the cluster launcher (pid {ppid}) is already gone");
        }
    }
    let mut config = NodeConfig::load(&config)?;
    if let Some(path) = std::env::var_os("SSLKEYLOGFILE") {
        if !allow_keylog {
            tracing::warn!(
                "SSLKEYLOGFILE is set but ignored: pass --allow-keylog (or set tls.keylog) to write TLS secrets"
            );
        } else if config.tls.keylog.is_none() {
            config.tls.keylog = Some(PathBuf::from(path));
        }
    }
    actix_rt::System::new().block_on(async move {
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let hooks = sipmesh_actors::Hooks {
            set_log_level: Some(set_log_level),
        };
        let listeners = inherited
            .into_listeners()
            .context("cannot use the inherited listening sockets")?;
        sipmesh_actors::run(listeners, config, shutdown, hooks).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

fn topology_command(command: TopologyCommand) -> anyhow::Result<ExitCode> {
    use sipmesh::topology::TopologyDiffView;
    use sipmesh_state::{signed, AdminKey, TopologyDiff};
    match command {
        TopologyCommand::Validate { file } => match Topology::from_file(&file) {
            Ok(t) => println!(
                "{}: valid, version {}, {} member(s)",
                file.display(),
                t.version,
                t.members.len()
            ),
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return Ok(ExitCode::FAILURE);
            }
        },
        TopologyCommand::Keygen { out } => {
            let (key_path, pub_path) = sipmesh::topology::keygen(&out)?;
            println!(
                "topology admin key: {} (keep it offline)\npublic key for node configs (topology_public_key): {}",
                key_path.display(),
                pub_path.display()
            );
        }
        TopologyCommand::Sign { file, key, out } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Partner anchors travel in the document: ca_file becomes ca_pem.
            let base = file.parent().unwrap_or(std::path::Path::new("."));
            let text = sipmesh_state::federation::embed_ca_files(signed::unsigned_content(&text), base)
                .map_err(|e| anyhow::anyhow!("{}: {e}; not signed", file.display()))?;
            let topology = Topology::from_toml_str(&text)
                .with_context(|| format!("{} is not a valid topology; not signed", file.display()))?;
            let key = AdminKey::load(&key)?;
            let out = out.unwrap_or(file);
            sipmesh::topology::write_atomically(&out, &key.sign(&text))?;
            println!(
                "signed topology v{} ({} members): {}",
                topology.version,
                topology.members.len(),
                out.display()
            );
        }
        TopologyCommand::Publish { file, key, socket } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let document = match key {
                Some(k) => AdminKey::load(&k)?.sign(&text),
                None => text,
            };
            let result = ctl::request(&socket, &serde_json::json!({"cmd": "publish", "document": document}))?;
            if result["applied"] == serde_json::Value::Bool(true) {
                let diff: TopologyDiffView = serde_json::from_value(result["diff"].clone())?;
                println!("published: topology v{} is in effect", result["current"]);
                print!("{}", diff.render());
            } else {
                println!("v{} was already in effect; nothing changed", result["current"]);
            }
        }
        TopologyCommand::Diff { file, socket } => {
            let new = Topology::from_file(&file)?;
            let running = ctl::command(&socket, "topology")?;
            let current = Topology::from_toml_str(running["toml"].as_str().unwrap_or(""))?;
            let diff = TopologyDiff::between(&current, &new);
            println!("running v{} -> file v{}", current.version, new.version);
            if diff.is_empty() {
                println!("no changes");
            } else {
                print!("{}", TopologyDiffView::from(diff).render());
            }
            if new.version <= current.version {
                println!("note: the file's version is not higher than the running one; nodes would refuse it (stale-version)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Node {
            command:
                NodeCommand::Run {
                    config,
                    log_format,
                    allow_keylog,
                },
        } => run_node(config, &log_format, allow_keylog)?,
        Command::Pki { command } => match command {
            PkiCommand::InitCa { dir, name } => {
                let ca = pki::init_ca(&dir, &name)?;
                println!(
                    "CA \"{}\" created: {} (key {})",
                    ca.name,
                    ca.cert_path.display(),
                    ca.key_path.display()
                );
            }
            PkiCommand::Issue {
                ca,
                fqdn,
                ip,
                days,
                out,
            } => {
                let mut opts = pki::IssueOptions::new(&fqdn);
                opts.ips = ip;
                opts.days = days;
                let issued = pki::issue(&ca, &opts, &out)?;
                println!(
                    "issued {fqdn}: serial {} valid until {}\n  cert {}\n  key  {}",
                    issued.serial,
                    sipmesh_actors::rfc3339(issued.not_after),
                    issued.cert_path.display(),
                    issued.key_path.display()
                );
            }
            PkiCommand::Revoke { ca, serial } => {
                pki::revoke(&ca, &serial)?;
                println!(
                    "revoked {serial}; publish it with `sipmesh pki crl --ca {} --out FILE`",
                    ca.display()
                );
            }
            PkiCommand::Crl { ca, out } => {
                let crl = pki::write_crl(&ca, &out)?;
                println!(
                    "CRL #{} with {} revoked certificate(s) written to {}",
                    crl.number,
                    crl.revoked,
                    crl.path.display()
                );
            }
        },
        Command::Topology { command } => return topology_command(command),
        Command::Check {
            socket,
            dir,
            days,
            json,
        } => {
            let targets = sipmesh::check::targets(socket, dir)?;
            let report = sipmesh::check::run(&targets, days);
            let text = if json {
                serde_json::to_string_pretty(&report)?
            } else {
                sipmesh::check::render(&report)
            };
            let _ = write!(std::io::stdout().lock(), "{text}");
            if report["ok"] != serde_json::Value::Bool(true) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Ctl {
            socket,
            cmd,
            args,
            from,
            json,
            days,
        } => {
            if cmd == "watch" {
                ctl::watch(&socket, json, &mut std::io::stdout().lock())?;
                return Ok(ExitCode::SUCCESS);
            }
            let (cmd, request) = match (cmd.as_str(), args.as_slice()) {
                ("federation", [explain, domain]) if explain == "explain" => {
                    let mut r = serde_json::json!({"cmd": "federation-explain", "domain": domain});
                    if let Some(from) = &from {
                        r["from"] = from.as_str().into();
                    }
                    ("federation-explain".to_owned(), r)
                }
                ("federation", [explain]) if explain == "explain" => {
                    anyhow::bail!("federation explain: give the domain, e.g. `federation explain fabrikam.test`")
                }
                (_, []) => (cmd.clone(), serde_json::json!({ "cmd": cmd })),
                ("log-level", [level]) => (cmd.clone(), serde_json::json!({ "cmd": cmd, "level": level })),
                (_, extra) => anyhow::bail!("{cmd}: unexpected arguments {extra:?}"),
            };
            let mut request = request;
            if let Some(days) = days {
                request["days"] = days.into();
            }
            let result = ctl::request(&socket, &request)?;
            let text = if json {
                serde_json::to_string_pretty(&result)?
            } else {
                ctl::render(&cmd, &result)
            };
            // A closed pipe (`ctl ... | head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            if cmd == "check" && result["ok"] != serde_json::Value::Bool(true) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Bench { command } => match command {
            BenchCommand::Relay {
                rate,
                duration,
                warmup,
                body,
                json,
            } => {
                let report = sipmesh::bench::relay(&sipmesh::bench::RelayOptions {
                    rate,
                    duration: std::time::Duration::from_secs(duration),
                    warmup: std::time::Duration::from_secs(warmup),
                    body,
                })?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{}", sipmesh::bench::render_relay(&report));
                }
            }
            BenchCommand::Compare {
                rates,
                duration,
                warmup,
                body,
                no_max_search,
                dir,
                json,
            } => {
                use std::io::IsTerminal as _;
                let report = sipmesh::bench::compare(&sipmesh::bench::CompareOptions {
                    rates: sipmesh::bench::parse_rates(&rates)?,
                    duration: std::time::Duration::from_secs(duration),
                    warmup: std::time::Duration::from_secs(warmup),
                    body,
                    max_search: !no_max_search,
                    dir,
                    progress: std::io::stderr().is_terminal(),
                })?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{}", sipmesh::bench::render_compare(&report));
                }
            }
            BenchCommand::Handshake {
                duration,
                parallel,
                no_kamailio,
                dir,
                json,
            } => {
                let report = sipmesh::bench::handshake(&sipmesh::bench::HandshakeOptions {
                    duration: std::time::Duration::from_secs(duration),
                    parallel,
                    kamailio: !no_kamailio,
                    dir,
                })?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{}", sipmesh::bench::render_handshake(&report));
                }
            }
            BenchCommand::Storm {
                clients,
                rate,
                duration,
                json,
            } => {
                let report = sipmesh::bench::storm_bench(&sipmesh::bench::StormOptions {
                    clients,
                    rate,
                    duration: std::time::Duration::from_secs(duration),
                })?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{}", sipmesh::bench::render_storm(&report));
                }
            }
            BenchCommand::Mesh { nodes, runs, json } => {
                let report = sipmesh::bench::mesh(nodes, runs)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{}", sipmesh::bench::render_mesh(&report));
                }
            }
        },
        Command::Cluster { command } => match command {
            ClusterCommand::Up {
                nodes,
                dir,
                domain,
                heartbeat_ms,
                backoff_cap_ms,
                t1_ms,
                digest_algorithms,
                edge,
                federation_dns,
                mesh_dns,
                keylog,
            } => cluster::up(cluster::UpOptions {
                load_users: 0,
                keylog,
                edge,
                federation_dns,
                mesh_dns,
                nodes,
                dir,
                domain,
                heartbeat_ms,
                backoff_cap_ms,
                t1_ms,
                digest_algorithms,
            })?,
            ClusterCommand::Down { dir } => cluster::down(&dir)?,
            ClusterCommand::Federate { dir } => cluster::federate(&dir)?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
