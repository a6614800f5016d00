//! Keyed records through real `ferry run` daemons, the CLI and the HTTP API:
//! two clinics offline from each other edit the same patient, a hub carries
//! both edits everywhere, every node shows the same winner, both versions and
//! one conflict, and one resolving write clears it on all three.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::time::Duration;

fn record(d: &Daemon, path: &str) -> serde_json::Value {
    ureq::get(&d.url(path)).call().unwrap().into_json().unwrap()
}

fn conflicts(d: &Daemon) -> serde_json::Value {
    record(d, "/v1/conflicts")
}

/// A daemon with no peer: offline from everyone.
fn offline(dir: &str) -> Daemon {
    Daemon::start(dir, &[])
}

#[test]
fn two_offline_clinics_edit_one_record_and_every_node_shows_the_same_conflict() {
    let dep = Deployment::new("bhutan-east");
    let hub_dir = dep.node("thimphu-hub", "hub");
    let gasa_dir = dep.node("bhu-gasa", "clinic");
    let laya_dir = dep.node("bhu-laya", "clinic");
    let hub = Daemon::start(&hub_dir, &[]);

    // The record exists everywhere first.
    let gasa = Daemon::start(&gasa_dir, &["--peer", &hub.addr]);
    let base = ok(&[
        "record",
        "put",
        "--data-dir",
        &gasa_dir,
        "patients",
        "p-17",
        r#"{"name":"Dorji","village":"Gasa"}"#,
    ]);
    let base = base.trim().to_string();
    let laya = Daemon::start(&laya_dir, &["--peer", &hub.addr]);
    wait_for("laya to hold the first version", || {
        ureq::get(&laya.url("/v1/records/patients/p-17")).call().is_ok()
    });
    gasa.stop();
    laya.stop();

    // Each clinic edits it, offline from the other and from the hub.
    let gasa = offline(&gasa_dir);
    let v_gasa = ok(&[
        "record",
        "put",
        "--data-dir",
        &gasa_dir,
        "patients",
        "p-17",
        r#"{"name":"Dorji","village":"Gasa","bp":"120/80"}"#,
    ]);
    gasa.stop();
    let laya = offline(&laya_dir);
    let v_laya = ok(&[
        "record",
        "put",
        "--data-dir",
        &laya_dir,
        "patients",
        "p-17",
        r#"{"name":"Dorji Wangmo","village":"Gasa"}"#,
    ]);
    laya.stop();
    let (v_gasa, v_laya) = (v_gasa.trim().to_string(), v_laya.trim().to_string());
    assert_ne!(v_gasa, v_laya);

    // Each syncs with the hub.
    let gasa = Daemon::start(&gasa_dir, &["--peer", &hub.addr]);
    let laya = Daemon::start(&laya_dir, &["--peer", &hub.addr]);
    let nodes = [("hub", &hub), ("gasa", &gasa), ("laya", &laya)];
    for (name, d) in nodes {
        wait_for(&format!("{name} to show one conflict"), || conflicts(d)["count"] == 1);
    }
    let shown: Vec<serde_json::Value> = nodes
        .iter()
        .map(|(_, d)| record(d, "/v1/records/patients/p-17"))
        .collect();
    for (s, (name, _)) in shown.iter().zip(nodes) {
        assert_eq!(s["version"], shown[0]["version"], "{name} shows another winner: {s}");
        assert_eq!(s["conflict"], true, "{name}: {s}");
        let mut both = vec![
            s["version"].as_str().unwrap().to_string(),
            s["concurrent"][0]["version"].as_str().unwrap().to_string(),
        ];
        both.sort();
        let mut want = vec![v_gasa.clone(), v_laya.clone()];
        want.sort();
        assert_eq!(both, want, "{name} lists both versions");
        let c = &conflicts(nodes[0].1)["conflicts"][0];
        assert_eq!(
            (c["collection"].as_str(), c["key"].as_str()),
            (Some("patients"), Some("p-17"))
        );
    }
    // The winner is the later clock of the two: the same choice everywhere.
    let winner = shown[0]["version"].as_str().unwrap();
    let hlcs: Vec<u64> = [&shown[0]["hlc"], &shown[0]["concurrent"][0]["hlc"]]
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect();
    assert!(hlcs[0] >= hlcs[1], "the winner has the later HLC: {hlcs:?}");

    // The CLI tells the same story.
    let out = run(&["record", "get", "--data-dir", &hub_dir, "patients", "p-17"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conflict") && err.contains(winner), "{err}");
    let listed = ok(&["record", "conflicts", "--data-dir", &laya_dir]);
    assert!(listed.starts_with("patients/p-17\t"), "{listed}");
    let history = ok(&["record", "history", "--data-dir", &gasa_dir, "patients", "p-17"]);
    assert_eq!(history.lines().count(), 3, "{history}");
    assert!(
        history.lines().next().unwrap().starts_with(&base),
        "oldest first: {history}"
    );
    assert!(history.contains("superseded") && history.contains("concurrent") && history.contains("current"));

    // A write at one clinic that saw both resolves the conflict everywhere.
    let resolved = ok(&[
        "record",
        "put",
        "--data-dir",
        &laya_dir,
        "--if-match",
        winner,
        "patients",
        "p-17",
        r#"{"name":"Dorji Wangmo","village":"Gasa","bp":"120/80"}"#,
    ]);
    let resolved = resolved.trim().to_string();
    for (name, d) in nodes {
        wait_for(&format!("{name} to show the conflict resolved"), || {
            conflicts(d)["count"] == 0 && record(d, "/v1/records/patients/p-17")["version"] == resolved.as_str()
        });
        let r = record(d, "/v1/records/patients/p-17");
        assert_eq!(r["conflict"], false, "{name}: {r}");
        assert_eq!(r["payload"]["bp"], "120/80");
        assert_eq!(
            record(d, "/v1/records/patients/p-17/history")["versions"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
    }
}

#[test]
fn a_stale_if_match_gets_409_and_writes_nothing() {
    let dep = Deployment::new("bhutan-east");
    let dir = dep.node("bhu-gasa", "clinic");
    let d = Daemon::start(&dir, &[]);
    let url = d.url("/v1/records/stock/amoxicillin");
    // ureq's error is large; it is what `error_of` takes apart.
    #[allow(clippy::result_large_err)]
    let put = |body: &str, if_match: Option<&str>| {
        let mut r = ureq::put(&url).set("Content-Type", "application/json");
        if let Some(v) = if_match {
            r = r.set("If-Match", v);
        }
        r.send_string(body)
    };
    let first = put(r#"{"count":40}"#, None).unwrap();
    let etag1 = first.header("etag").unwrap().to_string();
    let second = put(r#"{"count":38}"#, Some(&etag1)).unwrap();
    let etag2 = second.header("etag").unwrap().to_string();
    assert_ne!(etag1, etag2);
    let events_before = d.get_json("/v1/status")["events"].clone();

    // The same If-Match again is stale now.
    let (code, err) = error_of(put(r#"{"count":39}"#, Some(&etag1)));
    assert_eq!(code, 409);
    assert_eq!(err["error"]["code"], "version_mismatch");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains(etag2.trim_matches('"')),
        "{err}"
    );
    let (code, _) = error_of(ureq::delete(&url).set("If-Match", &etag1).call());
    assert_eq!(code, 409);
    assert_eq!(
        d.get_json("/v1/status")["events"],
        events_before,
        "a refused write wrote an event"
    );
    let r = record(&d, "/v1/records/stock/amoxicillin");
    assert_eq!(r["payload"]["count"], 38);
    assert_eq!(
        record(&d, "/v1/records/stock/amoxicillin/history")["versions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The CLI refuses the same way.
    let out = run(&[
        "record",
        "put",
        "--data-dir",
        &dir,
        "--if-match",
        &etag1,
        "stock",
        "amoxicillin",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("version_mismatch"));

    // Delete with the current version; the record then reads as deleted.
    let gone = ureq::delete(&url).set("If-Match", &etag2).call().unwrap();
    assert!(gone.header("etag").is_some());
    let (code, err) = error_of(ureq::get(&url).call());
    assert_eq!((code, err["error"]["code"].as_str()), (404, Some("record_deleted")));
    let (code, _) = error_of(ureq::delete(&url).call());
    assert_eq!(code, 404, "deleting a deleted record");
    let (code, _) = error_of(ureq::put(&d.url("/v1/records/bad%2Fname/k")).send_string("x"));
    assert_eq!(code, 400);
    let (code, _) = error_of(put("{not json", None));
    assert_eq!(code, 400);
}

#[test]
fn a_collection_pages_and_the_index_survives_loss_and_damage() {
    let dep = Deployment::new("bhutan-east");
    let dir = dep.node("bhu-gasa", "clinic");
    let d = Daemon::start(&dir, &[]);
    for i in 0..7 {
        ureq::put(&d.url(&format!("/v1/records/visits/v{i}")))
            .send_string(&format!("visit {i}"))
            .unwrap();
    }
    // An event outside the records: not a record.
    ok(&["push", "--data-dir", &dir, "--topic", "notes", "hello"]);
    let page_all = |d: &Daemon| {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &after {
                Some(a) => format!("/v1/records/visits?limit=3&after={a}"),
                None => "/v1/records/visits?limit=3".to_string(),
            };
            let p = record(d, &path);
            pages += 1;
            for r in p["records"].as_array().unwrap() {
                keys.push(r["key"].as_str().unwrap().to_string());
                assert_eq!(r["payload"], format!("visit {}", &r["key"].as_str().unwrap()[1..]));
            }
            match p["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
        }
        keys.sort();
        (keys, pages)
    };
    let (keys, pages) = page_all(&d);
    assert_eq!(keys, (0..7).map(|i| format!("v{i}")).collect::<Vec<_>>());
    assert_eq!(pages, 3);
    d.stop();

    let index = std::path::Path::new(&dir).join("records.redb");
    assert!(index.exists(), "the index is kept on disk");
    // The index holds no names in the clear (nor values: they stay in the WAL).
    let bytes = std::fs::read(&index).unwrap();
    assert!(
        !bytes.windows(6).any(|w| w == b"visits"),
        "a collection name in the clear"
    );

    // Lost: rebuilt from the log.
    std::fs::remove_file(&index).unwrap();
    let d = Daemon::start(&dir, &[]);
    wait_for("the index to be rebuilt", || page_all(&d).0.len() == 7);
    d.stop();
    // Damaged: rebuilt too.
    std::fs::write(&index, b"this is not a redb file at all").unwrap();
    let d = Daemon::start(&dir, &[]);
    wait_for("the damaged index to be rebuilt", || page_all(&d).0.len() == 7);

    // The live stream carries record writes as `record` events.
    let resp = ureq::get(&d.url("/v1/stream?from=start&topic=ferry.record/visits"))
        .timeout(Duration::from_secs(20))
        .call()
        .unwrap();
    let mut lines = BufReader::new(resp.into_reader()).lines();
    let mut saw = None;
    while let Some(Ok(l)) = lines.next() {
        if l == "event: record" {
            saw = Some(String::new());
        } else if let (Some(_), Some(data)) = (&saw, l.strip_prefix("data: ")) {
            saw = Some(data.to_string());
            break;
        }
    }
    let change: serde_json::Value = serde_json::from_str(&saw.expect("a record event")).unwrap();
    assert_eq!(change["collection"], "visits");
    assert!(change["key"].as_str().unwrap().starts_with('v'));
    assert!(change["version"].is_string());
}

/// The same, with no network between the sites at all: a mule (`ferry sync`
/// from a laptop) visits each clinic and the hub in turn and carries both
/// edits, then the resolution.
#[test]
fn a_mule_carries_both_edits_and_the_resolution() {
    let dep = Deployment::new("bhutan-east");
    let hub_dir = dep.node("thimphu-hub", "hub");
    let gasa_dir = dep.node("bhu-gasa", "clinic");
    let laya_dir = dep.node("bhu-laya", "clinic");
    let mule_dir = dep.node("mule", "mule");
    let hub = offline(&hub_dir);
    let gasa = offline(&gasa_dir);
    let laya = offline(&laya_dir);
    let visit = |d: &Daemon| ok(&["sync", "--data-dir", &mule_dir, "--peer", &d.addr]);

    let put = |dir: &str, value: &str| {
        ok(&["record", "put", "--data-dir", dir, "referrals", "r-9", value])
            .trim()
            .to_string()
    };
    let v_gasa = put(&gasa_dir, r#"{"to":"thimphu","reason":"x-ray"}"#);
    let v_laya = put(&laya_dir, r#"{"to":"thimphu","reason":"maternity"}"#);
    for d in [&gasa, &laya, &hub, &gasa, &laya] {
        visit(d);
    }
    let nodes = [("hub", &hub), ("gasa", &gasa), ("laya", &laya)];
    let mut winners = Vec::new();
    for (name, d) in nodes {
        wait_for(&format!("{name} to show the conflict"), || conflicts(d)["count"] == 1);
        let r = record(d, "/v1/records/referrals/r-9");
        let mut both = vec![
            r["version"].as_str().unwrap().to_string(),
            r["concurrent"][0]["version"].as_str().unwrap().to_string(),
        ];
        winners.push(both[0].clone());
        both.sort();
        let mut want = vec![v_gasa.clone(), v_laya.clone()];
        want.sort();
        assert_eq!(both, want, "{name}: {r}");
    }
    assert!(winners.iter().all(|w| *w == winners[0]), "{winners:?}");

    // Resolved at the hub; the mule takes it to both clinics.
    let resolved = put(&hub_dir, r#"{"to":"thimphu","reason":"x-ray, maternity"}"#);
    for d in [&hub, &gasa, &laya] {
        visit(d);
    }
    for (name, d) in nodes {
        wait_for(&format!("{name} to show it resolved"), || {
            conflicts(d)["count"] == 0 && record(d, "/v1/records/referrals/r-9")["version"] == resolved.as_str()
        });
    }
}

#[test]
fn record_commands_have_help_and_say_they_need_the_daemon() {
    for sub in ["put", "get", "list", "conflicts", "history"] {
        let out = ok(&["record", sub, "--help"]);
        assert!(out.contains("Usage") && out.contains("Examples"), "{sub}: {out}");
    }
    let dep = Deployment::new("bhutan-east");
    let dir = dep.node("bhu-gasa", "clinic");
    let out = run(&["record", "get", "--data-dir", &dir, "patients", "p-1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ferry run"), "{err}");
}
