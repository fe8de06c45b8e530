//! The mesh page (`[admin] http`), loaded by Debian's headless Chromium from
//! a 3-node `cluster up`: 3 members and 3 up links drawn, live events over
//! SSE, a killed node's links turning red without a reload, a screenshot
//! saved under `target/` and checked to be non-blank. Chromium is driven
//! over the DevTools protocol on `--remote-debugging-pipe` (fds 3 and 4,
//! NUL-separated JSON), so the test needs no WebDriver and no npm.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{poll_until, Cluster};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Each DevTools call answers within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Headless Chromium in its own process group, killed with it on drop.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    next: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(log: &std::path::Path) -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run scripts/test, which installs Debian's chromium"
        );
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(log).unwrap();
        // bash moves our pipes to fds 3 (commands in) and 4 (answers out).
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--window-size=1200,1400",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0);
        let mut child = cmd.spawn().expect("start chromium");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut msg = Vec::new();
                match r.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        msg.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser {
            child,
            stdin,
            rx,
            next: 0,
            session: None,
            _profile: profile,
        }
    }

    /// One DevTools command (in the attached page once there is one).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.stdin.write_all(&bytes).expect("write to chromium");
        let end = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let v = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("chromium did not answer {method}: {e}"));
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Open `url` in a new page and attach to it.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    }

    /// Evaluate `js` in the page; its value, promises awaited.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r["exceptionDetails"].is_null(), "{js}: {r}");
        r["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// What the page shows now.
const DOM: &str = r##"JSON.stringify({
  members: document.querySelectorAll("g.member").length,
  unreachable: [...document.querySelectorAll('g.member[data-reachable="false"]')].map(g => g.dataset.fqdn),
  links: Object.fromEntries([...document.querySelectorAll("line.link")].map(l => [l.dataset.a + " " + l.dataset.b, l.dataset.state])),
  colour: Object.fromEntries([...document.querySelectorAll("line.link")].map(l => [l.dataset.a + " " + l.dataset.b, getComputedStyle(l).stroke])),
  sse: document.getElementById("sse")?.dataset.state ?? null,
  events: [...document.querySelectorAll("#events tbody tr")].map(r => r.cells[2].textContent),
  link_rows: document.querySelectorAll("#links tbody tr").length,
  navigations: performance.getEntriesByType("navigation").length,
})"##;

fn dom(b: &mut Browser) -> Value {
    serde_json::from_str(b.eval(DOM).as_str().unwrap()).unwrap()
}

/// Raw GET: (status line, headers and body).
fn get(addr: SocketAddr, method: &str, path: &str, host: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    let (status, rest) = out.split_once("\r\n").unwrap();
    (status.to_owned(), rest.to_owned())
}

