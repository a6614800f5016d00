//! Link profiles: what each direction of a simulated link does to packets.

use serde::Serialize;
use std::time::Duration;

/// Gilbert-Elliott two-state loss: bursts of loss, as on a fading radio link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GilbertElliott {
    /// Chance per packet of moving from the good to the bad state.
    pub p_good_to_bad: f64,
    /// Chance per packet of moving from the bad to the good state.
    pub p_bad_to_good: f64,
    pub loss_in_good: f64,
    pub loss_in_bad: f64,
}

impl GilbertElliott {
    /// Long-run loss rate.
    pub fn mean_loss(&self) -> f64 {
        let bad = self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good);
        bad * self.loss_in_bad + (1.0 - bad) * self.loss_in_good
    }
}

/// One direction of a link.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Direction {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each packet's delay is drawn uniformly from `delay ± jitter`.
    pub jitter: Duration,
    /// Bits per second; 0 means unlimited.
    pub rate_bps: u64,
    /// Bytes waiting for the link before new packets are dropped (tail drop).
    pub queue_bytes: usize,
    /// Independent random loss per packet.
    pub loss: f64,
    /// Bursty loss, applied in addition to `loss`.
    pub bursty: Option<GilbertElliott>,
    /// Header bytes a packet costs on the link beyond its UDP payload
    /// (IPv4 + UDP = 28).
    pub overhead_bytes: usize,
}

impl Direction {
    pub fn ideal() -> Self {
        Direction {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: 0,
            queue_bytes: usize::MAX,
            loss: 0.0,
            bursty: None,
            overhead_bytes: 28,
        }
    }

    fn shaped(one_way_ms: u64, jitter_ms: u64, kbps: u64, loss: f64) -> Self {
        let rate_bps = kbps * 1000;
        Direction {
            delay: Duration::from_millis(one_way_ms),
            jitter: Duration::from_millis(jitter_ms),
            rate_bps,
            // About two seconds of buffering, as cellular links keep, and
            // never less than a handful of full-size packets.
            queue_bytes: ((rate_bps / 8) as usize * 2).max(16 * 1024),
            loss,
            bursty: None,
            overhead_bytes: 28,
        }
    }
}

/// Both directions of a link, from the client's side: `up` carries what the
/// client sends, `down` what it receives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    pub up: Direction,
    pub down: Direction,
}

pub const PROFILE_NAMES: &[&str] = &["bhutan_2g", "satellite", "urban_3g", "edge_lossy", "ideal"];

impl Profile {
    fn symmetric(name: &str, d: Direction) -> Self {
        Profile {
            name: name.into(),
            up: d.clone(),
            down: d,
        }
    }

    /// 600 ms RTT ± 100 ms, 30 kbps, 1 % loss.
    pub fn bhutan_2g() -> Self {
        Self::symmetric("bhutan_2g", Direction::shaped(300, 50, 30, 0.01))
    }

    /// 1200 ms RTT, 100 kbps.
    pub fn satellite() -> Self {
        Self::symmetric("satellite", Direction::shaped(600, 20, 100, 0.0))
    }

    /// 80 ms RTT, 1 Mbps.
    pub fn urban_3g() -> Self {
        Self::symmetric("urban_3g", Direction::shaped(40, 5, 1000, 0.0))
    }

    /// 800 ms RTT, 25 kbps, 5 % loss in bursts of about five packets.
    pub fn edge_lossy() -> Self {
        let mut d = Direction::shaped(400, 50, 25, 0.0);
        d.bursty = Some(GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.19,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        });
        Self::symmetric("edge_lossy", d)
    }

    pub fn ideal() -> Self {
        Self::symmetric("ideal", Direction::ideal())
    }

    pub fn by_name(name: &str) -> Option<Self> {
        Some(match name {
            "bhutan_2g" => Self::bhutan_2g(),
            "satellite" => Self::satellite(),
            "urban_3g" => Self::urban_3g(),
            "edge_lossy" => Self::edge_lossy(),
            "ideal" => Self::ideal(),
            _ => return None,
        })
    }

    /// Round-trip propagation delay, without queueing or serialisation.
    pub fn base_rtt(&self) -> Duration {
        self.up.delay + self.down.delay
    }
}
