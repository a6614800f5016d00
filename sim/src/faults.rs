//! Faults, applied when their time comes: cuts, crashes with torn tails,
//! restarts, a data directory restored from an old copy, clock jumps,
//! address changes, a mule moving between sites.

use crate::world::{Fault, World};
use ferry_proto::Origin;
use ferry_sync::{Store, Time};
use rand::Rng;

pub fn apply(w: &mut World, f: Fault) {
    let healing = w.healed_at.is_some();
    match f {
        Fault::Cut(wan, dur) if !healing => {
            w.wans[wan].up = false;
            let line = format!("WAN link {} cut for {dur}", w.nodes[w.wans[wan].a].name);
            w.trace.line(w.now, &line);
            w.fault_at(w.now.saturating_add(dur), Fault::Mend(wan));
        }
        Fault::Mend(wan) => {
            if !w.wans[wan].up {
                w.wans[wan].up = true;
                let line = format!("WAN link {} back", w.nodes[w.wans[wan].a].name);
                w.trace.line(w.now, &line);
            }
            let (a, hub) = (w.wans[wan].a, w.wans[wan].hub);
            crate::manage::manage(w, a);
            crate::manage::manage(w, hub);
        }
        Fault::Crash(n, down) if !healing => {
            let Some(mut store) = w.kill_node(n) else { return };
            let survive = w.rng.gen_range(0..=store.unsynced_groups());
            let bugs = w.opts.bugs;
            store.crash(survive, &bugs);
            let line = format!("{} crashes ({survive} unsynced groups reach the disk)", w.nodes[n].name);
            w.trace.line(w.now, &line);
            if let Err(why) = w.check.after_crash(n, |o, s| store.holds(o, s), store.last_hlc()) {
                w.nodes[n].disk = Some(store);
                w.fail(why);
                return;
            }
            w.nodes[n].disk = Some(store);
            w.fault_at(w.now.saturating_add(down), Fault::Restart(n));
        }
        Fault::Restart(n) if !w.node_up(n) => w.boot_node(n),
        Fault::Snapshot(n) if !healing => {
            if let Some(r) = &w.nodes[n].replica {
                w.nodes[n].snapshot = Some(r.store().clone());
                let line = format!("{}'s data directory is copied", w.nodes[n].name);
                w.trace.line(w.now, &line);
            }
        }
        Fault::Restore(n, down) if !healing => {
            let Some(mut old) = w.nodes[n].snapshot.take() else {
                return;
            };
            w.kill_node(n);
            w.nodes[n].disk = None;
            // A file-level copy has new inodes: the node sees it and starts a
            // new log epoch before writing (see docs/architecture.md).
            let local = old.local_origin();
            let epoch: u32 = w.rng.gen();
            old.set_local_origin(Origin {
                node: local.node,
                epoch,
            });
            let before = w.check_total_acked(n);
            w.check.after_restore(n, |o, s| old.holds(o, s), old.last_hlc());
            let lost = before - w.check_total_acked(n);
            let line = format!(
                "{}'s data directory is replaced by the old copy ({lost} acknowledged events gone here)",
                w.nodes[n].name
            );
            w.trace.line(w.now, &line);
            w.nodes[n].disk = Some(old);
            w.fault_at(w.now.saturating_add(down), Fault::Restart(n));
        }
        Fault::ClockJump(n, ms) if !healing => {
            w.nodes[n].wall_offset_ms += ms;
            let line = format!("{}'s wall clock jumps {ms} ms", w.nodes[n].name);
            w.trace.line(w.now, &line);
        }
        Fault::Move(n, dur) if !healing => {
            w.nodes[n].moving_until = w.now.saturating_add(dur);
            let line = format!("{}'s address changes ({dur} without a path)", w.nodes[n].name);
            w.trace.line(w.now, &line);
        }
        Fault::MuleTo(n, seg) if !healing => {
            w.nodes[n].segment = seg;
            let line = match seg {
                Some(s) => format!("{} arrives at site {s}", w.nodes[n].name),
                None => format!("{} is on the road", w.nodes[n].name),
            };
            w.trace.line(w.now, &line);
            if let Some(s) = seg {
                for m in 0..w.nodes.len() {
                    if w.nodes[m].segment == Some(s) {
                        crate::manage::manage(w, m);
                    }
                }
            }
        }
        _ => {}
    }
}

impl World {
    pub fn check_total_acked(&self, n: usize) -> usize {
        self.check.acked_count(n)
    }

    /// Runs again `manage` for every node a moment from now.
    pub fn manage_all_soon(&mut self) {
        for n in 0..self.nodes.len() {
            crate::manage::manage(self, n);
        }
    }
}

/// A duration between `lo` and `hi` seconds.
pub fn secs(w: &mut World, lo: f64, hi: f64) -> Time {
    Time((w.rng.gen_range(lo..hi) * 1e6) as u64)
}
