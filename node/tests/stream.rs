//! `GET /v1/stream` through real daemons: local and replicated events,
//! in order per origin, filtered, and resumed with `Last-Event-ID`.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: Option<String>,
    data: String,
}

/// A client of the stream, reading one event at a time.
struct Stream {
    lines: std::io::Lines<std::io::BufReader<Box<dyn std::io::Read + Send + Sync>>>,
    /// The server's keep-alive comments come every 15 s, so a read never
    /// blocks past this by more than that.
    deadline: std::time::Instant,
}

impl Stream {
    fn open(url: &str, last_event_id: Option<&str>) -> Stream {
        let agent = ureq::AgentBuilder::new().timeout_read(Duration::from_secs(30)).build();
        let mut req = agent.get(url);
        if let Some(id) = last_event_id {
            req = req.set("Last-Event-ID", id);
        }
        let resp = req.call().unwrap();
        assert_eq!(resp.content_type(), "text/event-stream");
        Stream {
            lines: std::io::BufReader::new(resp.into_reader()).lines(),
            deadline: std::time::Instant::now() + Duration::from_secs(90),
        }
    }

    fn next(&mut self) -> Sse {
        let mut e = Sse {
            event: "message".into(),
            id: None,
            data: String::new(),
        };
        loop {
            assert!(
                std::time::Instant::now() < self.deadline,
                "waited too long for a stream event"
            );
            let line = self.lines.next().expect("stream ended").expect("stream read failed");
            if line.is_empty() {
                if !e.data.is_empty() {
                    return e;
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // keep-alive comment
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => e.event = value.into(),
                "id" => e.id = Some(value.into()),
                "data" => e.data.push_str(value),
                _ => {}
            }
        }
    }

    /// Events until the next `cursor` event; returns them and the cursor id.
    fn until_cursor(&mut self) -> (Vec<serde_json::Value>, String) {
        let mut events = Vec::new();
        loop {
            let e = self.next();
            match e.event.as_str() {
                "message" => {
                    let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                    assert_eq!(e.id.as_deref(), v["id"].as_str(), "SSE id is ORIGIN:SEQ");
                    events.push(v);
                }
                "cursor" => return (events, e.id.expect("a cursor event has an id")),
                other => panic!("unexpected {other} event: {}", e.data),
            }
        }
    }

    /// Reads events (across cursor events) until `n` have arrived.
    fn take(&mut self, n: usize) -> Vec<serde_json::Value> {
        self.take_with_cursor(n).0
    }

    /// The same, and the id of the cursor event that followed the last.
    fn take_with_cursor(&mut self, n: usize) -> (Vec<serde_json::Value>, String) {
        let mut out = Vec::new();
        loop {
            let (events, cursor) = self.until_cursor();
            out.extend(events);
            if out.len() >= n {
                return (out, cursor);
            }
        }
    }
}

fn origin_of(d: &Daemon) -> String {
    d.get_json("/v1/status")["local_origin"].as_str().unwrap().to_string()
}

fn push(dir: &str, payload: &str, topic: &str) {
    ok(&["push", "--data-dir", dir, payload, "--topic", topic]);
}

/// Per origin, the sequence numbers in the order they came.
fn by_origin(events: &[serde_json::Value]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        out.entry(e["origin"].as_str().unwrap().into())
            .or_default()
            .push(e["seq"].as_u64().unwrap());
    }
    out
}

