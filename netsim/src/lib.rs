//! netsim: a relay between a listen address and a target address that makes
//! the link between them behave like rural 2G, satellite or 3G.
//!
//! Per direction: one-way delay with jitter (never reordering), a bandwidth
//! cap by serialisation delay with a bounded queue (tail drop), random and
//! bursty (Gilbert-Elliott) loss, and outages. While running it can cut and
//! restore the link, switch profile, and rebind: the relay's outward socket
//! changes its source port (or address), as a NAT rebinding or a new IP
//! would look to the far side. UDP for QUIC; TCP so other systems can be
//! measured on the same link.

pub mod pipe;
pub mod profile;
pub mod stats;
mod tcp;
mod udp;

pub use profile::{Direction, GilbertElliott, Profile, PROFILE_NAMES};
pub use stats::{DirStats, Stats};

use pipe::Pipe;
use stats::DirCounters;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shared state of one simulated link.
pub(crate) struct Link {
    pub up: Mutex<Pipe>,
    pub down: Mutex<Pipe>,
    pub up_counters: DirCounters,
    pub down_counters: DirCounters,
    pub profile: Mutex<Profile>,
    pub rebinds: AtomicU64,
}

impl Link {
    fn new(profile: Profile, seed: u64) -> Self {
        let now = Instant::now();
        Link {
            up: Mutex::new(Pipe::new(profile.up.clone(), seed, now)),
            down: Mutex::new(Pipe::new(profile.down.clone(), seed.wrapping_add(1), now)),
            up_counters: DirCounters::default(),
            down_counters: DirCounters::default(),
            profile: Mutex::new(profile),
            rebinds: AtomicU64::new(0),
        }
    }

    pub fn pipe(&self, up: bool) -> std::sync::MutexGuard<'_, Pipe> {
        // The pipes hold plain data; a panic elsewhere cannot leave them torn.
        if up { self.up.lock() } else { self.down.lock() }.unwrap_or_else(|p| p.into_inner())
    }

    pub fn counters(&self, up: bool) -> &DirCounters {
        if up {
            &self.up_counters
        } else {
            &self.down_counters
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub profile: Profile,
    /// Seed for loss and jitter, so a run can be repeated.
    pub seed: u64,
}

impl Config {
    pub fn new(listen: SocketAddr, target: SocketAddr, profile: Profile) -> Self {
        Config {
            listen,
            target,
            profile,
            seed: 1,
        }
    }
}

enum Relay {
    Udp(udp::UdpRelay),
    Tcp,
}

/// A running relay. Dropping it stops it.
pub struct Netsim {
    link: Arc<Link>,
    relay: Relay,
    local_addr: SocketAddr,
    tasks: tokio::task::JoinSet<()>,
}

impl Netsim {
    /// Starts a UDP relay (for QUIC). Needs a tokio runtime.
    pub async fn udp(cfg: Config) -> anyhow::Result<Netsim> {
        let link = Arc::new(Link::new(cfg.profile, cfg.seed));
        let mut tasks = tokio::task::JoinSet::new();
        let relay = udp::UdpRelay::start(cfg.listen, cfg.target, link.clone(), &mut tasks).await?;
        let local_addr = relay.local_addr()?;
        Ok(Netsim {
            link,
            relay: Relay::Udp(relay),
            local_addr,
            tasks,
        })
    }

    /// Starts a TCP relay, so other systems can be measured on the same link.
    /// Loss does not apply to a byte stream; delay, rate and cuts do (a cut
    /// stalls the stream, as TCP retransmission would).
    pub async fn tcp(cfg: Config) -> anyhow::Result<Netsim> {
        let link = Arc::new(Link::new(cfg.profile, cfg.seed));
        let mut tasks = tokio::task::JoinSet::new();
        let local_addr = tcp::start(cfg.listen, cfg.target, link.clone(), &mut tasks).await?;
        Ok(Netsim {
            link,
            relay: Relay::Tcp,
            local_addr,
            tasks,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Drops everything in both directions until `restore`.
    pub fn cut(&self) {
        self.link.pipe(true).cut = true;
        self.link.pipe(false).cut = true;
    }

    pub fn restore(&self) {
        self.link.pipe(true).cut = false;
        self.link.pipe(false).cut = false;
    }

    /// Cuts the link `at` from now for `duration`, in the background.
    pub fn schedule_cut(&mut self, at: Duration, duration: Duration) {
        let link = self.link.clone();
        self.tasks.spawn(async move {
            tokio::time::sleep(at).await;
            link.pipe(true).cut = true;
            link.pipe(false).cut = true;
            tokio::time::sleep(duration).await;
            link.pipe(true).cut = false;
            link.pipe(false).cut = false;
        });
    }

    pub fn set_profile(&self, profile: Profile) {
        self.link.pipe(true).set_params(profile.up.clone());
        self.link.pipe(false).set_params(profile.down.clone());
        *self.link.profile.lock().unwrap_or_else(|p| p.into_inner()) = profile;
    }

    /// Gives every client's outward socket a new source port, and the
    /// address `ip` if given: the far side sees its peers arrive from a new
    /// address. UDP only.
    pub async fn rebind(&self, ip: Option<IpAddr>) -> anyhow::Result<()> {
        match &self.relay {
            Relay::Udp(r) => r.rebind(ip).await,
            Relay::Tcp => anyhow::bail!("rebind applies to the UDP relay only"),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            profile: self.link.profile.lock().unwrap_or_else(|p| p.into_inner()).name.clone(),
            cut: self.link.pipe(true).cut,
            rebinds: self.link.rebinds.load(Relaxed),
            up: self.link.up_counters.snapshot(),
            down: self.link.down_counters.snapshot(),
        }
    }
}
