//! The dashboard at `/` of a real hub, in headless Chromium driven by
//! playwright-core (tests/browser/dashboard.mjs): what it shows of the node,
//! its clinics (oldest sync first, sortable) and the live event feed, and
//! that it fetches nothing but from the node. Saves a screenshot; with
//! FERRY_UPDATE_SCREENSHOT=1 it becomes docs/dashboard.png.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Whether node, Chromium and playwright-core are here; in CI they must be.
fn browser_available() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let chromium = Path::new(&std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into())).exists();
    let playwright = repo_root().join("tests/browser/node_modules/playwright-core").exists();
    if node && chromium && playwright {
        return true;
    }
    let missing = format!("node: {node}, chromium: {chromium}, playwright-core: {playwright}");
    assert!(
        std::env::var_os("CI").is_none(),
        "the dashboard test needs {missing}: `apt-get install chromium` and `npm ci --prefix tests/browser` (.ci/run does both)"
    );
    println!("skipped: {missing}; CI runs this test");
    false
}

#[test]
fn the_dashboard_shows_the_hub_its_clinics_and_live_events() {
    if !browser_available() {
        return;
    }
    let dep = Deployment::new("bhutan-east");
    let hub_dir = dep.node("thimphu-hub", "hub");
    for i in 0..40 {
        ok(&[
            "push",
            "--data-dir",
            &hub_dir,
            &format!(r#"{{"type":"notice","n":{i}}}"#),
        ]);
    }
    let hub = Daemon::start(&hub_dir, &[]);
    // Three clinics synced at different times, oldest first.
    let clinics = ["bhu-gasa", "bhu-laya", "bhu-lunana"];
    for (i, name) in clinics.iter().enumerate() {
        let dir = dep.node(name, "clinic");
        for v in 0..(5 + 3 * i) {
            ok(&[
                "push",
                "--data-dir",
                &dir,
                &format!(r#"{{"type":"visit","clinic":"{name}","n":{v}}}"#),
            ]);
        }
        if i < 2 {
            // The first two edit the same record, each before hearing of
            // the other: one conflict at the hub.
            let offline = Daemon::start(&dir, &[]);
            ok(&["record", "put", "--data-dir", &dir, "patients", "p-1", name]);
            offline.stop();
        }
        ok(&["sync", "--data-dir", &dir, "--peer", &hub.addr]);
        std::thread::sleep(Duration::from_millis(1100));
    }
    // And one connected now.
    let live_dir = dep.node("bhu-tang", "clinic");
    let live = Daemon::start(&live_dir, &["--peer", &hub.addr]);
    ok(&[
        "push",
        "--data-dir",
        &live_dir,
        r#"{"type":"visit","clinic":"bhu-tang"}"#,
    ]);
    wait_for("the hub to hold every clinic's events", || {
        hub.get_json("/v1/status")["events"] == 40 + 5 + 8 + 11 + 1 + 2
    });

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let out = Command::new("node")
        .arg(repo_root().join("tests/browser/dashboard.mjs"))
        .arg(&hub.api)
        .arg(&shot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{}", serde_json::to_string_pretty(&shown).unwrap());

    assert_eq!(shown["errors"], serde_json::json!([]), "errors in the page");
    assert_eq!(shown["node"]["name"], "thimphu-hub");
    assert_eq!(shown["node"]["role"], "hub");
    assert_eq!(shown["node"]["conflicts"], "1", "the record edited at two clinics");
    // Every request went to the node itself: no fonts, scripts or styles
    // from elsewhere.
    for url in shown["requests"].as_array().unwrap() {
        assert!(url.as_str().unwrap().starts_with(&hub.api), "the page fetched {url}");
    }
    assert!(shown["html_bytes"].as_u64().unwrap() < 24 * 1024, "the page is small");

    // The clinics table: oldest sync first; the connected clinic, once the
    // hub records it, comes after them.
    let rows = shown["clinics"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert!(names.len() >= 3, "{names:?}");
    assert_eq!(&names[..3], &clinics, "oldest sync first");
    for r in &rows[..3] {
        let synced = r[2].as_str().unwrap();
        assert!(synced.ends_with("s ago"), "last sync shown as an age: {r}");
        assert_eq!(r[4], "0", "the hub lacks nothing of a clinic that synced: {r}");
    }
    let newest: Vec<&str> = shown["clinicsNewestFirst"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut reversed = names.clone();
    reversed.reverse();
    assert_eq!(newest, reversed, "sorting by last sync the other way");
    let by_name: Vec<&str> = shown["clinicsByName"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(by_name, sorted);

    // The live feed carried the event written while the page was open.
    let feed = shown["feed"].as_array().unwrap();
    assert!(
        feed.iter()
            .any(|r| r[2] == "referrals" && r[3].as_str().unwrap().contains("dashboard-test")),
        "{feed:?}"
    );

    if std::env::var_os("FERRY_UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(&shot, repo_root().join("docs/dashboard.png")).unwrap();
    }
    live.stop();
    hub.stop();
}
