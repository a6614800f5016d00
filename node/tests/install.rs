//! Installing a node: deploy/install.sh (idempotent, private data
//! directory), the hardened systemd unit, and the static binary the
//! container image ships, run from an otherwise empty root.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A tool this test needs, or (outside CI) a reason to skip.
fn have(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool).args(args).output().is_ok_and(|o| o.status.success());
    assert!(ok || std::env::var_os("CI").is_none(), "{tool} is needed in CI");
    if !ok {
        println!("skipped: {tool} is not installed");
    }
    ok
}

#[test]
fn the_unit_is_hardened() {
    if !have("systemd-analyze", &["--version"]) {
        return;
    }
    let unit = repo_root().join("deploy/ferry.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall rating in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    println!("{overall}");
    let level: f64 = overall
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{overall}"));
    assert!(
        ["OK", "SAFE", "PERFECT"].iter().any(|label| overall.contains(label)),
        "systemd rates the unit worse than OK: {overall}"
    );
    assert!(level < 2.0, "{overall}");
}

#[test]
fn install_sh_is_idempotent_and_keeps_the_data_private() {
    if !is_root() || !have("useradd", &["--help"]) {
        println!("skipped: install.sh needs root and useradd");
        assert!(std::env::var_os("CI").is_none() || is_root(), "CI runs as root");
        return;
    }
    // A minimal root for install.sh to install into.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for (file, line) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("group", "root:x:0:\n"),
        ("shadow", "root:*:19000:0:99999:7:::\n"),
        ("gshadow", "root:*::\n"),
    ] {
        std::fs::write(root.join("etc").join(file), line).unwrap();
    }
    if Path::new("/etc/login.defs").exists() {
        std::fs::copy("/etc/login.defs", root.join("etc/login.defs")).unwrap();
    }
    let install = |extra: &[&str]| {
        let out = Command::new("sh")
            .arg(repo_root().join("deploy/install.sh"))
            .args(["--binary", FERRY])
            .args(extra)
            .env("ROOT", root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = install(&["--name", "bhu-gasa"]);
    assert!(first.contains("next: enrol this node"), "{first}");
    let listing = || {
        let out = Command::new("find")
            .arg(root)
            .args(["-printf", "%M %U %G %s %p\n"])
            .output()
            .unwrap();
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains("/etc/") || l.contains("systemd"))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    let before = listing();
    let key = std::fs::read(root.join("var/lib/ferry/node.key")).unwrap();
    install(&["--name", "bhu-gasa"]);
    assert_eq!(listing(), before, "a second run changed what the first installed");
    assert_eq!(
        std::fs::read(root.join("var/lib/ferry/node.key")).unwrap(),
        key,
        "the node's key was replaced"
    );

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let users: Vec<&str> = passwd.lines().filter(|l| l.starts_with("ferry:")).collect();
    assert_eq!(users.len(), 1, "{passwd}");
    let uid: u32 = users[0].split(':').nth(2).unwrap().parse().unwrap();
    let data = root.join("var/lib/ferry");
    let meta = std::fs::metadata(&data).unwrap();
    assert_eq!((meta.permissions().mode() & 0o7777, meta.uid()), (0o700, uid));
    for entry in std::fs::read_dir(&data).unwrap() {
        let m = entry.as_ref().unwrap().metadata().unwrap();
        assert_eq!(m.uid(), uid, "{:?} not owned by ferry", entry.unwrap().path());
        assert_eq!(m.permissions().mode() & 0o077, 0, "readable by others");
    }
    let bin = std::fs::metadata(root.join("usr/local/bin/ferry")).unwrap();
    assert_eq!(bin.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/systemd/system/ferry.service")).unwrap(),
        std::fs::read_to_string(repo_root().join("deploy/ferry.service")).unwrap()
    );
    let wanted = root.join("etc/systemd/system/multi-user.target.wants/ferry.service");
    assert!(std::fs::symlink_metadata(&wanted).is_ok(), "the unit is not enabled");
    assert!(root.join("usr/local/share/man/man1/ferry-run.1").exists());
    assert!(root.join("usr/local/share/bash-completion/completions/ferry").exists());
}

/// Where systemd runs (not in this project's CI, which has no systemd as
/// PID 1), the node runs under the unit's own sandbox: the [Service] lines
/// are handed to `systemd-run` for a transient unit on a test data directory.
#[test]
fn the_node_runs_under_the_units_sandbox_where_systemd_runs() {
    if !Path::new("/run/systemd/system").exists() || !is_root() {
        println!("skipped: systemd is not running as PID 1 here");
        return;
    }
    let dep = Deployment::new("systemd");
    let dir = dep.node("sandboxed", "clinic");
    let unit = std::fs::read_to_string(repo_root().join("deploy/ferry.service")).unwrap();
    let mut args = vec![
        "--unit=ferry-test".to_string(),
        "--collect".into(),
        "--property=Type=exec".into(),
    ];
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap();
        // The test's own binary, data directory and user instead.
        if [
            "ExecStart",
            "User",
            "Group",
            "StateDirectory",
            "Environment",
            "Restart",
            "Type",
        ]
        .contains(&key)
        {
            continue;
        }
        args.push(format!("--property={line}"));
    }
    args.push("--property=DynamicUser=yes".into());
    args.push(format!("--property=ReadWritePaths={dir}"));
    let _ = Command::new("chmod").args(["-R", "a+rwX", &dir]).status();
    let _ = Command::new("chmod")
        .args(["a+rx", dep.tmp.path().to_str().unwrap()])
        .status();
    let status = Command::new("systemd-run")
        .args(&args)
        .args([
            FERRY,
            "run",
            "--data-dir",
            &dir,
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:17701",
            "--no-mdns",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("the sandboxed node to answer", || {
        ureq::get("http://127.0.0.1:17701/healthz").call().is_ok()
    });
    let pushed = ureq::post("http://127.0.0.1:17701/v1/events").send_string("under systemd");
    let _ = Command::new("systemctl").args(["stop", "ferry-test"]).status();
    assert_eq!(pushed.unwrap().status(), 200);
}
