//! What an operator meets at the command line: reading never blocks the
//! daemon, pipes and logs behave, files are private, the CLI documents
//! itself, and messages say what is wrong and what to do.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `ferry status` started at the same moment as `ferry run` must not take
/// the WAL writer's lock, or the daemon fails to start.
#[test]
fn status_started_with_the_daemon_never_stops_it_starting() {
    let dep = Deployment::new("race");
    let dir = dep.node("clinic", "clinic");
    ok(&["push", "--data-dir", &dir, "first"]);
    for attempt in 0..20 {
        let mut daemon = Command::new(FERRY)
            .args([
                "run",
                "--data-dir",
                &dir,
                "--listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
                "--no-mdns",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let cmd = if i == 2 { "log" } else { "status" };
                Command::new(FERRY)
                    .args([cmd, "--data-dir", &dir])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for r in readers {
            let out = r.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "attempt {attempt}: a reader failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(daemon.stderr.as_mut().unwrap()),
            &mut first,
        )
        .unwrap();
        assert!(
            first.contains("listening on"),
            "attempt {attempt}: the daemon did not start: {first}{:?}",
            daemon.try_wait()
        );
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
        assert!(daemon.wait().unwrap().success());
    }
}

/// A pipe whose reader has already gone: every write fails with EPIPE.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    use std::os::fd::FromRawFd;
    unsafe { Stdio::from_raw_fd(fds[1]) }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dep = Deployment::new("pipe");
    let dir = dep.node("clinic", "clinic");
    for i in 0..50 {
        ok(&["push", "--data-dir", &dir, &format!("{{\"n\":{i}}}")]);
    }
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["log"],
        vec!["log", "--json"],
        vec!["log", "--raw"],
        vec!["peers"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--version"],
    ] {
        let out = Command::new(FERRY)
            .args(&args)
            .args(["--data-dir", &dir])
            .stdout(closed_pipe())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "ferry {args:?} panicked: {err}");
        assert!(
            out.status.success() || out.status.code() == Some(0),
            "ferry {args:?}: {:?} {err}",
            out.status
        );
    }
    // The demo tells its story line by line; the first write ends it.
    let out = Command::new(FERRY).arg("demo").stdout(closed_pipe()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "ferry demo panicked: {err}");
    assert!(out.status.success(), "ferry demo: {:?} {err}", out.status);
    // As a shell runs it.
    let sh = Command::new("sh")
        .args(["-c", &format!("{FERRY} log --data-dir {dir} | head -1")])
        .output()
        .unwrap();
    assert!(sh.status.success());
    assert_eq!(String::from_utf8_lossy(&sh.stdout).lines().count(), 1);
    assert!(!String::from_utf8_lossy(&sh.stderr).contains("panicked"));
}

/// What `ferry run --log info` writes to stderr until SIGTERM.
fn daemon_log(dir: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let d = Daemon::start_env(dir, &[&["--log", "info"], extra].concat(), env);
    let log = d.log.clone();
    d.stop();
    let text = log.lock().unwrap().clone();
    text
}

#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    let dep = Deployment::new("logs");
    let dir = dep.node("clinic", "clinic");
    let plain = daemon_log(&dir, &[], &[]);
    assert!(plain.contains("shutting down"), "{plain}");
    assert!(!plain.contains('\x1b'), "colour codes in a pipe: {plain:?}");

    let json = daemon_log(&dir, &["--log-format", "json"], &[]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let shutdown = lines
        .iter()
        .find(|l| l["message"] == "shutting down")
        .unwrap_or_else(|| panic!("no JSON line says shutting down: {json}"));
    assert_eq!(shutdown["level"], "INFO");
    assert!(shutdown["timestamp"].is_string() && shutdown["target"].is_string());

    // On a terminal: colour, unless NO_COLOR says otherwise.
    if Command::new("script").arg("--version").output().is_err() {
        panic!("this test needs `script` (util-linux / bsdutils) for a pseudo-terminal");
    }
    let on_terminal = |no_color: Option<&str>| {
        let mut cmd = Command::new("script");
        cmd.args([
            "-qec",
            &format!(
                "timeout -s TERM 2 {FERRY} run --data-dir {dir} --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --no-mdns --log info"
            ),
            "/dev/null",
        ]);
        cmd.env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).to_string()
    };
    let coloured = on_terminal(None);
    assert!(
        coloured.contains("shutting down") && coloured.contains("\x1b["),
        "{coloured:?}"
    );
    let uncoloured = on_terminal(Some("1"));
    assert!(
        uncoloured.contains("shutting down") && !uncoloured.contains("\x1b["),
        "{uncoloured:?}"
    );
}

