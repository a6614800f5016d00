//! Command-line interface definitions.

use crate::datadir::Policy;
use crate::pki::Role;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Replicate clinic events over the worst networks in the world",
    propagate_version = true
)]
pub struct Cli {
    /// The node's data directory.
    #[arg(long, env = "FERRY_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `ferry=debug` (default: warnings only).
    #[arg(long, env = "FERRY_LOG", global = true)]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make a CA and three nodes in a temporary directory and show them replicate.
    Demo {
        /// Keep the demo's CA and nodes in this directory to explore afterwards.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Create a node: its key, WAL key and config. Prints the node id.
    Init {
        /// Human name of this node, e.g. `bhu-gasa`.
        #[arg(long)]
        name: String,
        /// Store the WAL unencrypted (encryption at rest is the default).
        #[arg(long)]
        no_encrypt: bool,
    },
    /// The deployment's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print this node's certificate signing request (to send to the CA).
    Csr {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Certificates of this node.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Append events. Prints `origin:seq` for each, once it is durable.
    Push(PushArgs),
    /// Print stored events.
    Log(LogArgs),
    /// What this node holds and whom it has synced with.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Known peers: role, address, how found, connection state, last sync,
    /// and how many events each side lacks.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Sync once with a peer, then exit (0 only if the session completed).
    Sync {
        /// The peer's address, HOST:PORT.
        #[arg(long)]
        peer: String,
        #[arg(long, value_enum)]
        policy: Option<Policy>,
        /// Cap in kbit/s on what this node sends (default from config: none).
        #[arg(long)]
        bandwidth_kbps: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Run the node: listen for peers and keep syncing with the configured ones.
    Run(RunArgs),
    /// Maintenance of the write-ahead log.
    #[command(subcommand)]
    Wal(WalCommand),
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the deployment CA.
    Init {
        #[arg(long)]
        ca_dir: PathBuf,
        /// Name of the deployment, e.g. `bhutan-east`.
        #[arg(long)]
        name: String,
    },
    /// Sign a node's CSR, giving it a role. Prints the certificate bundle.
    Sign {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The CSR file (`ferry csr` output); `-` for standard input.
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        role: Role,
        /// Override the name the node asked for.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign and install in one step, for a node whose data directory is here.
    Enroll {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        role: Role,
    },
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Install the bundle `ferry ca sign` produced.
    Install {
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum WalCommand {
    /// Re-encrypt every segment under a new key (resumes if interrupted).
    Rekey,
}

#[derive(Args)]
pub struct PushArgs {
    /// The payload. Without it, `--file`, or JSON lines on standard input.
    pub payload: Option<String>,
    /// Read one payload from this file.
    #[arg(long, conflicts_with = "payload")]
    pub file: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    pub topic: String,
    /// urgent, normal or bulk.
    #[arg(long, default_value = "normal")]
    pub priority: ferry_proto::Priority,
}

#[derive(Args)]
pub struct LogArgs {
    /// Only this origin (`NODE_ID.EPOCH`, as `ferry status` shows).
    #[arg(long)]
    pub origin: Option<ferry_proto::Origin>,
    /// Only events with a sequence number above this.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// UDP address to listen on (default from config, 0.0.0.0:7700).
    #[arg(long, env = "FERRY_LISTEN")]
    pub listen: Option<String>,
    /// Peers to keep in sync with, HOST:PORT; adds to config.
    #[arg(long, env = "FERRY_PEERS", value_delimiter = ',')]
    pub peer: Vec<String>,
    #[arg(long, value_enum, env = "FERRY_POLICY")]
    pub policy: Option<Policy>,
    /// Seconds between rounds with a connected peer.
    #[arg(long, env = "FERRY_SYNC_INTERVAL")]
    pub interval: Option<u64>,
    /// Cap in kbit/s on what this node sends to peers (default from config: none).
    #[arg(long, env = "FERRY_BANDWIDTH_KBPS")]
    pub bandwidth_kbps: Option<u64>,
    /// Loopback TCP address of the local HTTP API (default 127.0.0.1:7701).
    #[arg(long, env = "FERRY_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Neither advertise nor look for peers on the LAN (mDNS).
    #[arg(long, env = "FERRY_NO_MDNS")]
    pub no_mdns: bool,
    /// Interfaces mDNS may use, e.g. eth0 (default from config: all but loopback).
    #[arg(long = "mdns-interface", env = "FERRY_MDNS_INTERFACES", value_delimiter = ',')]
    pub mdns_interfaces: Vec<String>,
}

/// Logs to stderr, warnings only unless `--log` / `FERRY_LOG` says more.
pub fn init_logging(cli: &Cli) {
    let filter = cli.log.clone().unwrap_or_else(|| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
