//! A node's data directory: keys, certificates, config, WAL, peer state.
//!
//! ```text
//! config.toml   name, listen address, peers, policy (flags and FERRY_* override)
//! node.key      the node's private key (0600, never leaves the node)
//! node.csr      certificate request, until a certificate is installed
//! node.crt      the node's certificate, from the deployment CA
//! ca.crt        the deployment CA certificate
//! wal.key       WAL encryption key (0600)
//! log-epoch     the epoch of this node's own log (see proto::Origin), and
//! log-epoch.id  the file identity it was written with (restore detection)
//! log-epoch.next the epoch the first local write of this start begins
//! peers.json    what this node knows of its peers (last sync, counts)
//! wal/          segments; SEALED while the WAL is closed cleanly
//! ```

use crate::pki::{self, CertInfo, Identity, Role};
use anyhow::{bail, Context, Result};
use ferry_proto::{NodeId, Origin};
use ferry_wal::{Keyring, Wal, WalKey, WalOptions};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_PORT: u16 = 7700;

/// The epoch planned for the log the first local write of a start begins.
const NEXT_EPOCH: &str = "log-epoch.next";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// A peer receives every event this node holds.
    #[default]
    All,
    /// A peer receives only the events it wrote itself.
    Own,
    /// By the peer's role: hubs and mules receive everything (they carry
    /// it on); a clinic receives its own events and those written by hubs.
    Role,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub name: String,
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default = "default_true")]
    pub encrypt_wal: bool,
    /// Where the WAL key lives, if not `wal.key` in the data directory.
    #[serde(default)]
    pub wal_key_file: Option<PathBuf>,
    #[serde(default = "default_interval")]
    pub sync_interval_secs: u64,
    /// Seconds of silence after which a WAN connection sends a keep-alive
    /// (unset: 25). It must be shorter than the UDP binding timeout of any
    /// NAT on the path, or a quiet connection loses its way back.
    #[serde(default)]
    pub keep_alive_secs: Option<u64>,
    /// Cap in kbit/s on what this node sends to peers (unset: no cap).
    #[serde(default)]
    pub bandwidth_kbps: Option<u64>,
    /// Address of the local HTTP API (unset: 127.0.0.1:7701). Beyond
    /// loopback, requests need the token in `api.token`.
    #[serde(default)]
    pub api_listen: Option<String>,
    /// Largest request body the API takes, in bytes (unset: 4 MiB). One
    /// event's payload is at most 1 MiB whatever this says.
    #[serde(default)]
    pub api_max_body_bytes: Option<usize>,
    /// How long a write's idempotency key is remembered (unset: 24 hours):
    /// a retry with the same key within it writes nothing.
    #[serde(default)]
    pub idempotency_window_secs: Option<u64>,
    /// Find and advertise peers on the LAN by mDNS.
    #[serde(default = "default_true")]
    pub mdns: bool,
    /// Interfaces mDNS may use, e.g. `["eth0"]` to keep it off a cellular
    /// modem (empty: all but loopback).
    #[serde(default)]
    pub mdns_interfaces: Vec<String>,
}

fn default_listen() -> String {
    format!("0.0.0.0:{DEFAULT_PORT}")
}
fn default_true() -> bool {
    true
}
fn default_interval() -> u64 {
    30
}