#[test]
fn every_file_ferry_writes_is_private() {
    let dep = Deployment::new("modes");
    let hub = dep.node("hub", "hub");
    let clinic = dep.node("clinic", "clinic");
    ok(&["push", "--data-dir", &clinic, "written locally"]);
    let d = Daemon::start(&hub, &[]);
    ok(&["push", "--data-dir", &hub, "through the daemon"]);
    ok(&["sync", "--data-dir", &clinic, "--peer", &d.addr]);
    ok(&["csr", "--data-dir", &clinic, "--out", &dep.path("clinic/extra.csr")]);
    d.stop();
    let mut seen = 0;
    for root in [&hub, &clinic] {
        let mut stack = vec![std::path::PathBuf::from(root)];
        while let Some(p) = stack.pop() {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            if p.is_dir() {
                assert_eq!(mode, 0o700, "{} is {mode:o}", p.display());
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else {
                assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 18, "only {seen} files looked at");
    assert!(std::path::Path::new(&hub).join("peers.json").exists());
    assert!(std::path::Path::new(&hub).join("wal/00000001.seg").exists());
}

#[test]
fn the_cli_documents_itself() {
    // Every command's help ends with examples.
    let top = ok(&["--help"]);
    let commands: Vec<Vec<&str>> = vec![
        vec![],
        vec!["demo"],
        vec!["init"],
        vec!["ca", "init"],
        vec!["ca", "sign"],
        vec!["ca", "enroll"],
        vec!["csr"],
        vec!["cert", "install"],
        vec!["cert", "publish"],
        vec!["push"],
        vec!["log"],
        vec!["status"],
        vec!["peers"],
        vec!["sync"],
        vec!["run"],
        vec!["wal", "rekey"],
        vec!["completions"],
        vec!["man"],
    ];
    for cmd in &commands {
        let help = ok(&[cmd.as_slice(), &["--help"]].concat());
        let examples = help
            .split("Examples:")
            .nth(1)
            .unwrap_or_else(|| panic!("no examples in `ferry {} --help`", cmd.join(" ")));
        assert!(examples.contains("ferry"), "{cmd:?}: {examples}");
    }
    for listed in ["push", "run", "completions", "man"] {
        assert!(top.contains(listed), "{listed} not in the top help");
    }

    // --version names the commit it was built from.
    let version = ok(&["--version"]);
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo_root())
        .output();
    match git {
        Ok(g) if g.status.success() => {
            let commit = String::from_utf8_lossy(&g.stdout).trim().to_string();
            assert!(version.contains(&commit), "{version} does not name {commit}");
        }
        _ => assert!(version.contains("commit unknown"), "{version}"),
    }

    // Completions for each shell; bash's parses.
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = ok(&["completions", shell]);
        assert!(script.contains("ferry") && script.contains("push"), "{shell}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let bash = tmp.path().join("ferry.bash");
    std::fs::write(&bash, ok(&["completions", "bash"])).unwrap();
    let check = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let complete = Command::new("bash")
        .args([
            "-c",
            &format!(
                "source {}; COMP_WORDS=(ferry pu); COMP_CWORD=1; _ferry ferry pu ferry; echo ${{COMPREPLY[@]}}",
                bash.display()
            ),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&complete.stdout).contains("push"));

    // The man page, and one per command.
    let page = ok(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ferry"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(page.contains("Examples") || page.contains("EXAMPLES") || page.contains("ca enroll"));
    let man_dir = tmp.path().join("man1");
    ok(&["man", "--dir", man_dir.to_str().unwrap()]);
    for page in ["ferry.1", "ferry-push.1", "ferry-run.1", "ferry-ca-enroll.1"] {
        let text = std::fs::read_to_string(man_dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    if Command::new("man").arg("--version").output().is_ok() {
        let rendered = Command::new("man")
            .arg("-l")
            .arg(man_dir.join("ferry-push.1"))
            .env("MANPAGER", "cat")
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&rendered.stdout).contains("idempotency"));
    }
}

#[test]
fn messages_say_what_is_wrong_and_what_to_do() {
    let east = Deployment::new("east");
    let west = Deployment::new("west");

    // Not enrolled: the daemon and status say how to enrol.
    let bare = east.path("bare");
    ok(&["init", "--data-dir", &bare, "--name", "bare"]);
    let out = run(&["run", "--data-dir", &bare, "--no-mdns", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ferry ca enroll"));
    assert!(ok(&["status", "--data-dir", &bare]).contains("not enrolled: run `ferry ca enroll"));

    // A peer of another deployment: both CAs, by name and fingerprint.
    let ca_fp = |dep: &Deployment| {
        let out = run(&["ca", "init", "--ca-dir", &dep.ca, "--name", "again"]);
        assert!(!out.status.success(), "a CA was made twice");
        // The fingerprint `ca init` printed is the CA key's: read it back.
        let pem = std::fs::read_to_string(std::path::Path::new(&dep.ca).join("ca.crt")).unwrap();
        let der = ferry::pki::parse_pem_certs(&pem).unwrap();
        ferry::pki::cert_info(&der[0]).unwrap().node_id.to_string()
    };
    let (east_ca, west_ca) = (ca_fp(&east), ca_fp(&west));
    let clinic = east.node("clinic", "clinic");
    let hub = west.node("hub", "hub");
    let d = Daemon::start(&hub, &[]);
    let out = run(&["sync", "--data-dir", &clinic, "--peer", &d.addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another deployment"), "{err}");
    assert!(
        err.contains(&east_ca) && err.contains(&west_ca),
        "both CA fingerprints in: {err}"
    );
    assert!(err.contains("ferry CA east") && err.contains("ferry CA west"), "{err}");
    wait_for("the hub to log the foreign peer", || {
        d.log.lock().unwrap().contains("another deployment")
    });
    d.stop();

    // `--peer HOST` without a port means ferry's port, 7700. A loopback
    // address of its own keeps clear of anything else using 7700.
    let hub = east.node("hub7700", "hub");
    let d = Daemon::start(&hub, &["--listen", "127.0.0.77:7700"]);
    let started = Instant::now();
    let synced = ok(&["sync", "--data-dir", &clinic, "--peer", "127.0.0.77"]);
    assert!(synced.contains("synced with hub7700"), "{synced}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let c2 = Daemon::start(&east.node("clinic2", "clinic"), &["--peer", "127.0.0.77"]);
    wait_for("a daemon to sync with the hub on 7700", || {
        c2.get_json("/v1/status")["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "hub7700" && p["last_sync_unix"].is_u64()))
    });
    c2.stop();
    d.stop();
}
