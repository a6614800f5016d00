//! Real `ferry` processes for the API and operator tests: a deployment in a
//! temporary directory, daemons on loopback, and their local API.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub fn run(args: &[&str]) -> Output {
    Command::new(FERRY).args(args).output().unwrap()
}

pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A CA and nodes enrolled under it, in one temporary directory.
pub struct Deployment {
    pub tmp: tempfile::TempDir,
    pub ca: String,
}

impl Deployment {
    pub fn new(name: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca").to_str().unwrap().to_string();
        ok(&["ca", "init", "--ca-dir", &ca, "--name", name]);
        Deployment { tmp, ca }
    }

    pub fn path(&self, name: &str) -> String {
        self.tmp.path().join(name).to_str().unwrap().to_string()
    }

    /// `ferry init` and `ferry ca enroll`; returns the data directory.
    pub fn node(&self, name: &str, role: &str) -> String {
        let dir = self.path(name);
        ok(&["init", "--data-dir", &dir, "--name", name]);
        ok(&["--data-dir", &dir, "ca", "enroll", "--ca-dir", &self.ca, "--role", role]);
        dir
    }
}

/// A `ferry run` process, stopped with SIGTERM when dropped.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: String,
    /// Its QUIC address.
    pub addr: String,
    /// `http://IP:PORT` of its local API.
    pub api: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    pub fn start(dir: &str, extra: &[&str]) -> Daemon {
        Self::start_env(dir, extra, &[])
    }

    pub fn start_env(dir: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(FERRY);
        cmd.args(["run", "--data-dir", dir]);
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args([
            "--interval",
            "1",
            // Loopback only: no multicast onto the machine's real network.
            "--no-mdns",
        ]);
        if !extra.contains(&"--api-listen") {
            cmd.args(["--api-listen", "127.0.0.1:0"]);
        }
        cmd.args(extra).envs(env.iter().copied()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // Warnings may come first (a WAL not closed cleanly, say).
        let mut line = String::new();
        while !line.contains("listening on ") {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the daemon exited before it listened"
            );
        }
        let after = |marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|r| r.split([' ', ',']).next())
                .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
                .to_string()
        };
        let addr = after("listening on ");
        let api = after("local API ");
        let log = std::sync::Arc::new(std::sync::Mutex::new(line.clone()));
        let sink = log.clone();
        // Keep draining stderr so the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            for l in stderr.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Daemon {
            child: Some(child),
            dir: dir.to_string(),
            addr,
            api,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        ureq::get(&self.url(path)).call().unwrap().into_json().unwrap()
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(
                status.success() || std::thread::panicking(),
                "daemon did not exit cleanly on SIGTERM: {status}"
            );
        }
    }

    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The answer to a request that must fail: status and JSON body.
pub fn error_of(resp: Result<ureq::Response, ureq::Error>) -> (u16, serde_json::Value) {
    match resp {
        Err(ureq::Error::Status(code, r)) => {
            let ctype = r.content_type().to_string();
            let text = r.into_string().unwrap();
            assert_eq!(ctype, "application/json", "HTTP {code} answered {ctype}: {text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "not the error shape: {text}"
            );
            (code, v)
        }
        Ok(r) => panic!("expected an error, got HTTP {}", r.status()),
        Err(e) => panic!("transport error: {e}"),
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A Python with the named modules. Without them: in CI a failure, elsewhere
/// `None` and a note that the test was skipped.
pub fn python_with(modules: &[&str]) -> Option<&'static str> {
    let check = format!("import {}", modules.join(", "));
    let ok = Command::new("python3")
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success());
    let how = format!("`pip install {}` (.ci/run does)", modules.join(" ").replace('_', "-"));
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "this test needs python3 with {modules:?}: {how}"
    );
    if !ok {
        println!("skipped: python3 lacks {modules:?}; {how}");
    }
    ok.then_some("python3")
}