#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    pub fn wal_dir(&self) -> PathBuf {
        self.path("wal")
    }

    /// `ferry init`: makes the node key, WAL key and config. Returns the node id.
    pub fn init(&self, name: &str, encrypt_wal: bool) -> Result<NodeId> {
        self.init_key(name, encrypt_wal, KeyPair::generate()?)
    }

    /// `ferry init --key`: a node made anew around its earlier private key
    /// (PEM), so it keeps its node id and its certificate stays valid.
    pub fn init_with_key(&self, name: &str, encrypt_wal: bool, key_pem: &str) -> Result<NodeId> {
        let key = KeyPair::from_pem(key_pem).context("the --key file is not a valid private key (PEM)")?;
        self.init_key(name, encrypt_wal, key)
    }

    fn init_key(&self, name: &str, encrypt_wal: bool, key: KeyPair) -> Result<NodeId> {
        if self.path("config.toml").exists() {
            bail!("{} is already initialised (config.toml exists)", self.root.display());
        }
        make_private_dir(&self.root)?;
        pki::write_secret(&self.path("node.key"), &key.serialize_pem())?;
        if encrypt_wal {
            WalKey::generate().save_new(&self.path("wal.key"))?;
        }
        self.set_log_epoch(rand::random())?;
        atomic_write(&self.path("node.csr"), pki::make_csr(&key, name)?.as_bytes())?;

        let cfg = Config {
            name: name.to_string(),
            listen: default_listen(),
            peers: Vec::new(),
            policy: Policy::All,
            encrypt_wal,
            wal_key_file: None,
            sync_interval_secs: default_interval(),
            keep_alive_secs: None,
            bandwidth_kbps: None,
            api_listen: None,
            api_max_body_bytes: None,
            idempotency_window_secs: None,
            mdns: true,
            mdns_interfaces: Vec::new(),
        };
        self.save_config(&cfg)?;
        let node = pki::node_id_of_key(&key);
        // Created and sealed now, so the first start can vouch for the log.
        let origin = Origin {
            node,
            epoch: self.log_epoch(false)?,
        };
        Wal::open(WalOptions::new(self.wal_dir(), self.keyring(&cfg)?, origin))?.close();
        Ok(node)
    }

    pub fn config(&self) -> Result<Config> {
        let path = self.path("config.toml");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a ferry data directory (no config.toml); run `ferry init --data-dir {} --name NAME` first",
                self.root.display(),
                self.root.display()
            )
        })?;
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    pub fn save_config(&self, cfg: &Config) -> Result<()> {
        atomic_write(&self.path("config.toml"), toml::to_string_pretty(cfg)?.as_bytes())
    }

    pub fn identity(&self) -> Result<Identity> {
        let key =
            KeyPair::from_pem(&pki::read(&self.path("node.key"))?).context("node.key is not a valid private key")?;
        let node_id = pki::node_id_of_key(&key);
        let cert_pem = std::fs::read_to_string(self.path("node.crt")).ok();
        let ca_pem = std::fs::read_to_string(self.path("ca.crt")).ok();
        let cert = match &cert_pem {
            Some(pem) => Some(pki::cert_info(&pki::parse_pem_certs(pem)?[0])?),
            None => None,
        };
        Ok(Identity {
            key,
            node_id,
            cert,
            cert_pem,
            ca_pem,
        })
    }

    /// `ferry cert install`: checks the certificate is for this node's key
    /// and chains to the CA in the bundle, then installs both.
    pub fn install_cert(&self, bundle_pem: &str) -> Result<CertInfo> {
        let certs = pki::parse_pem_certs(bundle_pem)?;
        if certs.len() < 2 {
            bail!("the bundle must hold the node certificate followed by the CA certificate (the output of `ferry ca sign`)");
        }
        let id = self.identity()?;
        let info = pki::cert_info(&certs[0])?;
        if info.node_id != id.node_id {
            bail!(
                "this certificate is for node {}, but this node's key is {}; was the CSR from another node?",
                info.node_id,
                id.node_id
            );
        }
        crate::tls::verify_chain(&certs[0], &certs[certs.len() - 1])?;
        let pems: Vec<String> = bundle_pem
            .split_inclusive("-----END CERTIFICATE-----")
            .map(|s| s.trim().to_string() + "\n")
            .collect();
        atomic_write(&self.path("node.crt"), pems[0].as_bytes())?;
        atomic_write(&self.path("ca.crt"), pems[certs.len() - 1].as_bytes())?;
        let _ = std::fs::remove_file(self.path("node.csr"));
        Ok(info)
    }

    /// `ferry ca enroll`: with the CA at hand, request, sign and install in
    /// one step (the key still never leaves this directory).
    pub fn enroll_locally(&self, ca_dir: &Path, role: Role) -> Result<CertInfo> {
        self.enroll_locally_for(ca_dir, role, pki::NODE_CERT_DAYS)
    }

    /// As `enroll_locally`, with a certificate valid for `days`.
    pub fn enroll_locally_for(&self, ca_dir: &Path, role: Role, days: u32) -> Result<CertInfo> {
        let csr = pki::make_csr(&self.identity()?.key, &self.config()?.name)?;
        self.install_cert(&pki::ca_sign(ca_dir, &csr, role, None, days)?)
    }

    /// The epoch of this node's own log. With `may_renew`, a data directory
    /// that was copied or restored from a backup (its `log-epoch` file is not
    /// the one this node wrote) gets a new epoch before anything is written,
    /// so no sequence number is ever given out twice.
    pub fn log_epoch(&self, may_renew: bool) -> Result<u32> {
        let path = self.path("log-epoch");
        let text = std::fs::read_to_string(&path).with_context(|| format!("could not read {}", path.display()))?;
        let epoch = u32::from_str_radix(text.trim(), 16)
            .with_context(|| format!("{} must hold 8 hex digits", path.display()))?;
        let recorded = std::fs::read_to_string(self.path("log-epoch.id")).unwrap_or_default();
        let identity = file_identity(&path)?;
        if may_renew && recorded_before_change_times(recorded.trim(), &identity) {
            atomic_write(&self.path("log-epoch.id"), identity.as_bytes())?;
            return Ok(epoch);
        }
        if may_renew && recorded.trim() != identity {
            let renewed = rand::random();
            tracing::warn!(
                old = format!("{epoch:08x}"),
                new = format!("{renewed:08x}"),
                "this data directory was copied, restored from a backup, or had its epoch file's owner \
                 or mode changed; starting a new log epoch so no sequence number is reused"
            );
            self.set_log_epoch(renewed)?;
            return Ok(renewed);
        }
        Ok(epoch)
    }

    pub fn set_log_epoch(&self, epoch: u32) -> Result<()> {
        let path = self.path("log-epoch");
        atomic_write(&path, format!("{epoch:08x}\n").as_bytes())?;
        atomic_write(&self.path("log-epoch.id"), file_identity(&path)?.as_bytes())?;
        // A newer decision replaces the new log planned at this start.
        match std::fs::remove_file(self.path(NEXT_EPOCH)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("could not remove {}", self.path(NEXT_EPOCH).display()))
            }
            _ => Ok(()),
        }
    }

    /// The log the first local write of this start begins, recorded before
    /// the WAL may use it; and a planned log that did receive events
    /// becomes the node's log for good. Every start plans one: nothing on
    /// the disk can show it did not go back in time (a card that lost
    /// synced writes, a whole-disk image put back with its inodes and the
    /// WAL's seal), and the numbers a peer already holds must not be given
    /// out again.
    fn guard_own_log(&self, wal: &Wal, node: NodeId) -> Result<()> {
        if let Some(planned) = self.written_planned_log(wal, node) {
            self.set_log_epoch(planned.epoch)?;
            wal.set_local_origin(planned);
        }
        let path = self.path(NEXT_EPOCH);
        let epoch: u32 = rand::random();
        atomic_write(&path, format!("{epoch:08x}\n").as_bytes())?;
        wal.set_unconfirmed_tail(Origin { node, epoch });
        if wal.closed_cleanly() {
            tracing::debug!(log = %wal.local_origin(), next = format!("{epoch:08x}"), "the next local event starts a new log epoch");
        } else {
            tracing::warn!(
                log = %wal.local_origin(),
                next = format!("{epoch:08x}"),
                "the WAL was not closed cleanly (a crash or power cut) or does not end where it was closed: \
                 events at its end may be lost here; peers that hold them give them back"
            );
        }
        Ok(())
    }

    /// The log planned at the last start, if it received events: the one
    /// the node writes now, though `log-epoch` names it only from the next
    /// start on.
    fn written_planned_log(&self, wal: &Wal, node: NodeId) -> Option<Origin> {
        let text = std::fs::read_to_string(self.path(NEXT_EPOCH)).ok()?;
        let planned = Origin {
            node,
            epoch: u32::from_str_radix(text.trim(), 16).ok()?,
        };
        (!wal.have(&planned).is_empty()).then_some(planned)
    }

    pub fn wal_key_path(&self, cfg: &Config) -> PathBuf {
        cfg.wal_key_file.clone().unwrap_or_else(|| self.path("wal.key"))
    }

    pub fn keyring(&self, cfg: &Config) -> Result<Keyring> {
        if !cfg.encrypt_wal {
            return Ok(Keyring::plaintext());
        }
        let path = self.wal_key_path(cfg);
        let mut ring = Keyring::single(WalKey::load(&path)?);
        // An interrupted rekey leaves the new key beside the old one.
        let next = path.with_extension("key.next");
        if next.exists() {
            ring.previous.push(WalKey::load(&next)?);
        }
        Ok(ring)
    }

    pub fn open_wal(&self, read_only: bool) -> Result<Wal> {
        let cfg = self.config()?;
        let id = self.identity()?;
        let origin = Origin {
            node: id.node_id,
            epoch: self.log_epoch(!read_only)?,
        };
        let mut opts = WalOptions::new(self.wal_dir(), self.keyring(&cfg)?, origin);
        opts.read_only = read_only;
        if let Some(secs) = cfg.idempotency_window_secs {
            opts.idempotency_window = std::time::Duration::from_secs(secs);
        }
        let wal = Wal::open(opts)?;
        if !read_only {
            self.guard_own_log(&wal, id.node_id)?;
        } else if let Some(planned) = self.written_planned_log(&wal, id.node_id) {
            // Beside a daemon that has written since it started.
            wal.set_local_origin(planned);
        }
        Ok(wal)
    }

    /// The WAL for reading only, also while a daemon writes it: never takes
    /// the writer's lock, truncates or renews the log epoch, so it cannot
    /// stand in the way of `ferry run` starting at the same moment.
    pub fn open_wal_for_reading(&self) -> Result<Wal> {
        // A node that never wrote has no WAL directory yet; reading it
        // should show nothing rather than fail. Not in a directory that is
        // not a node's (a mistyped --data-dir): config() says what to do.
        self.config()?;
        make_private_dir(&self.wal_dir())?;
        self.open_wal(true)
    }

    pub fn peers(&self) -> BTreeMap<String, PeerRecord> {
        std::fs::read(self.path("peers.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn record_peer(&self, node_id: NodeId, update: impl FnOnce(&mut PeerRecord)) -> Result<()> {
        self.update_peers(|peers| update(peers.entry(node_id.to_string()).or_default()))
    }

    /// Changes peers.json in one read and one write.
    pub fn update_peers(&self, update: impl FnOnce(&mut BTreeMap<String, PeerRecord>)) -> Result<()> {
        // Sessions record concurrently; read-modify-write must not interleave.
        static PEERS_FILE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = PEERS_FILE.lock().unwrap_or_else(|p| p.into_inner());
        let mut peers = self.peers();
        update(&mut peers);
        atomic_write(&self.path("peers.json"), &serde_json::to_vec_pretty(&peers)?)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerRecord {
    pub name: String,
    pub role: Option<Role>,
    pub addr: String,
    pub last_sync_unix: Option<u64>,
    pub last_error: Option<String>,
    pub events_received: u64,
    /// Events written to the peer's connection. A connection whose peer
    /// has gone (a mule driven away) takes pushes until its idle timeout,
    /// and those count here though they never arrive.
    pub events_sent: u64,
    /// Events the peer sent that this node already held: wasted bytes.
    #[serde(default)]
    pub duplicates_received: u64,
    /// How this node learnt of the peer: `static`, `mdns` or `dialed-us`.
    #[serde(default)]
    pub found_by: String,
    /// Seen on the LAN with another deployment's CA: never dialed.
    #[serde(default)]
    pub foreign: bool,
    /// A connection is open (as of the last record).
    #[serde(default)]
    pub connected: bool,
    /// After the last round: events the peer holds that this node lacks,
    /// and events this node may send that the peer lacks.
    #[serde(default)]
    pub we_lack: Option<u64>,
    #[serde(default)]
    pub they_lack: Option<u64>,
    /// Name and role come from the peer's certificate (this node connected
    /// to it), not from what it claimed on the LAN.
    #[serde(default)]
    pub verified: bool,
    /// Bytes on the wire (QUIC's UDP payloads) to and from the peer, over
    /// every connection, kept current while connected.
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
    /// When the open connection was made (unset while not connected).
    #[serde(default)]
    pub connected_since_unix: Option<u64>,
}

/// Makes a directory (and its parents) that only this user may enter.
pub fn make_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("could not create {}", path.display()))
}

/// `HOST`, `HOST:PORT`, `IPV6` or `[IPV6]:PORT`, with the default port
/// filled in where none is given.
pub fn with_default_port(peer: &str) -> String {
    if peer.parse::<std::net::SocketAddr>().is_ok() {
        return peer.to_string();
    }
    if peer.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{peer}]:{DEFAULT_PORT}");
    }
    let has_port = peer
        .rsplit_once(':')
        .is_some_and(|(host, p)| !host.contains(':') && p.parse::<u16>().is_ok());
    if has_port {
        peer.to_string()
    } else {
        format!("{peer}:{DEFAULT_PORT}")
    }
}

