//! The container image's binary without a container engine: the static
//! build deploy/Containerfile makes, run from a root that holds nothing but
//! that binary and an empty /data, as the image's unprivileged user.
//!
//! deploy/check-container.sh builds the binary the same way and runs this
//! test with FERRY_STATIC_BIN pointing at it (.ci/run does).

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
    let api = loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            panic!("the daemon did not start ({:?}): {seen:?}", daemon.wait());
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("local API ").nth(1) {
            break rest.split([',', ' ']).next().unwrap().to_string();
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
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}
