//! What happens to a packet on one direction of the link: a pure state
//! machine driven by arrival times, so its statistics are testable without
//! sockets or real time.

use crate::profile::Direction;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    Loss,
    Queue,
    Cut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver(Instant),
    Drop(DropCause),
}

pub struct Pipe {
    params: Direction,
    rng: StdRng,
    /// When the link finishes serialising what it has accepted.
    busy_until: Instant,
    /// Departure time and size of each packet still in the queue.
    queue: VecDeque<(Instant, usize)>,
    queued_bytes: usize,
    bad_state: bool,
    last_delivery: Instant,
    pub cut: bool,
}

impl Pipe {
    pub fn new(params: Direction, seed: u64, now: Instant) -> Self {
        Pipe {
            params,
            rng: StdRng::seed_from_u64(seed),
            busy_until: now,
            queue: VecDeque::new(),
            queued_bytes: 0,
            bad_state: false,
            last_delivery: now,
            cut: false,
        }
    }

    pub fn set_params(&mut self, params: Direction) {
        self.params = params;
    }

    /// Bytes waiting to be serialised at `now`.
    pub fn queued_bytes(&mut self, now: Instant) -> usize {
        while let Some(&(departure, size)) = self.queue.front() {
            if departure > now {
                break;
            }
            self.queue.pop_front();
            self.queued_bytes -= size;
        }
        self.queued_bytes
    }

    fn lost(&mut self) -> bool {
        if let Some(ge) = self.params.bursty {
            let flip = if self.bad_state {
                ge.p_bad_to_good
            } else {
                ge.p_good_to_bad
            };
            if self.rng.gen_bool(flip.clamp(0.0, 1.0)) {
                self.bad_state = !self.bad_state;
            }
            let p = if self.bad_state {
                ge.loss_in_bad
            } else {
                ge.loss_in_good
            };
            if self.rng.gen_bool(p.clamp(0.0, 1.0)) {
                return true;
            }
        }
        self.params.loss > 0.0 && self.rng.gen_bool(self.params.loss.clamp(0.0, 1.0))
    }

    /// Time on the wire for `size` payload bytes at the link rate.
    fn serialisation(&self, size: usize) -> Duration {
        if self.params.rate_bps == 0 {
            return Duration::ZERO;
        }
        let bits = ((size + self.params.overhead_bytes) * 8) as u64;
        Duration::from_nanos(bits.saturating_mul(1_000_000_000) / self.params.rate_bps)
    }

    /// A packet of `size` bytes arrives at `now`: when is it delivered?
    pub fn offer(&mut self, now: Instant, size: usize) -> Verdict {
        if self.cut {
            return Verdict::Drop(DropCause::Cut);
        }
        if self.lost() {
            return Verdict::Drop(DropCause::Loss);
        }
        let departure = if self.params.rate_bps > 0 {
            if self.queued_bytes(now) + size > self.params.queue_bytes {
                return Verdict::Drop(DropCause::Queue);
            }
            let departure = now.max(self.busy_until) + self.serialisation(size);
            self.busy_until = departure;
            self.queue.push_back((departure, size));
            self.queued_bytes += size;
            departure
        } else {
            now
        };
        Verdict::Deliver(self.delivery_after(departure))
    }

    /// For a reliable byte stream (TCP): never drops, the sender waits.
    pub fn offer_reliable(&mut self, now: Instant, size: usize) -> Instant {
        let departure = now.max(self.busy_until) + self.serialisation(size);
        self.busy_until = departure;
        self.delivery_after(departure)
    }