#[test]
fn the_stream_carries_local_and_replicated_events_and_resumes() {
    let dep = Deployment::new("stream");
    let hub_dir = dep.node("hub", "hub");
    let clinic_dir = dep.node("clinic", "clinic");
    let hub = Daemon::start(&hub_dir, &[]);
    let clinic = Daemon::start(&clinic_dir, &["--peer", &hub.addr]);

    push(&hub_dir, r#"{"n":"h1"}"#, "notice");
    push(&hub_dir, r#"{"n":"h2"}"#, "notice");
    push(&clinic_dir, r#"{"n":"c1"}"#, "visits");
    push(&clinic_dir, r#"{"n":"c2"}"#, "labs");
    push(&clinic_dir, r#"{"n":"c3"}"#, "visits");
    // Each daemon's first event began the log it writes in this start.
    let (h, c) = (origin_of(&hub), origin_of(&clinic));

    // From the start: the hub's own events and the clinic's, as they arrive.
    let mut all = Stream::open(&hub.url("/v1/stream"), None);
    let first = all.take(5);
    let order = by_origin(&first);
    assert_eq!(order[&h], vec![1, 2]);
    assert_eq!(order[&c], vec![1, 2, 3], "in order per origin");
    assert_eq!(
        first
            .iter()
            .find(|e| e["seq"] == 2 && e["origin"] == c.as_str())
            .unwrap()["payload"]["n"],
        "c2"
    );

    // Filters: by topic, by origin.
    let mut visits = Stream::open(&hub.url("/v1/stream?topic=visits,notice"), None);
    let got: Vec<_> = visits
        .take(4)
        .iter()
        .map(|e| e["payload"]["n"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got.len(), 4);
    assert!(!got.contains(&"c2".to_string()), "{got:?}");
    let mut only_clinic = Stream::open(&hub.url(&format!("/v1/stream?origin={c}")), None);
    let (events, cursor) = only_clinic.until_cursor();
    assert_eq!(by_origin(&events), BTreeMap::from([(c.clone(), vec![1, 2, 3])]));
    assert_eq!(cursor, format!("{c}:3"));

    // The stream is live: an event written at the clinic arrives at the hub.
    push(&clinic_dir, r#"{"n":"c4"}"#, "visits");
    let (live, cursor) = all.take_with_cursor(1);
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(
        (live[0]["origin"].as_str().unwrap(), live[0]["seq"].as_u64()),
        (c.as_str(), Some(4))
    );
    let mut parts: Vec<&str> = cursor.split(',').collect();
    parts.sort();
    let mut want = vec![format!("{c}:4"), format!("{h}:2")];
    want.sort();
    assert_eq!(parts, want, "the cursor names every origin's position");
    drop(all);

    // While nobody listens: one more each side. Resuming with the last id
    // gives exactly those, nothing twice.
    push(&hub_dir, r#"{"n":"h3"}"#, "notice");
    push(&clinic_dir, r#"{"n":"c5"}"#, "visits");
    let mut resumed = Stream::open(&hub.url("/v1/stream"), Some(&cursor));
    let again = resumed.take(2);
    let mut ids: Vec<_> = again.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let mut want = vec![format!("{h}:3"), format!("{c}:5")];
    want.sort();
    assert_eq!(ids, want);

    // A single event id resumes that origin; `after` gives the others.
    let mut partial = Stream::open(&hub.url(&format!("/v1/stream?after={h}:3")), Some(&format!("{c}:3")));
    let rest = partial.take(2);
    assert_eq!(by_origin(&rest), BTreeMap::from([(c.clone(), vec![4, 5])]));

    // From now: only what arrives after opening.
    let mut now = Stream::open(&clinic.url("/v1/stream?from=now"), None);
    push(&hub_dir, r#"{"n":"h4"}"#, "notice");
    let fresh = now.take(1);
    assert_eq!(
        (fresh[0]["origin"].as_str().unwrap(), fresh[0]["seq"].as_u64()),
        (h.as_str(), Some(4))
    );
    assert_eq!(fresh[0]["payload"]["n"], "h4");
    clinic.stop();
    hub.stop();
}

#[test]
fn the_stream_sends_peer_state_when_asked() {
    let dep = Deployment::new("stream-peers");
    let hub_dir = dep.node("hub", "hub");
    let clinic_dir = dep.node("clinic", "clinic");
    let hub = Daemon::start(&hub_dir, &[]);
    let clinic = Daemon::start(&clinic_dir, &["--peer", &hub.addr]);
    let mut s = Stream::open(&clinic.url("/v1/stream?from=now&peers=true"), None);
    let peers = loop {
        let e = s.next();
        if e.event != "peers" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        if v["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "hub"))
        {
            break v;
        }
    };
    let p = &peers["peers"][0];
    for field in [
        "node_id",
        "state",
        "role",
        "addr",
        "last_sync_unix",
        "we_lack",
        "they_lack",
        "events_sent",
    ] {
        assert!(p.get(field).is_some(), "no {field} in {p}");
    }
    clinic.stop();
    hub.stop();
}
