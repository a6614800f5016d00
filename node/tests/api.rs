//! The local HTTP API through a real daemon and the real CLI: payloads come
//! back byte for byte, every error has one shape, limits are configurable,
//! and beyond loopback a token is required.

mod common;
use common::*;

fn origin_of(dir: &str) -> String {
    let s: serde_json::Value = serde_json::from_str(&ok(&["status", "--data-dir", dir, "--json"])).unwrap();
    s["local_origin"].as_str().unwrap().to_string()
}

#[test]
fn payloads_come_back_exactly_as_written() {
    let dep = Deployment::new("fidelity");
    let dir = dep.node("clinic", "clinic");
    let d = Daemon::start(&dir, &[]);

    // A 1 MB file with many newlines is one event through the daemon.
    let text: String = (0..50_000).map(|i| format!("line {i:>6} of the file\n")).collect();
    let text = &text[..1_000_000];
    std::fs::write(dep.path("big.txt"), text).unwrap();
    let pushed = ok(&["push", "--data-dir", &dir, "--file", &dep.path("big.txt")]);
    assert_eq!(pushed.lines().count(), 1, "{pushed}");
    // The first event of this start begins the node's new log.
    let origin = pushed
        .trim()
        .strip_suffix(":1")
        .expect("the first event of a log")
        .to_string();
    assert_eq!(origin, origin_of(&dir), "`ferry status` names the log being written");

    // JSON whose key order and big integers a re-serialiser would change.
    let json = r#"{"z":1,"a":{"n":12345678901234567890123,"f":1.50},"list":[3,2,1]}"#;
    ok(&["push", "--data-dir", &dir, json]);
    // Binary, not UTF-8.
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    std::fs::write(dep.path("bin"), &binary).unwrap();
    ok(&["push", "--data-dir", &dir, "--file", &dep.path("bin")]);
    // Text with a newline, and pretty JSON: not embedded verbatim (one line each).
    std::fs::write(dep.path("pretty.json"), "{\n  \"b\": 2\n}\n").unwrap();
    ok(&["push", "--data-dir", &dir, "--file", &dep.path("pretty.json")]);

    let raw = |seq: u32| {
        let r = ureq::get(&d.url(&format!("/v1/events/{origin}/{seq}"))).call().unwrap();
        let ctype = r.content_type().to_string();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
        (ctype, body)
    };
    assert_eq!(raw(1), ("text/plain".to_string(), text.as_bytes().to_vec()));
    assert_eq!(raw(2), ("application/json".to_string(), json.as_bytes().to_vec()));
    assert_eq!(raw(3), ("application/octet-stream".to_string(), binary.clone()));
    assert_eq!(raw(4).1, b"{\n  \"b\": 2\n}\n");

    // The JSON listing embeds JSON payloads verbatim; others decode exactly.
    let listing = ureq::get(&d.url("/v1/events?limit=10"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        listing.contains(&format!(r#""encoding":"json","payload":{json}"#)),
        "JSON payload not verbatim in {}",
        &listing[listing.len() - 1500..]
    );
    let v: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["encoding"], "text");
    assert_eq!(events[0]["payload"].as_str().unwrap(), text);
    assert_eq!(events[2]["encoding"], "base64");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(events[2]["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, binary);
    assert_eq!(events[3]["encoding"], "text");
    assert_eq!(events[3]["payload"], "{\n  \"b\": 2\n}\n");

    // The CLI: `log --json` the same, `log --raw` the exact bytes.
    let log = ok(&["log", "--data-dir", &dir, "--json"]);
    assert_eq!(log.lines().count(), 4, "one line per event");
    let second = log.lines().nth(1).unwrap();
    assert!(second.ends_with(&format!(r#""payload":{json}}}"#)), "{second}");
    let out = std::process::Command::new(FERRY)
        .args(["log", "--data-dir", &dir, "--raw", "--id", &format!("{origin}:3")])
        .output()
        .unwrap();
    assert_eq!(out.stdout, binary);
    let out = std::process::Command::new(FERRY)
        .args(["log", "--data-dir", &dir, "--raw", "--limit", "1"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, text.as_bytes());
    d.stop();

    // Without the daemon, push --file and log --raw do the same on the WAL.
    let out = std::process::Command::new(FERRY)
        .args(["push", "--data-dir", &dir, "--file", &dep.path("bin")])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        id.ends_with(":1") && !id.starts_with(&origin),
        "a start of its own: {id}"
    );
    let out = std::process::Command::new(FERRY)
        .args(["log", "--data-dir", &dir, "--raw", "--id", &id])
        .output()
        .unwrap();
    assert_eq!(out.stdout, binary);
}

#[test]
fn every_error_is_json_with_a_code_and_the_cli_shows_the_message() {
    let dep = Deployment::new("errors");
    let dir = dep.node("clinic", "clinic");
    let d = Daemon::start(&dir, &["--api-max-body-bytes", "1000"]);
    let origin = origin_of(&dir);
    let cases: Vec<(Result<ureq::Response, ureq::Error>, u16, &str)> = vec![
        (ureq::get(&d.url("/no/such/path")).call(), 404, "not_found"),
        (ureq::delete(&d.url("/v1/events")).call(), 405, "method_not_allowed"),
        (
            ureq::put(&d.url("/v1/status")).send_string("x"),
            405,
            "method_not_allowed",
        ),
        (
            ureq::post(&d.url("/v1/events")).send_bytes(&[b'x'; 1001]),
            413,
            "body_too_large",
        ),
        (ureq::get(&d.url("/v1/events?limit=many")).call(), 400, "bad_request"),
        (ureq::get(&d.url("/v1/events?limit=10001")).call(), 400, "bad_request"),
        (ureq::get(&d.url("/v1/events?after=-1")).call(), 400, "bad_request"),
        (
            ureq::get(&d.url("/v1/events?origin=nonsense")).call(),
            400,
            "bad_request",
        ),
        (
            ureq::post(&d.url("/v1/events?priority=soon")).send_string("x"),
            400,
            "bad_request",
        ),
        (ureq::post(&d.url("/v1/events")).send_bytes(&[]), 400, "empty_body"),
        (
            ureq::post(&d.url("/v1/events"))
                .set("Content-Type", "application/json")
                .send_string("{\"unclosed\": "),
            400,
            "invalid_json",
        ),
        (
            ureq::post(&d.url("/v1/events"))
                .set("Content-Type", "application/x-ndjson")
                .send_string("{\"ok\":1}\nnot json\n"),
            400,
            "invalid_json",
        ),
        (
            ureq::post(&d.url(&format!("/v1/events?topic={}", "t".repeat(200)))).send_string("x"),
            400,
            "invalid_event",
        ),
        (
            ureq::get(&d.url(&format!("/v1/events/{origin}/99"))).call(),
            404,
            "not_found",
        ),
        (
            ureq::get(&d.url(&format!("/v1/events/{origin}/x"))).call(),
            400,
            "bad_request",
        ),
        (
            ureq::get(&d.url("/v1/stream?from=yesterday")).call(),
            400,
            "bad_request",
        ),
        (ureq::get(&d.url("/v1/stream?after=garbage")).call(), 400, "bad_request"),
    ];
    for (i, (resp, status, code)) in cases.into_iter().enumerate() {
        let (got, body) = error_of(resp);
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap()),
            (status, code),
            "case {i}: {body}"
        );
    }
    // Nothing above was written.
    assert_eq!(d.get_json("/v1/status")["events"], 0);

    // The CLI, through the daemon, repeats the server's message.
    std::fs::write(dep.path("big"), vec![b'x'; 5000]).unwrap();
    let out = run(&["push", "--data-dir", &dir, "--file", &dep.path("big")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the request body is over 1000 bytes") && err.contains("body_too_large"),
        "{err}"
    );
    assert!(!err.contains("unknown error"), "{err}");
    let out = std::process::Command::new(FERRY)
        .args(["push", "--data-dir", &dir])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(b"{\"a\":1}\nplain text\n");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2 of standard input is not JSON"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command with `input` on its standard input.
trait WithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

#[test]
fn beyond_loopback_every_request_needs_the_token() {
    let dep = Deployment::new("token");
    let dir = dep.node("hub", "hub");
    let d = Daemon::start(&dir, &["--api-listen", "0.0.0.0:0"]);
    let token_file = std::path::Path::new(&dir).join("api.token");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(token.len() >= 32);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    wait_for("the daemon to say where the token is", || {
        d.log.lock().unwrap().contains("api.token")
    });

    let port = d.api.rsplit(':').next().unwrap().to_string();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let (code, body) = error_of(ureq::get(&url("/v1/status")).call());
    assert_eq!((code, body["error"]["code"].as_str().unwrap()), (401, "unauthorized"));
    let (code, _) = error_of(
        ureq::get(&url("/v1/status"))
            .set("Authorization", "Bearer not-the-token")
            .call(),
    );
    assert_eq!(code, 401);
    let (code, _) = error_of(ureq::post(&url("/v1/events")).send_string("x"));
    assert_eq!(code, 401);
    let status = ureq::get(&url("/v1/status"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(status.status(), 200);
    // Probes and the documents that carry no data answer without it.
    for open in ["/healthz", "/readyz", "/v1/openapi.json", "/"] {
        assert_eq!(ureq::get(&url(open)).call().unwrap().status(), 200, "{open}");
    }
    // The CLI finds the token in the data directory.
    assert!(ok(&["push", "--data-dir", &dir, "through the token"])
        .trim()
        .ends_with(":1"));
    d.stop();

    // The same token is used on the next start.
    let d = Daemon::start(&dir, &["--api-listen", "0.0.0.0:0"]);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    d.stop();
}

#[test]
fn a_killed_daemons_stale_address_is_not_mistaken_for_it() {
    let dep = Deployment::new("stale");
    let dir = dep.node("clinic", "clinic");
    let other = dep.node("other", "clinic");
    let d = Daemon::start(&dir, &[]);
    let api_addr = std::fs::read_to_string(std::path::Path::new(&dir).join("api.addr")).unwrap();
    d.kill();
    // Another node's daemon now answers where this one's API was.
    let o = Daemon::start(&other, &["--api-listen", api_addr.trim()]);
    assert!(ok(&["push", "--data-dir", &dir, "kept here"]).trim().ends_with(":1"));
    assert_eq!(o.get_json("/v1/status")["events"], 0, "written to the wrong node");
    o.stop();
}
