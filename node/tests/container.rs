//! The container image's binary without a container engine: the static
//! build deploy/Containerfile makes, run from a root that holds nothing but
//! that binary and an empty /data, as the image's unprivileged user.
//!
//! deploy/check-container.sh builds the binary the same way and runs this
//! test with FERRY_STATIC_BIN pointing at it (.ci/run does). Besides the
//! node, the demo runs there, and a second node syncs with the first by a
//! name that only the root's /etc/hosts knows: a static glibc binary has
//! no NSS modules to load, and must still read the hosts file.

use std::path::Path;
use std::process::{Command, Stdio};

const USER: &str = "65532:65532";

#[test]
fn the_static_binary_runs_a_node_from_an_empty_root() {
    let Some(bin) = std::env::var_os("FERRY_STATIC_BIN") else {
        // .ci/run runs deploy/check-container.sh, which sets it.
        println!("skipped here: deploy/check-container.sh builds the static binary and runs this");
        return;
    };
    assert_eq!(unsafe { libc::geteuid() }, 0, "chroot needs root");
    // Statically linked: no interpreter, nothing to load.
    let file = Command::new("file").arg(&bin).output();
    if let Ok(f) = file {
        let what = String::from_utf8_lossy(&f.stdout);
        assert!(
            what.contains("statically linked") || what.contains("static-pie"),
            "{what}"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for d in ["data", "ca"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&bin, root.join("ferry")).unwrap();
    let own = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65532, 65532) }, 0);
    };
    own(&root.join("data"));
    own(&root.join("ca"));
    let entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries.len(),
        3,
        "the root holds only /ferry, /data and /ca: {entries:?}"
    );
    // What every container runtime puts in /dev (the OCI runtime spec's
    // default devices), nothing else: statically linked, the binary seeds
    // its random numbers from /dev/urandom.
    std::fs::create_dir(root.join("dev")).unwrap();
    for (name, minor) in [("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)] {
        let path = root.join("dev").join(name);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor)) };
        assert_eq!(made, 0, "mknod {name}");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    }

    // A peer's name, as a static peer would be configured.
    std::fs::create_dir(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 hub.example.org\n").unwrap();
    for d in ["tmp", "demo", "clinic"] {
        std::fs::create_dir(root.join(d)).unwrap();
        own(&root.join(d));
    }

    let in_root = |args: &[&str]| {
        let mut c = Command::new("chroot");
        c.arg(format!("--userspec={USER}"))
            .arg(&root)
            .arg("/ferry")
            .args(args)
            .env_clear()
            // For finding chroot itself; the root has no other programs.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("FERRY_DATA_DIR", "/data");
        c
    };
    let ok_in_root = |args: &[&str]| {
        let out = in_root(args).output().unwrap();
        assert!(
            out.status.success(),
            "/ferry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(ok_in_root(&["--version"]).starts_with("ferry "));
    ok_in_root(&["ca", "init", "--ca-dir", "/ca", "--name", "container"]);
    ok_in_root(&["init", "--name", "in-a-container"]);
    ok_in_root(&["ca", "enroll", "--ca-dir", "/ca", "--role", "hub"]);

    let mut daemon = in_root(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--no-mdns",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = std::io::BufReader::new(daemon.stderr.take().unwrap());
    let mut seen = String::new();
    let (port, api) = loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            panic!("the daemon did not start ({:?}): {seen:?}", daemon.wait());
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("local API ").nth(1) {
            let api = rest.split([',', ' ']).next().unwrap().to_string();
            // "listening on 127.0.0.1:PORT (udp)"
            let at = line.split("listening on ").nth(1).unwrap().split(' ').next().unwrap();
            let port = at.rsplit(':').next().unwrap().to_string();
            break (port, api);
        }
    };
    let pushed: serde_json::Value = ureq::post(&format!("{api}/v1/events"))
        .send_string("from outside the root")
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(pushed["events"][0]["seq"], 1);
    assert!(ok_in_root(&["push", "through the daemon"]).trim().ends_with(":2"));
    let status: serde_json::Value = serde_json::from_str(&ok_in_root(&["status", "--json"])).unwrap();
    assert_eq!(status["events"], 2);
    assert_eq!(status["name"], "in-a-container");

    // A clinic finds the hub by the name in /etc/hosts.
    let clinic = |args: &[&str]| {
        let mut all = vec!["--data-dir", "/clinic"];
        all.extend_from_slice(args);
        ok_in_root(&all)
    };
    clinic(&["init", "--name", "clinic-in-the-root"]);
    clinic(&["ca", "enroll", "--ca-dir", "/ca", "--role", "clinic"]);
    clinic(&["sync", "--peer", &format!("hub.example.org:{port}")]);
    let status: serde_json::Value = serde_json::from_str(&clinic(&["status", "--json"])).unwrap();
    assert_eq!(status["events"], 2, "the hub's events came by its name");

    let demo = ok_in_root(&["demo", "--dir", "/demo/run"]);
    assert!(demo.contains("all three nodes hold the same 300 events"), "{demo}");
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}
