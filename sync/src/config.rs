//! How a replica behaves: who it is, what it gives whom, how hard it works
//! the link.

use crate::io::Time;
use crate::policy::Policy;
use ferry_proto::{NodeId, Role};

#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeId,
    pub role: Role,
    pub name: String,
    pub policy: Policy,
    /// A daemon: connections stay open, new events are pushed as they
    /// arrive. `false` for a one-shot sync.
    pub live: bool,
    /// A dialer asks its peer for a fresh summary this often, to heal
    /// anything a push missed. `None`: only at connect.
    pub round_interval: Option<Time>,
    /// Rounds come this seldom (if less often than `round_interval`) on a
    /// connection where each side subscribed to the other's news.
    pub live_round_interval: Option<Time>,
    /// Wants outstanding per connection.
    pub wants_in_flight: usize,
    /// A gap longer than this is asked for in several wants, so that a
    /// slow link does not claim a whole backlog at once.
    pub want_max_events: u64,
    /// zstd levels for WAN and LAN links.
    pub level_wan: i32,
    pub level_lan: i32,
    /// A dialer whose peer answers its `Hello` within `fast_link_rtt`
    /// uses `level_lan` (loopback, a LAN not found by mDNS); within
    /// `mid_link_rtt`, `level_mid` (3G: level 19 would be slower than the
    /// link there).
    pub fast_link_rtt: Time,
    pub mid_link_rtt: Time,
    pub level_mid: i32,
    /// A lane whose work ran out this long ago ends its zstd frame and
    /// frees its compression context (the receiver frees its own at the
    /// frame's end); the next work starts a new frame that compresses
    /// against the stream's last `PREFIX_BYTES` (`ferry_proto::batch`).
    /// `None`: a lane keeps its frame open for the connection's life.
    /// At once by default: an open frame costs the peer a decompression
    /// context (0.5 MiB) and this node a compression context (3.6 MiB at
    /// the WAN level), while a live event in a new frame costs about 8 B
    /// more than in an open one (docs/memory.md).
    pub end_idle_frame_after: Option<Time>,
    /// Deliberate faults, for the simulator to prove it catches them.
    pub bugs: Bugs,
}

impl Config {
    pub fn new(node: NodeId, role: Role, name: impl Into<String>) -> Self {
        Config {
            node,
            role,
            name: name.into(),
            policy: Policy::All,
            live: false,
            round_interval: None,
            // A round on a connection pushed both ways only heals what a
            // push missed; the simulator fails a seed that needed one.
            live_round_interval: Some(Time::from_secs(300)),
            wants_in_flight: 16,
            want_max_events: 2048,
            level_wan: ferry_proto::batch::LEVEL_WAN,
            level_lan: ferry_proto::batch::LEVEL_LAN,
            fast_link_rtt: Time::from_millis(20),
            mid_link_rtt: Time::from_millis(200),
            level_mid: ferry_proto::batch::LEVEL_MID,
            end_idle_frame_after: Some(Time::default()),
            bugs: Bugs::default(),
        }
    }
}

/// Faults the simulator can switch on (`ferry-sim --inject-bug NAME`). They
/// only take effect in builds with the `fault-injection` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Claims are never released: ranges once asked for are never asked
    /// for again, from anyone.
    pub claims_never_released: bool,
    /// Wants and pushes are served whatever the policy says.
    pub skip_policy_check: bool,
    /// On a reconnect, the wants sent before the peer's summary ask for
    /// everything the peer held last time, held here or not.
    pub duplicate_after_reconnect: bool,
    /// `MemStore::crash` loses the last group it had acknowledged.
    pub drop_acked_append_on_crash: bool,
    /// A relay alters the payload of every event of another origin it
    /// sends (`forge::Forging`). Not a defect to catch but an attack to
    /// withstand: log authentication refuses every such event.
    pub relay_forges: bool,
    /// After a start a node writes on the log it had, trusting its disk
    /// not to have gone back in time (a card that lost synced writes, a
    /// whole-disk image put back).
    pub keep_log_at_start: bool,
    /// Events a revoked node stamped after its revocation are taken.
    pub admit_revoked: bool,
    /// A node signs the head of every log it holds as if it wrote it: a
    /// rogue relay fabricating events in another writer's name. Node only
    /// (it acts where a node rebuilds its trees from its WAL); an attack
    /// to withstand, like `relay_forges`.
    pub sign_any_log: bool,
}

impl Bugs {
    pub const NAMES: [&'static str; 7] = [
        "claims-never-released",
        "skip-policy-check",
        "duplicate-after-reconnect",
        "drop-acked-append-on-crash",
        "relay-forges",
        "keep-log-at-start",
        "admit-revoked",
    ];

    pub fn parse(name: &str) -> Option<Bugs> {
        let mut b = Bugs::default();
        match name {
            "claims-never-released" => b.claims_never_released = true,
            "skip-policy-check" => b.skip_policy_check = true,
            "duplicate-after-reconnect" => b.duplicate_after_reconnect = true,
            "drop-acked-append-on-crash" => b.drop_acked_append_on_crash = true,
            "relay-forges" => b.relay_forges = true,
            "keep-log-at-start" => b.keep_log_at_start = true,
            "admit-revoked" => b.admit_revoked = true,
            // Not in NAMES: the simulator does not rebuild trees from events.
            "sign-any-log" => b.sign_any_log = true,
            _ => return None,
        }
        Some(b)
    }

    /// Whether a fault is on: never, without the feature.
    pub fn on(&self, f: impl Fn(&Bugs) -> bool) -> bool {
        cfg!(feature = "fault-injection") && f(self)
    }
}