    fn delivery_after(&mut self, departure: Instant) -> Instant {
        let jitter = self.params.jitter.as_nanos() as i128;
        let offset = if jitter > 0 {
            self.rng.gen_range(-jitter..=jitter)
        } else {
            0
        };
        let delay = (self.params.delay.as_nanos() as i128 + offset).max(0) as u64;
        // Packets leave in the order they came: jitter spreads them but does
        // not reorder them.
        let at = (departure + Duration::from_nanos(delay)).max(self.last_delivery);
        self.last_delivery = at;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{GilbertElliott, Profile};

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    #[test]
    fn delay_and_jitter_match_the_profile() {
        let t0 = Instant::now();
        let mut p = Pipe::new(Profile::bhutan_2g().up, 1, t0);
        let mut delays = Vec::new();
        for i in 0..2000u64 {
            // Sparse packets: no queueing, only delay + jitter + serialisation.
            let now = t0 + Duration::from_millis(i * 500);
            if let Verdict::Deliver(at) = p.offer(now, 100) {
                delays.push(ms(at - now));
            }
        }
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let ser = (128.0 * 8.0) / 30_000.0 * 1000.0;
        assert!((mean - (300.0 + ser)).abs() < 5.0, "mean one-way delay {mean:.1} ms");
        let (lo, hi) = delays.iter().fold((f64::MAX, 0f64), |(l, h), d| (l.min(*d), h.max(*d)));
        assert!(
            lo >= 250.0 + ser - 0.5 && hi <= 350.0 + ser + 0.5,
            "delay range {lo:.1}..{hi:.1}"
        );
        assert!(hi - lo > 90.0, "jitter missing: {lo:.1}..{hi:.1}");
    }

    #[test]
    fn rate_cap_serialises_back_to_back_packets() {
        let t0 = Instant::now();
        let mut d = Profile::bhutan_2g().up;
        d.loss = 0.0;
        d.queue_bytes = usize::MAX;
        let mut p = Pipe::new(d, 2, t0);
        let (n, size) = (500, 1200);
        let mut last = t0;
        for _ in 0..n {
            if let Verdict::Deliver(at) = p.offer(t0, size) {
                last = at;
            }
        }
        let bits = (n * (size + 28) * 8) as f64;
        let rate = bits / (last - t0 - Duration::from_millis(300)).as_secs_f64();
        assert!((rate - 30_000.0).abs() / 30_000.0 < 0.02, "measured {rate:.0} bps");
    }

    #[test]
    fn full_queue_drops_the_tail() {
        let t0 = Instant::now();
        let mut d = Profile::bhutan_2g().up;
        d.loss = 0.0;
        let cap = d.queue_bytes;
        let mut p = Pipe::new(d, 3, t0);
        let verdicts: Vec<_> = (0..100).map(|_| p.offer(t0, 1000)).collect();
        let accepted = verdicts.iter().filter(|v| matches!(v, Verdict::Deliver(_))).count();
        assert_eq!(accepted, cap / 1000);
        assert!(verdicts[accepted..]
            .iter()
            .all(|v| *v == Verdict::Drop(DropCause::Queue)));
        // Once the link drains, packets are accepted again.
        assert!(matches!(
            p.offer(t0 + Duration::from_secs(60), 1000),
            Verdict::Deliver(_)
        ));
    }

    #[test]
    fn random_loss_rate_matches() {
        let t0 = Instant::now();
        let mut p = Pipe::new(Profile::bhutan_2g().up, 4, t0);
        let n = 50_000;
        let lost = (0..n)
            .filter(|i| p.offer(t0 + Duration::from_secs(*i as u64), 100) == Verdict::Drop(DropCause::Loss))
            .count();
        let rate = lost as f64 / n as f64;
        assert!((rate - 0.01).abs() < 0.002, "loss {rate:.4}");
    }

    #[test]
    fn bursty_loss_has_the_right_mean_and_comes_in_bursts() {
        let t0 = Instant::now();
        let profile = Profile::edge_lossy();
        let ge: GilbertElliott = profile.up.bursty.unwrap(); // edge_lossy is bursty
        let mut p = Pipe::new(profile.up, 5, t0);
        let n = 200_000;
        let lost: Vec<bool> = (0..n)
            .map(|i| p.offer(t0 + Duration::from_secs(i as u64), 100) == Verdict::Drop(DropCause::Loss))
            .collect();
        let rate = lost.iter().filter(|l| **l).count() as f64 / n as f64;
        assert!(
            (rate - ge.mean_loss()).abs() < 0.005,
            "loss {rate:.4}, expected {:.4}",
            ge.mean_loss()
        );
        let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count();
        let mean_burst = lost.iter().filter(|l| **l).count() as f64 / bursts as f64;
        assert!(
            (mean_burst - 1.0 / ge.p_bad_to_good).abs() < 0.5,
            "mean burst {mean_burst:.2} packets"
        );
    }

    #[test]
    fn a_cut_link_drops_everything_and_jitter_never_reorders() {
        let t0 = Instant::now();
        let mut p = Pipe::new(Profile::bhutan_2g().down, 6, t0);
        p.cut = true;
        assert_eq!(p.offer(t0, 10), Verdict::Drop(DropCause::Cut));
        p.cut = false;
        let mut last = t0;
        for i in 0..1000 {
            if let Verdict::Deliver(at) = p.offer(t0 + Duration::from_millis(i * 5), 50) {
                assert!(at >= last);
                last = at;
            }
        }
    }
}
