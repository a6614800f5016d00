//! `/metrics` in the Prometheus text format (version 0.0.4), and the
//! liveness and readiness probes.

use super::error::ApiError;
use super::Api;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram that any thread may add to without a lock.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    fn write(&self, out: &mut Text, name: &str, help: &str) {
        out.family(name, "histogram", help);
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.counts) {
            cumulative += n.load(Relaxed);
            out.sample(
                &format!("{name}_bucket"),
                &[("le", &bound.to_string())],
                cumulative as f64,
            );
        }
        let count = self.count.load(Relaxed);
        out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count as f64);
        out.sample(&format!("{name}_sum"), &[], self.sum_micros.load(Relaxed) as f64 / 1e6);
        out.sample(&format!("{name}_count"), &[], count as f64);
    }
}

/// Builds an exposition: families with HELP and TYPE, then their samples.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// Certificate lifetimes and revocations.
fn trust(t: &mut Text, api: &Api) {
    if let Some(id) = api.dir.as_ref().and_then(|d| d.identity().ok()) {
        let (node, ca) = crate::status::expiry_seconds(&id);
        if let Some(left) = node {
            t.one(
                "ferry_certificate_expiry_seconds",
                "gauge",
                "Seconds until this node's certificate expires (negative once past); renew before 0 (`ferry csr --renew`).",
                left as f64,
            );
        }
        if let Some(left) = ca {
            t.one(
                "ferry_ca_certificate_expiry_seconds",
                "gauge",
                "Seconds until the deployment CA's certificate expires.",
                left as f64,
            );
        }
    }
    let held = &api.revocations;
    t.one(
        "ferry_revocations_held",
        "gauge",
        "Nodes revoked by the deployment CA, as this node knows.",
        held.list().len() as f64,
    );
    t.one(
        "ferry_revocations_invalid_total",
        "counter",
        "Revocation events ignored because the CA's signature did not verify (forged or altered).",
        held.invalid() as f64,
    );
    t.one(
        "ferry_handshakes_refused_revoked_total",
        "counter",
        "Handshakes refused because the peer's certificate is revoked.",
        held.refused_handshakes() as f64,
    );
    t.one(
        "ferry_events_unproved_total",
        "counter",
        "Events refused because they did not prove against their writer's signed log head (forged or altered by a relay, or sent without a proof).",
        api.writer_keys.unproved() as f64,
    );
    t.one(
        "ferry_events_refused_revoked_total",
        "counter",
        "Events refused because a revoked node wrote them after its revocation.",
        held.events_refused() as f64,
    );
}

/// Resident set size of this process, from /proc.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

