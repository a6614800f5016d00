//! A bandwidth budget: what this node sends to peers, averaged, stays
//! under a rate, so sync leaves the clinic's link free for its other uses.
//!
//! A token bucket on the bytes of event frames written to peers. A window
//! cap cannot do this on short round trips (two packets per RTT is already
//! 240 kbps at 80 ms), and quinn has no rate limiter.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// QUIC, UDP and IP headers on top of frame bytes, so the budget holds on
/// the wire, not just for payload.
const WIRE_OVERHEAD: f64 = 1.08;

pub struct Budget {
    bytes_per_sec: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    pub fn new(kbps: u64) -> Self {
        let bytes_per_sec = kbps.max(1) as f64 * 1000.0 / 8.0;
        // A quarter second of credit, at least one full packet.
        let burst = (bytes_per_sec / 4.0).max(1500.0);
        Budget {
            bytes_per_sec,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until `bytes` may be sent. Debt is allowed, so a frame larger
    /// than the burst still goes, and the next one waits for it.
    pub async fn spend(&self, bytes: usize) {
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let (tokens, last) = *st;
            let refilled = (tokens + now.duration_since(last).as_secs_f64() * self.bytes_per_sec).min(self.burst);
            let left = refilled - bytes as f64 * WIRE_OVERHEAD;
            *st = (left, now);
            if left < 0.0 {
                Duration::from_secs_f64(-left / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
