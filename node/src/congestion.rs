//! A congestion controller that caps another's window.
//!
//! Bytes in flight never exceed the window. quinn's Cubic grows the window
//! until the link's buffer overflows, and its pacer sends bursts of at least
//! ten packets (about 12 KB: three seconds of a 30 kbps link), so on thin
//! links it loses packets to tail drop and pays for them twice. This caps
//! the window at gain × the measured bandwidth-delay product (windowed-max
//! delivery rate × min RTT), as BBR bounds its window: the link stays full
//! while the standing queue stays small. A fixed cap does not do: it is
//! either too small for satellite or a queue of seconds at 25 kbps, which
//! slows loss recovery (both measured; see docs/architecture.md). The
//! wrapped controller still reacts to loss below the cap.

use quinn::congestion::{Controller, ControllerFactory};
use quinn_proto::RttEstimator;
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct CappedFactory {
    pub inner: Arc<dyn ControllerFactory + Send + Sync>,
    /// Cap at this multiple of the measured bandwidth-delay product.
    pub bdp_gain: f64,
}

/// Delivery-rate samples kept for the windowed maximum.
const RATE_SAMPLES: usize = 10;
/// Window floor under the cap: a handful of packets keeps the ack clock
/// running and covers a burst of loss.
const FLOOR: u64 = 4 * 1200;

impl ControllerFactory for CappedFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Capped {
            inner: self.inner.clone().build(now, current_mtu),
            bdp_gain: self.bdp_gain,
            min_rtt: None,
            mark: (now, 0),
            rates: Vec::with_capacity(RATE_SAMPLES),
        })
    }
}

struct Capped {
    inner: Box<dyn Controller>,
    bdp_gain: f64,
    min_rtt: Option<Duration>,
    /// Start of the current rate sample and bytes acknowledged since.
    mark: (Instant, u64),
    /// Recent delivery rates, bytes per second.
    rates: Vec<f64>,
}

impl Capped {
    fn cap(&self, window: u64) -> u64 {
        // Until the first delivery-rate sample, the inner window rules
        // (slow start must find the rate before it can be capped).
        let (Some(rtt), Some(rate)) = (self.min_rtt, self.rates.iter().copied().reduce(f64::max)) else {
            return window;
        };
        let bdp = rate * rtt.as_secs_f64() * self.bdp_gain;
        window.min((bdp as u64).max(FLOOR))
    }

    /// One delivery-rate sample per min RTT (at least 100 ms), skipped when
    /// the sender had nothing to send: that measures the app, not the link.
    fn sample(&mut self, now: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.mark.1 += bytes;
        let span = now.saturating_duration_since(self.mark.0);
        if span < rtt.min().max(Duration::from_millis(100)) {
            return;
        }
        if !app_limited {
            if self.rates.len() == RATE_SAMPLES {
                self.rates.remove(0);
            }
            self.rates.push(self.mark.1 as f64 / span.as_secs_f64());
        }
        self.mark = (now, 0);
    }
}

impl Controller for Capped {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.min_rtt = Some(rtt.min());
        self.sample(now, bytes, app_limited, rtt);
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest)
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        self.inner.on_congestion_event(now, sent, persistent, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        self.cap(self.inner.window())
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Capped {
            inner: self.inner.clone_box(),
            bdp_gain: self.bdp_gain,
            min_rtt: self.min_rtt,
            mark: self.mark,
            rates: self.rates.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.cap(self.inner.initial_window())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
