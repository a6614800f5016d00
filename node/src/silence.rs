//! A peer that stopped answering. QUIC ends a connection only at its idle
//! timeout (120 s on the WAN profile), and a connection whose packets go
//! out unanswered stays up until then. On bad networks that is common: a
//! NAT that rebinds while the handshake is still in flight (the server
//! drops packets from the new address until the handshake is confirmed,
//! RFC 9000 section 9, and sends its own to the old one, so neither end
//! hears the other again), or a carrier that stops routing a binding. A
//! link gives its connection up once what it sent has gone unanswered for
//! a while, and the dialer dials again (`link::watch_silence`).

use std::time::{Duration, Instant};

/// The counters of a connection the watch compares from one look to the
/// next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams received from the peer.
    pub received: u64,
    /// Frames sent that the peer must acknowledge: every kind but ACK and
    /// CONNECTION_CLOSE. A pure ACK asks for no answer, so it does not
    /// count as a question left unanswered.
    pub eliciting: u64,
}

impl Counts {
    pub fn of(stats: &quinn::ConnectionStats) -> Counts {
        let f = &stats.frame_tx;
        let eliciting = [
            f.ping,
            f.stream,
            f.crypto,
            f.max_data,
            f.max_stream_data,
            f.max_streams_bidi,
            f.max_streams_uni,
            f.data_blocked,
            f.stream_data_blocked,
            f.streams_blocked_bidi,
            f.streams_blocked_uni,
            f.reset_stream,
            f.stop_sending,
            f.new_connection_id,
            f.retire_connection_id,
            f.new_token,
            f.path_challenge,
            f.path_response,
            f.datagram,
            f.ack_frequency,
            f.immediate_ack,
            u64::from(f.handshake_done),
        ]
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n));
        Counts {
            received: stats.udp_rx.datagrams,
            eliciting,
        }
    }
}

/// Whether the peer has left what this node sent unanswered, from a look
/// at the counters now and then. The watch starts once the peer has been
/// heard at all: a dial that no one answers (a 0-RTT connection to a hub
/// that is down) is the dial's to give up (`connect_timeout`), and is
/// reported as unreachable, not as silence.
#[derive(Debug)]
pub struct Silence {
    last: Counts,
    /// The look that first saw something sent after the last datagram
    /// received.
    unanswered_since: Option<Instant>,
}

impl Silence {
    pub fn new(counts: Counts) -> Self {
        Silence {
            last: counts,
            unanswered_since: None,
        }
    }

    /// Takes the counters at `now`. Returns how long what this node sent
    /// has gone unanswered, once that is `limit` or more. Anything received
    /// counts as an answer: the peer is there, whatever it sends.
    pub fn observe(&mut self, now: Instant, counts: Counts, limit: Duration) -> Option<Duration> {
        if counts.received == 0 {
            self.last = counts;
            return None;
        }
        if counts.received != self.last.received {
            self.unanswered_since = None;
        } else if counts.eliciting != self.last.eliciting && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        self.last = counts;
        let silent = now.saturating_duration_since(self.unanswered_since?);
        (silent >= limit).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(20);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn sending_into_silence_ends_after_the_limit() {
        let t0 = Instant::now();
        let heard = Counts {
            received: 1,
            eliciting: 0,
        };
        let mut s = Silence::new(heard);
        let sent = |n| Counts {
            received: 1,
            eliciting: n,
        };
        assert_eq!(s.observe(at(t0, 1), sent(3), LIMIT), None);
        // Retransmissions go on; nothing comes back.
        assert_eq!(s.observe(at(t0, 10), sent(5), LIMIT), None);
        assert_eq!(s.observe(at(t0, 20), sent(6), LIMIT), None);
        assert_eq!(s.observe(at(t0, 21), sent(6), LIMIT), Some(LIMIT));
    }

    #[test]
    fn a_peer_never_heard_is_not_silent() {
        // A dial no one answers: the dial's timeout ends it, not the watch.
        let t0 = Instant::now();
        let mut s = Silence::new(Counts::default());
        for t in [1, 30, 90] {
            let c = Counts {
                received: 0,
                eliciting: t,
            };
            assert_eq!(s.observe(at(t0, t), c, LIMIT), None);
        }
        // Heard once, then silent: the count starts at the first send after.
        let c = |received, eliciting| Counts { received, eliciting };
        assert_eq!(s.observe(at(t0, 100), c(1, 95), LIMIT), None);
        assert_eq!(s.observe(at(t0, 101), c(1, 96), LIMIT), None);
        assert_eq!(s.observe(at(t0, 121), c(1, 97), LIMIT), Some(LIMIT));
    }

    #[test]
    fn an_answer_starts_the_count_again() {
        let t0 = Instant::now();
        let mut s = Silence::new(Counts::default());
        let c = |received, eliciting| Counts { received, eliciting };
        assert_eq!(s.observe(at(t0, 1), c(0, 1), LIMIT), None);
        assert_eq!(s.observe(at(t0, 15), c(1, 2), LIMIT), None);
        // Sent at 16, unanswered until 35: not yet 20 s.
        assert_eq!(s.observe(at(t0, 16), c(1, 3), LIMIT), None);
        assert_eq!(s.observe(at(t0, 35), c(1, 4), LIMIT), None);
        assert_eq!(s.observe(at(t0, 36), c(1, 4), LIMIT), Some(LIMIT));
    }

    #[test]
    fn an_idle_connection_or_one_that_only_acknowledges_is_not_silent() {
        let t0 = Instant::now();
        let mut s = Silence::new(Counts::default());
        // The peer sends now and then; this node only acknowledges (no
        // eliciting frames), for far longer than the limit.
        for (i, t) in [1, 30, 90, 200].into_iter().enumerate() {
            let c = Counts {
                received: i as u64 + 1,
                eliciting: 0,
            };
            assert_eq!(s.observe(at(t0, t), c, LIMIT), None);
            assert_eq!(s.observe(at(t0, t + 60), c, LIMIT), None);
        }
        // Nothing at all moves either way: idle, not silent.
        let mut idle = Silence::new(Counts::default());
        assert_eq!(idle.observe(at(t0, 500), Counts::default(), LIMIT), None);
    }
}
