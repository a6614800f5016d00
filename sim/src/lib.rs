//! `ferry-sim`: a whole ferry deployment in one process, in virtual time.
//!
//! One seed decides everything: how many clinics, who shares a LAN, which
//! links are 2G or satellite, what each node writes, when links are cut and
//! nodes crash, where the mule goes. Every node runs the real replication
//! core (`ferry-sync`) on an in-memory store with a crash model; the
//! network is netsim's link model under a small model of QUIC streams.
//! Invariants are checked as it runs (`check`), and at the end every node
//! must hold exactly what policy lets it hold (`converge`).
//!
//! Modules: `world` (nodes, connections, the event loop), `transport`
//! (streams and packets), `manage` (who dials whom), `faults`, `workload`,
//! `scenario` (random deployments and named regressions), `check`,
//! `converge`, `trace`.

pub mod check;
pub mod converge;
pub mod faults;
pub mod manage;
pub mod records;
pub mod revoke;
pub mod scenario;
pub mod trace;
pub mod transport;
pub mod workload;
pub mod world;

pub use world::Options;

/// A pushed event whose packet was lost arrives after a retransmission:
/// one probe timeout, or two if the retransmission is lost too; a round
/// would take a minute.
pub const PUSH_MAX: ferry_sync::Time = ferry_sync::Time::from_secs(6);

/// How one seed went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub failure: Option<String>,
    pub virtual_secs: f64,
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub events_received: u64,
    pub duplicates: u64,
    /// Events refused because they did not prove (forged or altered).
    pub events_unproved: u64,
}

/// Runs one seed: a random deployment, or the named scenario.
pub fn run(seed: u64, scenario: Option<&str>, opts: Options) -> Outcome {
    let mut w = match scenario {
        None => scenario::swarm(seed, opts),
        Some(name) => match scenario::named(name, seed, opts) {
            Some(w) => w,
            None => {
                return Outcome {
                    seed,
                    failure: Some(format!(
                        "no scenario named {name}; known: {}",
                        scenario::NAMES.join(", ")
                    )),
                    virtual_secs: 0.0,
                    trace_hash: 0,
                    trace: Vec::new(),
                    events_received: 0,
                    duplicates: 0,
                    events_unproved: 0,
                }
            }
        },
    };
    w.run();
    if let (Some(_), Some(limit)) = (w.converged_at, w.expect_within) {
        let done = w.last_arrival;
        if done > limit.saturating_add(w.promise_from) {
            let what = format!(
                "the last event arrived at {done}, later than the scenario's promise of {limit} after {}",
                w.promise_from
            );
            w.fail(what);
        }
    }
    if let Some(limit) = w.push_within {
        let mut lat = std::mem::take(&mut w.push_latencies);
        lat.sort();
        // Nearest rank.
        let p95 = lat
            .get((lat.len() * 95).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default();
        let max = lat.last().copied().unwrap_or_default();
        if lat.is_empty() || p95 > limit || max > PUSH_MAX {
            let what = format!(
                "{} written events arrived with p95 {p95} and max {max}: the promise is p95 within {limit}, all within {PUSH_MAX} (a round would take a minute)",
                lat.len()
            );
            w.fail(what);
        }
    }
    if let Some(per_log) = w.planned_per_log {
        let replicas = || w.nodes.iter().filter_map(|n| n.replica.as_ref());
        let planned: u64 = replicas().map(|r| r.totals().logs_planned).sum();
        let logs = replicas()
            .map(|r| ferry_sync::Store::summary(r.store()).0.len() as u64)
            .max()
            .unwrap_or(0);
        if planned > per_log * logs {
            let what = format!(
                "pull planning read {planned} logs for {logs} logs in the deployment, more than {per_log} per log"
            );
            w.fail(what);
        }
    }
    Outcome {
        seed,
        failure: w.failure.clone(),
        virtual_secs: w.now.as_secs_f64(),
        trace_hash: w.trace.hash(),
        trace: w.trace.lines().to_vec(),
        events_received: w.check.events_received,
        duplicates: w.check.duplicates,
        events_unproved: w.check.events_unproved,
    }
}