/// Replaces `path` with `bytes` in one rename; the file is readable by
/// this user only (0600).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("could not write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("could not write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("could not replace {}", path.display()))?;
    Ok(())
}

/// Device and inode: what a restore from a file-level backup changes.
/// Whether `recorded` is an identity from a ferry that kept only device and
/// inode, naming the same file: kept, in the current form, without a new log.
fn recorded_before_change_times(recorded: &str, identity: &str) -> bool {
    recorded.split(' ').count() == 2 && identity.starts_with(&format!("{recorded} "))
}

/// Which file this is: device and inode, and its change time. A restore
/// may write into the same inode (a copy over the live files) or get the
/// freed inode back from the file system, but it cannot keep the change
/// time, which the kernel sets on every write and no tool can set back.
fn file_identity(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).with_context(|| format!("could not stat {}", path.display()))?;
    Ok(format!("{} {} {}.{:09}", m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod port_tests {
    use super::with_default_port;

    #[test]
    fn a_peer_without_a_port_gets_ferrys() {
        assert_eq!(with_default_port("hub.example.org"), "hub.example.org:7700");
        assert_eq!(with_default_port("hub.example.org:9000"), "hub.example.org:9000");
        assert_eq!(with_default_port("10.0.0.5"), "10.0.0.5:7700");
        assert_eq!(with_default_port("10.0.0.5:7701"), "10.0.0.5:7701");
        assert_eq!(with_default_port("::1"), "[::1]:7700");
        assert_eq!(with_default_port("fe80::1:2"), "[fe80::1:2]:7700");
        assert_eq!(with_default_port("[::1]:7800"), "[::1]:7800");
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::{atomic_write, file_identity, DataDir};

    fn node_dir() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        dir.init("clinic", false).unwrap();
        (tmp, dir)
    }

    #[test]
    fn an_identity_recorded_without_a_change_time_is_upgraded_not_renewed() {
        let (_tmp, dir) = node_dir();
        let epoch = dir.log_epoch(false).unwrap();
        let full = file_identity(&dir.path("log-epoch")).unwrap();
        let old_form: Vec<&str> = full.split(' ').take(2).collect();
        atomic_write(&dir.path("log-epoch.id"), old_form.join(" ").as_bytes()).unwrap();
        assert_eq!(dir.log_epoch(true).unwrap(), epoch);
        assert_eq!(std::fs::read_to_string(dir.path("log-epoch.id")).unwrap(), full);
    }

    #[test]
    fn an_epoch_file_rewritten_in_place_gets_a_new_epoch() {
        let (_tmp, dir) = node_dir();
        let epoch = dir.log_epoch(true).unwrap();
        let text = std::fs::read(dir.path("log-epoch")).unwrap();
        // Change times have a coarse clock on some file systems.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path("log-epoch"), text).unwrap();
        assert_ne!(dir.log_epoch(true).unwrap(), epoch);
    }
}
