//! The end of a run: faults stop, links heal, and every node must come to
//! hold exactly what policy lets it hold, within a bound set by the links.

use crate::check::expected;
use crate::world::{Wan, World};
use ferry_netsim::profile::Profile;
use ferry_proto::{Origin, Role};
use ferry_sync::{Store, Time};
use std::collections::BTreeSet;

/// Stops faults and writes, mends every link, restarts every node, parks
/// the mule at the hub, and gives every clinic a WAN link.
pub fn heal(w: &mut World) {
    w.healed_at = Some(w.now);
    w.trace.line(w.now, "faults stop; links heal");
    for wan in &mut w.wans {
        wan.up = true;
    }
    let hub = w.nodes.iter().position(|n| n.ident.role == Role::Hub).unwrap_or(0);
    for n in 0..w.nodes.len() {
        w.nodes[n].moving_until = Time(0);
        if w.nodes[n].ident.role == Role::Mule {
            w.nodes[n].segment = w.nodes[hub].segment;
        }
        let has_wan = w.wans.iter().any(|l| l.a == n);
        if w.nodes[n].ident.role == Role::Clinic && !has_wan {
            w.wans.push(Wan {
                a: n,
                hub,
                profile: Profile::bhutan_2g(),
                up: true,
            });
        }
        if !w.node_up(n) {
            w.boot_node(n);
        }
    }
    w.manage_all_soon();
    w.deadline = w.now.saturating_add(bound(w));
    w.schedule(Time::from_secs(5), crate::world::Ev::CheckConverged);
}

/// How long convergence may take once healed: reconnect backoff, a round
/// interval, and three times everything held crossing the slowest link.
fn bound(w: &World) -> Time {
    let bytes: u64 = w
        .nodes
        .iter()
        .filter_map(|n| n.replica.as_ref())
        .map(|r| {
            let s = r.store().summary();
            s.0.iter()
                .flat_map(|(o, set)| set.ranges().iter().map(move |(a, b)| (*o, *a, *b)))
                .flat_map(|(o, a, b)| {
                    (a..=b).filter_map(move |seq| r.store().get(&o, seq).map(|e| e.payload.len() as u64 + 60))
                })
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let slowest = w
        .wans
        .iter()
        .map(|l| l.profile.up.rate_bps.min(l.profile.down.rate_bps))
        .filter(|r| *r > 0)
        .min()
        .unwrap_or(1_000_000);
    let transfer = Time((bytes * 8 * 3 * 1_000_000) / slowest);
    // Strict (the default): a push missed is a stall, found before the
    // live round would heal it.
    Time::from_secs(180)
        .saturating_add(if w.opts.strict_pushes {
            w.round_interval
        } else {
            w.round_interval.max(w.live_round_interval)
        })
        .saturating_add(transfer)
}

/// Who can talk to whom once healed.
fn edges(w: &World) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = w.wans.iter().map(|l| (l.a, l.hub)).collect();
    for a in 0..w.nodes.len() {
        for b in a + 1..w.nodes.len() {
            if w.nodes[a].segment.is_some() && w.nodes[a].segment == w.nodes[b].segment {
                out.push((a, b));
            }
        }
    }
    out
}

fn held(w: &World, n: usize) -> BTreeSet<(Origin, u64)> {
    let Some(r) = &w.nodes[n].replica else {
        return BTreeSet::new();
    };
    let s = r.store().summary();
    s.0.iter()
        .flat_map(|(o, set)| {
            set.ranges()
                .iter()
                .flat_map(move |(a, b)| (*a..=*b).map(move |seq| (*o, seq)))
        })
        .collect()
}

/// The events a node holds, or should.
type Held = BTreeSet<(Origin, u64)>;

/// Per node: what it holds and what it should.
fn compare(w: &World) -> Vec<(Held, Held)> {
    let holdings: Vec<_> = (0..w.nodes.len()).map(|n| held(w, n)).collect();
    let revoked: Vec<_> = w.nodes.iter().map(|n| n.revoked.clone()).collect();
    let hlc = |o: &Origin, s: u64| {
        w.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .find_map(|r| r.store().get(o, s).map(|e| e.hlc))
    };
    // A forging relay alters every event another node wrote.
    let forging = w.opts.bugs.on(|b| b.relay_forges);
    let ids = w.identities();
    let intact = |from: usize, o: &Origin| !forging || o.node == ids[from].id;
    let want = expected(&ids, &edges(w), &holdings, &revoked, hlc, intact);
    holdings.into_iter().zip(want).collect()
}

pub fn check(w: &mut World) {
    let settled = w.nodes.iter().all(|n| {
        n.replica
            .as_ref()
            .is_some_and(|r| r.claimed() == 0 && r.appends_pending() == 0)
    });
    if settled && compare(w).iter().all(|(h, e)| h == e) {
        if let Err(why) = same_content(w) {
            w.fail(why);
            return;
        }
        let nodes: Vec<_> = w
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref().map(|r| (n.name.as_str(), &n.records, r.store())))
            .collect();
        if let Err(why) = crate::records::check(&nodes) {
            w.fail(why);
            return;
        }
        w.converged_at = Some(w.now);
        w.trace.line(w.now, "converged");
        return;
    }
    w.schedule(Time::from_secs(5), crate::world::Ev::CheckConverged);
}

/// No two nodes hold different events under one (origin, seq).
fn same_content(w: &World) -> Result<(), String> {
    let stores: Vec<_> = w
        .nodes
        .iter()
        .filter_map(|n| n.replica.as_ref())
        .map(|r| r.store())
        .collect();
    for (i, a) in stores.iter().enumerate() {
        for b in &stores[i + 1..] {
            for (o, set) in a.summary().0 {
                for &(x, y) in set.ranges() {
                    for seq in x..=y {
                        if let (Some(ea), Some(eb)) = (a.get(&o, seq), b.get(&o, seq)) {
                            if ea != eb {
                                return Err(format!("{o}:{seq} differs between two nodes: the log forked"));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Which nodes lack what, for a stall report.
pub fn describe_lag(w: &World) -> String {
    let mut parts = Vec::new();
    for (n, (h, e)) in compare(w).iter().enumerate() {
        let missing: Vec<_> = e.difference(h).collect();
        let extra: Vec<_> = h.difference(e).collect();
        if !missing.is_empty() || !extra.is_empty() {
            parts.push(format!(
                "{} lacks {} (first {:?}) and holds {} it should not",
                w.nodes[n].name,
                missing.len(),
                missing.first().map(|(o, s)| format!("{o}:{s}")),
                extra.len()
            ));
        }
    }
    for n in &w.nodes {
        if let Some(r) = &n.replica {
            if r.claimed() > 0 || r.appends_pending() > 0 {
                parts.push(format!(
                    "{} still claims {} and has {} appends pending",
                    n.name,
                    r.claimed(),
                    r.appends_pending()
                ));
            }
        } else {
            parts.push(format!("{} is down", n.name));
        }
    }
    parts.join("; ")
}
