//! The opt-in mesh page (`[admin] http = "127.0.0.1:9465"`): one page that
//! draws the mesh as a graph and tables, kept live by the node's event bus.
//!
//! Routes:
//! - `GET /`, `/app.js`, `/style.css`: the page; compiled into the binary,
//!   no CDN, a strict Content-Security-Policy.
//! - `GET /api/mesh`: one JSON snapshot: the N×N view of `ctl mesh`
//!   (`from, members, views, unreachable, asymmetric`), plus `roles` (fqdn →
//!   role), `topology_version`, `rejections` (as `ctl rejections`) and
//!   `federation` (as `ctl federation`).
//! - `GET /events`: Server-Sent Events, one `event: KIND` / `data: JSON` per
//!   event of the bus `ctl watch` reads (the same fields), a comment line
//!   every [`SSE_KEEPALIVE`] so a gone browser is noticed.
//!
//! Bounds: [`MAX_HTTP_CONNECTIONS`] connections, of which at most
//! [`MAX_SSE_STREAMS`] streams (each also takes one of the bus's watcher
//! slots); a stream whose browser does not read for [`SSE_WRITE_TIMEOUT`] is
//! closed. The page is read-only. A request whose `Host` is not an IP
//! literal, `localhost` or this node's name is refused (403), so a web page
//! elsewhere cannot read the mesh through DNS rebinding.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::http::{self, respond, REQUEST_TIMEOUT};
use super::NodeHandle;

/// Connections served at once (streams included).
pub const MAX_HTTP_CONNECTIONS: usize = 32;
/// Live event streams at once.
pub const MAX_SSE_STREAMS: usize = 8;
/// A comment is sent on an idle stream this often.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// A stream whose writes stall this long is closed.
pub const SSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the browser waits before reconnecting a broken stream (ms).
const SSE_RETRY_MS: u32 = 2000;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
];

/// Serve the page until the task is dropped.
pub async fn serve(listener: TcpListener, node: NodeHandle) {
    let streams = Arc::new(Semaphore::new(MAX_SSE_STREAMS));
    http::accept_loop(listener, MAX_HTTP_CONNECTIONS, "admin http", move |tcp| {
        let (node, streams) = (node.clone(), streams.clone());
        async move {
            let _ = answer(tcp, &node, &streams).await;
        }
    })
    .await
}

/// Whether `host` (a `Host` header) names this node directly: an IP
/// literal, `localhost`, or the node's FQDN, with an optional port.
pub fn host_allowed(host: &str, fqdn: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host
            .rsplit_once(':')
            .map_or(host, |(h, port)| if port.parse::<u16>().is_ok() { h } else { host }),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.trim_end_matches('.').eq_ignore_ascii_case(fqdn)
}

async fn answer(mut tcp: TcpStream, node: &NodeHandle, streams: &Arc<Semaphore>) -> std::io::Result<()> {
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, http::read_request(&mut tcp)).await {
        Ok(Ok(Some(r))) => r,
        _ => return Ok(()),
    };
    let fqdn = node.shared.fqdn.to_string();
    if !request.host.as_deref().is_some_and(|h| host_allowed(h, &fqdn)) {
        let body = format!(
            "Host {:?} is not this node: use its IP address, localhost or {fqdn}\n",
            request.host.as_deref().unwrap_or("")
        );
        return plain(&mut tcp, "403 Forbidden", &body).await;
    }
    if request.method != "GET" {
        return plain(
            &mut tcp,
            "405 Method Not Allowed",
            "the mesh page is read-only: GET only\n",
        )
        .await;
    }
    match request.route() {
        "/" | "/index.html" => asset(&mut tcp, "text/html; charset=utf-8", INDEX_HTML).await,
        "/app.js" => asset(&mut tcp, "text/javascript; charset=utf-8", APP_JS).await,
        "/style.css" => asset(&mut tcp, "text/css; charset=utf-8", STYLE_CSS).await,
        "/api/mesh" => {
            let body = snapshot(node).await.to_string();
            asset(&mut tcp, "application/json", &body).await
        }
        "/events" => match streams.clone().try_acquire_owned() {
            Ok(permit) => {
                let r = events(tcp, node).await;
                drop(permit);
                r
            }
            Err(_) => plain(&mut tcp, "503 Service Unavailable", "too many event streams\n").await,
        },
        _ => plain(&mut tcp, "404 Not Found", "not here: /, /api/mesh, /events\n").await,
    }
}