#[test]
fn chromium_shows_the_mesh_live_and_a_killed_node_turns_red() {
    let cluster = Cluster::up(3, 200, 1000);
    let fe1 = cluster.node("fe1.contoso.test");
    let addr: SocketAddr = fe1
        .admin_http
        .as_deref()
        .expect("cluster.json admin_http")
        .parse()
        .unwrap();
    let host = addr.to_string();
    for n in &cluster.info.nodes {
        assert!(n.admin_http.is_some(), "{} has no admin_http", n.fqdn);
    }

    // The HTTP side, as a script would see it.
    let (status, rest) = get(addr, "GET", "/", &host);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        rest.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"),
        "{rest}"
    );
    assert!(rest.contains("<svg id=\"graph\""), "{rest}");
    let (status, rest) = get(addr, "GET", "/api/mesh", &host);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let body = rest.split_once("\r\n\r\n").unwrap().1;
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        v["members"],
        json!(["fe1.contoso.test", "fe2.contoso.test", "fe3.contoso.test"])
    );
    assert_eq!(v["from"], "fe1.contoso.test");
    assert_eq!(v["roles"]["fe2.contoso.test"], "front-end");
    assert_eq!(
        v["views"]["fe3.contoso.test"]["links"]["fe1.contoso.test"]["state"],
        "up"
    );
    let (status, rest) = get(addr, "GET", "/", "rebound.evil.example");
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{rest}");
    assert!(
        rest.ends_with(
            "Host \"rebound.evil.example\" is not this node: use its IP address, localhost or fe1.contoso.test\n"
        ),
        "{rest}"
    );
    assert_eq!(
        get(addr, "POST", "/api/mesh", &host).0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(get(addr, "GET", "/nope", &host).0, "HTTP/1.1 404 Not Found");

    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut browser = Browser::start(&artifacts.join("page-chromium.log"));
    browser.open(&format!("http://{addr}/"));
    let d = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let d = dom(&mut browser);
        (d["members"] == 3
            && d["sse"] == "open"
            && d["links"].as_object()?.values().filter(|s| *s == "up").count() == 3)
            .then_some(d)
    })
    .unwrap_or_else(|| panic!("page never showed 3 members and 3 up links: {}", dom(&mut browser)));
    assert_eq!(d["unreachable"], json!([]), "{d}");
    assert_eq!(d["link_rows"], 6, "each of 3 members sees 2 links: {d}");
    assert_eq!(
        d["colour"]["fe1.contoso.test fe2.contoso.test"], "rgb(46, 157, 76)",
        "{d}"
    );

    // The screenshot: saved, and more than one colour in it.
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let data = shot["data"].as_str().unwrap().to_owned();
    let png = base64::engine::general_purpose::STANDARD.decode(&data).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = artifacts.join("mesh-page.png");
    std::fs::write(&path, &png).unwrap();
    let colours = browser.eval(&format!(
        r#"new Promise(ok => {{ const i = new Image(); i.onload = () => {{
             const c = document.createElement("canvas"); c.width = i.width; c.height = i.height;
             const g = c.getContext("2d"); g.drawImage(i, 0, 0);
             const px = g.getImageData(0, 0, i.width, i.height).data; const seen = new Set(); let ink = 0;
             for (let k = 0; k < px.length; k += 4) {{ seen.add((px[k] << 16) | (px[k+1] << 8) | px[k+2]);
               if (px[k] < 200 || px[k+1] < 200 || px[k+2] < 200) ink++; }}
             ok({{colours: seen.size, ink: ink / (px.length / 4), w: i.width}}); }};
           i.src = "data:image/png;base64,{data}"; }})"#
    ));
    eprintln!("screenshot {} ({} bytes): {colours}", path.display(), png.len());
    assert_eq!(colours["w"], 1200, "{colours}");
    assert!(colours["colours"].as_u64().unwrap() > 20, "blank screenshot? {colours}");
    assert!(colours["ink"].as_f64().unwrap() > 0.005, "blank screenshot? {colours}");

    // Kill fe3: without a reload, its two links turn red and it is flagged.
    let killed = Instant::now();
    common::kill_sipmesh_pid(cluster.node("fe3.contoso.test").pid);
    let d = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let d = dom(&mut browser);
        let links = d["links"].as_object()?;
        (links["fe1.contoso.test fe3.contoso.test"] == "down"
            && links["fe2.contoso.test fe3.contoso.test"] == "down"
            && d["unreachable"] == json!(["fe3.contoso.test"]))
        .then_some(d)
    })
    .unwrap_or_else(|| panic!("fe3's links never turned down: {}", dom(&mut browser)));
    let took = killed.elapsed();
    eprintln!("fe3 killed: page shows its links down after {took:?}");
    assert_eq!(d["links"]["fe1.contoso.test fe2.contoso.test"], "up", "{d}");
    assert_eq!(
        d["colour"]["fe1.contoso.test fe3.contoso.test"], "rgb(214, 48, 49)",
        "{d}"
    );
    assert_eq!(
        d["colour"]["fe2.contoso.test fe3.contoso.test"], "rgb(214, 48, 49)",
        "{d}"
    );
    assert_eq!(d["navigations"], 1, "the page was not reloaded: {d}");
    // The change arrived as a live event from fe1's bus.
    assert!(
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("fe3.contoso.test: up → down"))),
        "{d}"
    );
    let _ = std::fs::write(artifacts.join("mesh-page-after-kill.png"), {
        let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    });
}
