//! The API against its OpenAPI document, by schemathesis (from PyPI): a
//! property-based fuzzer that sends requests the document allows, and some
//! it forbids, and checks every answer: no 5xx, and status, content type,
//! headers and body as documented.

mod common;
use common::*;
use std::process::Command;

#[test]
fn the_served_document_is_the_one_in_the_repository() {
    let dep = Deployment::new("openapi");
    let dir = dep.node("hub", "hub");
    let d = Daemon::start(&dir, &[]);
    let served = ureq::get(&d.url("/v1/openapi.json"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let file = std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap();
    assert_eq!(served, file);
    let doc: serde_json::Value = serde_json::from_str(&file).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Every route the daemon serves is documented.
    for path in [
        "/v1/events",
        "/v1/events/{origin}/{seq}",
        "/v1/stream",
        "/v1/status",
        "/v1/peers",
        "/v1/revocations",
        "/v1/records/{collection}",
        "/v1/records/{collection}/{key}",
        "/v1/records/{collection}/{key}/history",
        "/v1/conflicts",
        "/v1/openapi.json",
        "/metrics",
        "/healthz",
        "/readyz",
        "/",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not in docs/openapi.json");
    }
    d.stop();
}

#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let st = Command::new("schemathesis").arg("--version").output();
    if !st.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is not installed: `pip install schemathesis` (.ci/run does)"
        );
        println!("skipped: schemathesis is not installed (`pip install schemathesis`); CI runs it");
        return;
    }
    // A hub with a connected clinic and events of every kind, so that
    // listings, payloads and peers have something to show.
    let dep = Deployment::new("schemathesis");
    let hub_dir = dep.node("hub", "hub");
    let clinic_dir = dep.node("clinic", "clinic");
    let hub = Daemon::start(&hub_dir, &[]);
    let clinic = Daemon::start(&clinic_dir, &["--peer", &hub.addr]);
    ok(&["push", "--data-dir", &clinic_dir, r#"{"visit":1}"#]);
    ok(&["push", "--data-dir", &clinic_dir, "plain text"]);
    std::fs::write(dep.path("bin"), [0u8, 159, 146, 150]).unwrap();
    ok(&["push", "--data-dir", &clinic_dir, "--file", &dep.path("bin")]);
    wait_for("the hub to hold the clinic's events", || {
        hub.get_json("/v1/status")["events"] == 3
    });
    // A record, so that the record routes have something to show.
    ok(&[
        "record",
        "put",
        "--data-dir",
        &hub_dir,
        "patients",
        "p-1",
        r#"{"name":"Dorji"}"#,
    ]);
    // Its cache of findings goes in the test's own directory, not the repository.
    let out = Command::new("schemathesis")
        .current_dir(dep.tmp.path())
        .args([
            "run",
            &hub.url("/v1/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
            // An endless stream: tests/stream.rs covers it.
            "--exclude-path",
            "/v1/stream",
            "--max-examples",
            "40",
            "--workers",
            "1",
            "--no-color",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found answers that break the document:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    // The daemons survived it.
    assert_eq!(hub.get_json("/healthz")["status"], "ok");
    clinic.stop();
    hub.stop();
}