async fn asset(tcp: &mut TcpStream, content_type: &str, body: &str) -> std::io::Result<()> {
    respond(tcp, "200 OK", content_type, &SECURITY_HEADERS, body.as_bytes()).await
}

async fn plain(tcp: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    respond(
        tcp,
        status,
        "text/plain; charset=utf-8",
        &SECURITY_HEADERS,
        body.as_bytes(),
    )
    .await
}

/// Everything the page draws, in one answer.
pub async fn snapshot(node: &NodeHandle) -> Value {
    let shared = &node.shared;
    let mut view = super::commands::mesh_view(shared).await;
    let topology = shared.topology.load();
    let roles: serde_json::Map<String, Value> = topology
        .members
        .iter()
        .map(|m| (m.fqdn.to_string(), json!(m.role.to_string())))
        .collect();
    view["roles"] = Value::Object(roles);
    view["topology_version"] = json!(topology.version);
    view["rejections"] = serde_json::to_value(shared.rejections.recent()).unwrap_or_default();
    view["federation"] = node.proxy.federation().status();
    view
}

/// One SSE stream: the bus's events until the browser goes.
async fn events(mut tcp: TcpStream, node: &NodeHandle) -> std::io::Result<()> {
    let Some(mut sub) = node.shared.events.subscribe() else {
        return plain(&mut tcp, "503 Service Unavailable", "too many watchers\n").await;
    };
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\nX-Accel-Buffering: no\r\n",
    );
    for (k, v) in SECURITY_HEADERS {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!("\r\nretry: {SSE_RETRY_MS}\n: watching {}\n\n", node.shared.fqdn);
    let (mut rd, mut wr) = tcp.split();
    wr.write_all(head.as_bytes()).await?;
    let mut buf = [0u8; 256];
    let mut seen_dropped = 0;
    loop {
        let chunk = tokio::select! {
            event = sub.rx.recv() => {
                let Some(event) = event else { return Ok(()) };
                let dropped = sub.dropped.load(std::sync::atomic::Ordering::Relaxed);
                let mut chunk = String::new();
                if dropped != seen_dropped {
                    seen_dropped = dropped;
                    chunk += &format!("event: dropped\ndata: {}\n\n", json!({"dropped": dropped}));
                }
                // serde_json never writes a raw newline, so one data line holds it all.
                let data = serde_json::to_string(&event).unwrap_or_default();
                chunk += &format!("event: {}\ndata: {data}\n\n", event.kind);
                chunk
            }
            _ = tokio::time::sleep(SSE_KEEPALIVE) => ": keep-alive\n\n".to_owned(),
            // The browser sends nothing on a stream: data or EOF means it is done.
            _ = rd.read(&mut buf) => return Ok(()),
        };
        match tokio::time::timeout(SSE_WRITE_TIMEOUT, wr.write_all(chunk.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_names_of_this_node_are_served() {
        let me = "fe1.contoso.test";
        for ok in [
            "127.0.0.1:9465",
            "127.0.0.1",
            "[::1]:9465",
            "[::1]",
            "localhost:80",
            "LOCALHOST",
            "fe1.contoso.test:9465",
            "FE1.contoso.test.",
        ] {
            assert!(host_allowed(ok, me), "{ok}");
        }
        for bad in [
            "evil.example:9465",
            "fe1.contoso.test.evil.example",
            "",
            "[not-an-ip]:1",
            "127.0.0.1.nip.io:9465",
        ] {
            assert!(!host_allowed(bad, me), "{bad}");
        }
    }
}
