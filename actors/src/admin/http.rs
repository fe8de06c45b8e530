//! The small HTTP/1.1 both admin listeners speak (`/metrics`, the mesh page):
//! one GET per connection, a request head of at most [`MAX_REQUEST_HEAD`]
//! bytes read within [`REQUEST_TIMEOUT`], answered with `Connection: close`.
//! Nothing here parses a body; anything but GET gets 405.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest HTTP request head read from a scraper or a browser.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Deadline for the request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Accept connections until the task is dropped, each handled by `handle`
/// on its own task, at most `max` at once (more wait in the listen backlog).
pub async fn accept_loop<F, Fut>(listener: TcpListener, max: usize, what: &'static str, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::debug!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let work = handle(tcp);
        actix_rt::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// The request line and the one header the admin listeners look at.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, ...
    pub method: String,
    /// The path, query string included.
    pub path: String,
    /// The `Host` header, when present.
    pub host: Option<String>,
}

impl Request {
    /// The path without its query string.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// Parse a complete request head (through the blank line).
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let host = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_owned());
    Some(Request { method, path, host })
}

/// Read one request head; `Ok(None)` when the client went away or sent
/// something that is not HTTP (already answered with 400 or 431).
pub async fn read_request(tcp: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            respond(
                tcp,
                "431 Request Header Fields Too Large",
                "text/plain",
                &[],
                b"request head too large\n",
            )
            .await?;
            return Ok(None);
        }
    }
    match parse_head(&head) {
        Some(r) => Ok(Some(r)),
        None => {
            respond(tcp, "400 Bad Request", "text/plain", &[], b"not an HTTP request\n").await?;
            Ok(None)
        }
    }
}

/// Write a whole answer and close the connection.
pub async fn respond(
    tcp: &mut TcpStream,
    status: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body).await?;
    tcp.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_gives_method_path_and_host() {
        let r = parse_head(b"GET /api/mesh?x=1 HTTP/1.1\r\nUser-Agent: t\r\nhOsT: 127.0.0.1:9465\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/mesh?x=1");
        assert_eq!(r.route(), "/api/mesh");
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:9465"));
        assert_eq!(parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().host, None);
        assert_eq!(parse_head(b"\xff\xfe\r\n\r\n"), None);
        assert_eq!(parse_head(b"GET\r\n\r\n"), None);
    }
}
