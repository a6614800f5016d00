//! `/metrics`, `/healthz` and `/readyz` of real daemons; the exposition is
//! read by the Prometheus project's own Python parser (prometheus_client).

mod common;
use common::*;
use std::collections::BTreeMap;

/// `(name, labels) -> value` of every sample, as prometheus_client parses
/// the text, and each family's type.
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn of(d: &Daemon, python: &str) -> Scrape {
        let resp = ureq::get(&d.url("/metrics")).call().unwrap();
        assert!(resp.content_type().starts_with("text/plain"));
        let text = resp.into_string().unwrap();
        const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"samples": [], "types": {}}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
        let mut child = std::process::Command::new(python)
            .args(["-c", PARSE])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Scrape {
            samples: v["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s[0].as_str().unwrap().into(),
                        serde_json::from_value(s[1].clone()).unwrap(),
                        s[2].as_f64().unwrap(),
                    )
                })
                .collect(),
            types: serde_json::from_value(v["types"].clone()).unwrap(),
        }
    }

    /// The value of the one sample named `name` whose labels include `with`.
    fn get(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self
            .samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name && with.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {with:?}: {found:?}");
        found[0].2
    }
}

#[test]
fn metrics_parse_and_describe_the_node_and_its_peers() {
    let Some(python) = python_with(&["prometheus_client"]) else {
        return;
    };
    let dep = Deployment::new("metrics");
    let hub_dir = dep.node("hub", "hub");
    let clinic_dir = dep.node("clinic", "clinic");
    for i in 0..10 {
        ok(&["push", "--data-dir", &clinic_dir, &format!("{{\"visit\":{i}}}")]);
    }
    let hub = Daemon::start(&hub_dir, &[]);
    // One completed session first, so the clinic has counts to show.
    ok(&["sync", "--data-dir", &clinic_dir, "--peer", &hub.addr]);
    let clinic = Daemon::start(&clinic_dir, &["--peer", &hub.addr]);
    for i in 0..5 {
        ok(&["push", "--data-dir", &clinic_dir, &format!("{{\"live\":{i}}}")]);
    }
    let clinic_origin = clinic.get_json("/v1/status")["local_origin"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the hub to hold the clinic's 15 events", || {
        hub.get_json("/v1/status")["events"] == 15
    });
    wait_for("the clinic to record the hub as connected and in sync", || {
        let s = clinic.get_json("/v1/peers");
        s["peers"][0]["connected"] == true && s["peers"][0]["they_lack"] == 0
    });

    let c = Scrape::of(&clinic, python);
    assert_eq!(c.types["ferry_events_held"], "gauge");
    assert_eq!(c.types["ferry_append_durable_seconds"], "histogram");
    assert_eq!(c.types["ferry_peer_events_sent"], "counter");
    // The daemon's start wrote its own log; the ten one-shot pushes before
    // it wrote one each.
    assert_eq!(c.get("ferry_events_held", &[("origin", &clinic_origin)]), 5.0);
    let clinic_node = clinic_origin.split('.').next().unwrap();
    let own_logs = c
        .samples
        .iter()
        .filter(|(n, l, _)| n == "ferry_events_held" && l.get("origin").is_some_and(|o| o.starts_with(clinic_node)))
        .count();
    assert_eq!(own_logs, 11);
    assert_eq!(c.get("ferry_wal_events", &[]), 15.0);
    assert!(c.get("ferry_wal_bytes", &[]) > 15.0 * 20.0);
    assert!(c.get("ferry_wal_segments", &[]) >= 1.0);
    // The five pushes through the API, each durable before it answered.
    assert_eq!(c.get("ferry_append_durable_seconds_count", &[]), 5.0);
    assert_eq!(c.get("ferry_append_durable_seconds_bucket", &[("le", "+Inf")]), 5.0);
    let mut last = 0.0;
    for (name, labels, v) in &c.samples {
        if name == "ferry_append_durable_seconds_bucket" {
            assert!(*v >= last, "buckets are cumulative: {labels:?}");
            last = *v;
        }
    }
    assert!(c.get("ferry_append_durable_seconds_sum", &[]) > 0.0);
    // Every group commit of this daemon was an fdatasync, timed.
    assert_eq!(c.types["ferry_wal_fsync_seconds"], "histogram");
    let commits = c.get("ferry_wal_commits_total", &[]);
    assert!(commits >= 5.0, "the five pushes were five commits at least");
    assert_eq!(c.get("ferry_wal_fsync_seconds_count", &[]), commits);
    assert_eq!(c.get("ferry_wal_fsync_seconds_bucket", &[("le", "+Inf")]), commits);
    assert!(c.get("ferry_wal_fsync_seconds_sum", &[]) > 0.0);
    let hub_peer = [("name", "hub"), ("role", "hub")];
    assert_eq!(c.get("ferry_peer_connected", &hub_peer), 1.0);
    assert!(c.get("ferry_peer_last_sync_timestamp_seconds", &hub_peer) > 1.7e9);
    assert!(
        c.get("ferry_peer_events_sent_total", &hub_peer) >= 10.0,
        "the one-shot sync's 10 events"
    );
    assert_eq!(c.get("ferry_peer_peer_lacks_events", &hub_peer), 0.0);
    // A working path: no connection given up as silent.
    assert_eq!(c.types["ferry_connections_silent"], "counter");
    assert_eq!(c.get("ferry_connections_silent_total", &[]), 0.0);
    assert_eq!(c.get("ferry_peer_node_lacks_events", &hub_peer), 0.0);
    c.get("ferry_peer_bytes_sent_total", &hub_peer);
    c.get("ferry_peer_bytes_received_total", &hub_peer);
    let rss = c.get("process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && rss < 1e9, "{rss}");
    assert_eq!(
        c.get("ferry_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert_eq!(c.get("ferry_node_info", &[("name", "clinic"), ("role", "clinic")]), 1.0);

    let h = Scrape::of(&hub, python);
    assert_eq!(h.get("ferry_events_held", &[("origin", &clinic_origin)]), 5.0);

    // Probes.
    let health = clinic.get_json("/healthz");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], clinic.get_json("/v1/status")["node_id"]);
    assert_eq!(clinic.get_json("/readyz")["status"], "ready");
    clinic.stop();
    hub.stop();
}