pub async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let mut t = Text::default();
    t.family("ferry_build_info", "gauge", "Version and commit of this ferry binary.");
    t.sample(
        "ferry_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("commit", crate::cli::COMMIT)],
        1.0,
    );
    t.family("ferry_node_info", "gauge", "This node's id, name and role.");
    t.sample(
        "ferry_node_info",
        &[("node_id", &api.node_id), ("name", &api.name), ("role", &api.role)],
        1.0,
    );

    trust(&mut t, &api);
    t.one(
        "ferry_connections_silent_total",
        "counter",
        "Connections this node gave up because the peer left what it sent unanswered for the silence limit (20 s on the WAN), and dialled again: a path that carries nothing back.",
        api.silent_peers.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );

    let summary = api.wal.summary();
    t.family(
        "ferry_events_held",
        "gauge",
        "Events this node holds, per origin (NODE_ID.EPOCH).",
    );
    for (origin, have) in &summary.0 {
        t.sample(
            "ferry_events_held",
            &[("origin", &origin.to_string())],
            have.count() as f64,
        );
    }
    let stats = api.wal.stats();
    t.one(
        "ferry_wal_events",
        "gauge",
        "Events in the write-ahead log.",
        stats.events as f64,
    );
    t.one(
        "ferry_wal_bytes",
        "gauge",
        "Bytes of write-ahead log segments.",
        stats.bytes as f64,
    );
    t.one(
        "ferry_wal_segments",
        "gauge",
        "Write-ahead log segment files.",
        stats.segments as f64,
    );
    t.one(
        "ferry_wal_commits_total",
        "counter",
        "Group commits (one fdatasync each) since the daemon started.",
        stats.commits as f64,
    );
    let fsync = &stats.fsync;
    let name = "ferry_wal_fsync_seconds";
    t.family(
        name,
        "histogram",
        "Seconds each group commit's fdatasync took (a slow or failing SD card shows here first).",
    );
    let mut cumulative = 0;
    for (bound, n) in ferry_wal::FSYNC_BUCKETS.iter().zip(fsync.buckets) {
        cumulative += n;
        t.sample(
            &format!("{name}_bucket"),
            &[("le", &bound.to_string())],
            cumulative as f64,
        );
    }
    t.sample(&format!("{name}_bucket"), &[("le", "+Inf")], fsync.count as f64);
    t.sample(&format!("{name}_sum"), &[], fsync.sum_seconds);
    t.sample(&format!("{name}_count"), &[], fsync.count as f64);
    api.append_seconds.write(
        &mut t,
        "ferry_append_durable_seconds",
        "Seconds from an API append to its events being durable: the group's write and fdatasync.",
    );

    let peers = api.dir.as_ref().map(|d| d.peers()).unwrap_or_default();
    let labelled = |id: &String, p: &crate::datadir::PeerRecord| {
        [
            ("peer", id.clone()),
            ("name", p.name.clone()),
            ("role", p.role.map(|r| r.to_string()).unwrap_or_default()),
        ]
    };
    type Field = fn(&crate::datadir::PeerRecord) -> Option<f64>;
    let per_peer: [(&str, &str, &str, Field); 8] = [
        (
            "ferry_peer_connected",
            "gauge",
            "1 while a connection to the peer is open.",
            |p| Some(if p.connected { 1.0 } else { 0.0 }),
        ),
        (
            "ferry_peer_last_sync_timestamp_seconds",
            "gauge",
            "Unix time of the last completed round with the peer.",
            |p| p.last_sync_unix.map(|t| t as f64),
        ),
        (
            "ferry_peer_events_sent_total",
            "counter",
            "Events sent to the peer.",
            |p| Some(p.events_sent as f64),
        ),
        (
            "ferry_peer_events_received_total",
            "counter",
            "Events received from the peer.",
            |p| Some(p.events_received as f64),
        ),
        (
            "ferry_peer_bytes_sent_total",
            "counter",
            "Bytes sent to the peer on the wire.",
            |p| Some(p.bytes_sent as f64),
        ),
        (
            "ferry_peer_bytes_received_total",
            "counter",
            "Bytes received from the peer on the wire.",
            |p| Some(p.bytes_received as f64),
        ),
        (
            "ferry_peer_node_lacks_events",
            "gauge",
            "Events the peer holds that this node lacks, as of the last round.",
            |p| p.we_lack.map(|n| n as f64),
        ),
        (
            "ferry_peer_peer_lacks_events",
            "gauge",
            "Events this node may send that the peer lacks, as of the last round.",
            |p| p.they_lack.map(|n| n as f64),
        ),
    ];
    for (name, kind, help, field) in per_peer {
        t.family(name, kind, help);
        for (id, p) in &peers {
            if let Some(v) = field(p) {
                let labels = labelled(id, p);
                let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                t.sample(name, &refs, v);
            }
        }
    }
    if let Some(rss) = rss_bytes() {
        t.one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        t.0,
    )
        .into_response()
}

/// The process answers: it is alive (and says which node it is, so the CLI
/// never mistakes another process on a reused port for its daemon).
pub async fn healthz(State(api): State<Arc<Api>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok", "node_id": api.node_id }))
}

/// The node takes writes: it has opened its WAL for writing (the daemon
/// serves its API only after that) and is not shutting down.
pub async fn readyz(State(api): State<Arc<Api>>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if api.stopping.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the node is shutting down",
        ));
    }
    Ok(axum::Json(serde_json::json!({ "status": "ready" })))
}
