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
    /// Give a connection up when what this node sent has gone unanswered
    /// this long (or eight round trips, if longer), and dial again: see
    /// `silence`. Well below `idle_timeout`, above a burst of loss.
    pub silence_limit: Duration,
    /// Streams a peer may open at once: bounds the wants in flight.
    pub max_concurrent_bidi: u32,
    /// How long a handshake may take before the peer counts as unreachable.
    pub connect_timeout: Duration,
    /// Cap the congestion window at this multiple of the measured
    /// bandwidth-delay product (see `congestion`); `None`: plain Cubic.
    pub bdp_gain: Option<f64>,
    /// Probe for a path MTU above QUIC's 1200 bytes.
    pub mtu_discovery: bool,
    /// The fastest link this profile is meant to fill, in bits per second,
    /// and its round trip: flow-control windows are sized from their
    /// product (see `windows`), not from quinn's defaults, which are made
    /// for 100 Mbit/s and buffer megabytes per connection.
    pub link_bps: u64,
    pub link_rtt: Duration,
}

/// Flow-control windows of one connection, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// What a peer may send on one stream ahead of what this node has read.
    pub stream_receive: u64,
    /// The same, summed over all streams of the connection.
    pub receive: u64,
    /// What this node keeps written but unacknowledged, over all streams.
    pub send: u64,
}

impl TransportProfile {
    /// For the hub over 2G or satellite.
    pub fn wan() -> Self {
        TransportProfile {
            name: "wan",
            initial_rtt: Duration::from_millis(800),
            idle_timeout: Duration::from_secs(120),
            keep_alive: Duration::from_secs(25),
            silence_limit: Duration::from_secs(20),
            max_concurrent_bidi: 64,
            connect_timeout: Duration::from_secs(30),
            bdp_gain: Some(2.0),
            // Probes of up to 1452 bytes cost more than they save at 30
            // kbps: see docs/architecture.md.
            mtu_discovery: false,
            // 3G at its best with a 2G round trip: 1 Mbit/s x 600 ms.
            link_bps: 1_000_000,
            link_rtt: Duration::from_millis(600),
        }
    }

    /// For peers on the same LAN.
    pub fn lan() -> Self {
        TransportProfile {
            name: "lan",
            initial_rtt: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            silence_limit: Duration::from_secs(10),
            max_concurrent_bidi: 64,
            connect_timeout: Duration::from_secs(5),
            bdp_gain: None,
            mtu_discovery: true,
            // A busy LAN or Wi-Fi: 200 Mbit/s x 10 ms.
            link_bps: 200_000_000,
            link_rtt: Duration::from_millis(10),
        }
    }

    /// One bandwidth-delay product per stream, so a single want fills the
    /// link; two per connection (wants in flight share them), and two of
    /// unacknowledged data to send.
    pub fn windows(&self) -> Windows {
        let bdp = (self.link_bps as f64 / 8.0 * self.link_rtt.as_secs_f64()) as u64;
        // Never below a few full packets, or a tiny profile would stall.
        let bdp = bdp.max(16 * 1024);
        Windows {
            stream_receive: bdp,
            receive: 2 * bdp,
            send: 2 * bdp,
        }
    }

    pub fn quinn(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        let w = self.windows();
        // Within VarInt range: at most a few MB from the constants above.
        t.stream_receive_window(quinn::VarInt::from_u64(w.stream_receive).expect("window fits a VarInt"));
        t.receive_window(quinn::VarInt::from_u64(w.receive).expect("window fits a VarInt"));
        t.send_window(w.send);
        // ferry sends no QUIC datagrams: refuse them rather than buffer them.
        t.datagram_receive_buffer_size(None);
        t.datagram_send_buffer_size(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_bandwidth_delay_product() {
        // 1 Mbit/s x 600 ms = 75,000 bytes in flight.
        let wan = TransportProfile::wan().windows();
        assert_eq!(
            wan,
            Windows {
                stream_receive: 75_000,
                receive: 150_000,
                send: 150_000
            }
        );
        // 200 Mbit/s x 10 ms = 250,000 bytes.
        assert_eq!(TransportProfile::lan().windows().stream_receive, 250_000);
        // A profile for a tiny link still gets a few full packets.
        let tiny = TransportProfile {
            link_bps: 9_600,
            ..TransportProfile::wan()
        };
        assert_eq!(tiny.windows().stream_receive, 16 * 1024);
    }

    #[test]
    fn quinn_gets_the_windows() {
        // quinn keeps its config private; its Debug output is the only
        // view of what it will advertise.
        let cfg = format!("{:?}", TransportProfile::wan().quinn());
        assert!(cfg.contains("stream_receive_window: 75000"), "{cfg}");
        assert!(cfg.contains("receive_window: 150000"), "{cfg}");
        assert!(cfg.contains("send_window: 150000"), "{cfg}");
    }
}
