//! QUIC transport profiles. quinn's defaults assume fast links; a 2G link
//! needs patience (initial RTT near a second, long idle timeout) and a LAN
//! peer wants the opposite. Chosen per peer or by config.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct TransportProfile {
    pub name: &'static str,
    pub initial_rtt: Duration,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    /// Streams a peer may open at once: bounds the wants in flight.
    pub max_concurrent_bidi: u32,
    /// How long a handshake may take before the peer counts as unreachable.
    pub connect_timeout: Duration,
    /// Cap the congestion window at this multiple of the measured
    /// bandwidth-delay product (see `congestion`); `None`: plain Cubic.
    pub bdp_gain: Option<f64>,
    /// Probe for a path MTU above QUIC's 1200 bytes.
    pub mtu_discovery: bool,
}

impl TransportProfile {
    /// For the hub over 2G or satellite.
    pub fn wan() -> Self {
        TransportProfile {
            name: "wan",
            initial_rtt: Duration::from_millis(800),
            idle_timeout: Duration::from_secs(120),
            keep_alive: Duration::from_secs(25),
            max_concurrent_bidi: 64,
            connect_timeout: Duration::from_secs(30),
            bdp_gain: Some(2.0),
            // Probes of up to 1452 bytes cost more than they save at 30
            // kbps: see docs/architecture.md.
            mtu_discovery: false,
        }
    }

    /// For peers on the same LAN.
    pub fn lan() -> Self {
        TransportProfile {
            name: "lan",
            initial_rtt: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_concurrent_bidi: 64,
            connect_timeout: Duration::from_secs(5),
            bdp_gain: None,
            mtu_discovery: true,
        }
    }

    pub fn quinn(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.initial_rtt(self.initial_rtt);
        // The idle timeout is a constant well inside quinn's VarInt range.
        t.max_idle_timeout(Some(self.idle_timeout.try_into().expect("idle timeout fits a VarInt")));
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_concurrent_bidi_streams(self.max_concurrent_bidi.into());
        // Data streams: one per priority class each way.
        t.max_concurrent_uni_streams(8u32.into());
        if !self.mtu_discovery {
            t.mtu_discovery_config(None);
        }
        if let Some(gain) = self.bdp_gain {
            t.congestion_controller_factory(std::sync::Arc::new(crate::congestion::CappedFactory {
                inner: std::sync::Arc::new(quinn::congestion::CubicConfig::default()),
                bdp_gain: gain,
            }));
        }
        t
    }
}
