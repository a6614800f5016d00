//! Command-line interface definitions. Every command's `--help` ends with
//! examples; `ferry completions` and `ferry man` are generated from these.

use crate::datadir::Policy;
use crate::pki::Role;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The commit this binary was built from (`unknown` when built without git).
pub const COMMIT: &str = env!("FERRY_COMMIT");
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FERRY_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "ferry",
    version = VERSION,
    about = "Replicate clinic events over the worst networks in the world",
    propagate_version = true,
    after_help = "Examples:
  ferry ca init --ca-dir ./ca --name bhutan-east
  ferry init --data-dir /var/lib/ferry --name bhu-gasa
  ferry ca enroll --ca-dir ./ca --data-dir /var/lib/ferry --role clinic
  ferry run --data-dir /var/lib/ferry --peer hub.example.org
  ferry status --data-dir /var/lib/ferry"
)]
pub struct Cli {
    /// The node's data directory.
    #[arg(long, env = "FERRY_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `ferry=debug` (default: warnings only).
    #[arg(long, env = "FERRY_LOG", global = true)]
    pub log: Option<String>,
    /// Log lines as text (coloured only on a terminal and without NO_COLOR)
    /// or as one JSON object per line, for log collectors.
    #[arg(long, env = "FERRY_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make a CA and three nodes in a temporary directory and show them replicate.
    #[command(after_help = "Examples:\n  ferry demo\n  ferry demo --dir ./demo    # keep the nodes to explore")]
    Demo {
        /// Keep the demo's CA and nodes in this directory to explore afterwards.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Create a node: its key, WAL key and config. Prints the node id.
    #[command(after_help = "Examples:
  ferry init --data-dir /var/lib/ferry --name bhu-gasa
  # the SD card died: same key and certificate, own events back from the hub
  ferry init --data-dir /var/lib/ferry --name bhu-gasa \\
      --key saved/node.key --cert saved/node.crt --restore-from hub.example.org")]
    Init {
        /// Human name of this node, e.g. `bhu-gasa`.
        #[arg(long)]
        name: String,
        /// Store the WAL unencrypted (encryption at rest is the default).
        #[arg(long)]
        no_encrypt: bool,
        /// Use this private key (PEM) instead of making one, so the node
        /// keeps its id: a node rebuilt after its disk was lost.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Install this certificate for the key (what `ferry cert install`
        /// takes: the node's certificate followed by the CA's).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Then sync once with this peer, HOST or HOST:PORT, to get back
        /// every event the node wrote before (its earlier logs) and what it
        /// held. The new node writes a new log epoch from then on.
        #[arg(long, requires = "cert")]
        restore_from: Option<String>,
    },
    /// The deployment's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print this node's certificate signing request (to send to the CA).
    #[command(after_help = "Examples:
  ferry csr --data-dir /var/lib/ferry --out gasa.csr
  ferry csr --renew --out gasa-renew.csr    # same key, so the same node id")]
    Csr {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Renew the installed certificate: the request names the node as
        /// its certificate does, with the same key (so the same node id).
        #[arg(long)]
        renew: bool,
    },
    /// Certificates of this node.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Put a revocation made by `ferry ca revoke` into the log: this node
    /// refuses the revoked node from now on, and the revocation travels to
    /// every site like any event. Prints `origin:seq`.
    #[command(after_help = "Examples:
  ferry revoke --data-dir /var/lib/ferry --file mule-3.revocation    # at the hub")]
    Revoke {
        /// The file `ferry ca revoke` wrote.
        #[arg(long)]
        file: PathBuf,
    },
    /// Append events. Prints `origin:seq` for each, once it is durable.
    #[command(after_help = "Examples:
  ferry push '{\"type\":\"vitals\",\"pulse\":80}' --topic vitals --priority urgent
  ferry push --file scan.jpg --topic imaging           # the whole file is one event
  generate-events | ferry push --topic visits          # one JSON document per line
  ferry push --idempotency-key visit-4411 '{\"visit\":4411}'   # safe to retry")]
    Push(PushArgs),
    /// Print stored events.
    #[command(after_help = "Examples:
  ferry log --limit 20
  ferry log --json --origin NODE_ID.EPOCH --after 100
  ferry log --raw --id NODE_ID.EPOCH:7 > payload.bin   # the exact bytes written")]
    Log(LogArgs),
    /// What this node holds and whom it has synced with.
    #[command(after_help = "Examples:\n  ferry status --data-dir /var/lib/ferry\n  ferry status --json | jq .events")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Known peers: role, address, how found, connection state, last sync,
    /// and how many events each side lacks.
    #[command(after_help = "Examples:\n  ferry peers\n  ferry peers --json")]
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Sync once with a peer, then exit (0 only if the session completed).
    #[command(after_help = "Examples:
  ferry sync --peer hub.example.org          # port 7700 unless given
  ferry sync --peer 10.0.0.5:7700 --json")]
    Sync {
        /// The peer's address, HOST or HOST:PORT (port 7700 if not given).
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
    #[command(after_help = "Examples:
  ferry run --data-dir /var/lib/ferry
  ferry run --peer hub.example.org --policy role
  ferry run --api-listen 0.0.0.0:7701    # needs the token in DATA_DIR/api.token
  FERRY_LOG=info FERRY_LOG_FORMAT=json ferry run")]
    Run(RunArgs),
    /// Keyed records: write, read and resolve versions through the running daemon.
    #[command(subcommand)]
    Record(RecordCommand),
    /// Maintenance of the write-ahead log.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  ferry completions bash > /etc/bash_completion.d/ferry
  ferry completions zsh > \"${fpath[1]}/_ferry\"
  ferry completions fish > ~/.config/fish/completions/ferry.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, or write one per command into a directory.
    #[command(after_help = "Examples:
  ferry man | man -l -
  ferry man --dir /usr/local/share/man/man1")]
    Man {
        /// Write ferry.1 and one page per command here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the deployment CA.
    #[command(after_help = "Examples:\n  ferry ca init --ca-dir ./ca --name bhutan-east")]
    Init {
        #[arg(long)]
        ca_dir: PathBuf,
        /// Name of the deployment, e.g. `bhutan-east`.
        #[arg(long)]
        name: String,
    },
    /// Sign a node's CSR (a new node's, or a renewal's), giving it a role.
    /// Prints the certificate bundle.
    #[command(after_help = "Examples:
  ferry ca sign --ca-dir ./ca --csr gasa.csr --role clinic --out gasa.pem
  ferry ca sign --ca-dir ./ca --csr gasa-renew.csr --role clinic --days 1826 --out gasa.pem")]
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
        /// Days the certificate is valid (five years unless given).
        #[arg(long, default_value_t = crate::pki::NODE_CERT_DAYS)]
        days: u32,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign and install in one step, for a node whose data directory is here.
    #[command(after_help = "Examples:\n  ferry ca enroll --ca-dir ./ca --data-dir /var/lib/ferry --role hub")]
    Enroll {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        role: Role,
        /// Days the certificate is valid (five years unless given).
        #[arg(long, default_value_t = crate::pki::NODE_CERT_DAYS)]
        days: u32,
    },
    /// Revoke a node: writes a revocation signed by the CA, to put into
    /// the log at any node (`ferry revoke --file`, usually at the hub).
    #[command(after_help = "Examples:
  ferry ca revoke --ca-dir ./ca --node jfj7-c0ev-... --reason 'mule stolen' --out mule-3.revocation")]
    Revoke {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The node id, as `ferry status` or `ferry init` printed it.
        #[arg(long)]
        node: ferry_proto::NodeId,
        #[arg(long, default_value = "")]
        reason: String,
        /// Where to write the revocation (binary).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Install the bundle `ferry ca sign` produced.
    #[command(after_help = "Examples:\n  ferry cert install --data-dir /var/lib/ferry --cert gasa.pem")]
    Install {
        #[arg(long)]
        cert: PathBuf,
    },
    /// Put a renewed certificate (the bundle `ferry ca sign` produced) into
    /// the log: it travels like any event and the node it is for installs
    /// it on arrival, from its next start on. Run it at a hub, whose events
    /// every clinic receives. Prints the event's id (`ORIGIN:SEQ`).
    #[command(after_help = "Examples:
  ferry csr --renew --data-dir /var/lib/ferry --out gasa.csr      # at the clinic
  ferry ca sign --ca-dir ./ca --csr gasa.csr --role clinic --out gasa.pem
  ferry cert publish --data-dir /var/lib/ferry-hub --file gasa.pem  # at the hub")]
    Publish {
        #[arg(long)]
        file: PathBuf,
    },
}

/// `ferry record ...`: every one goes through the daemon's local API.
#[derive(Subcommand)]
pub enum RecordCommand {
    /// Write a new version of a record. Prints the version (`ORIGIN:SEQ`).
    #[command(after_help = "Examples:
  ferry record put patients p-17 '{\"name\":\"Dorji\",\"village\":\"Gasa\"}'
  ferry record put patients p-17 --file p17.json --if-match NODE_ID.EPOCH:42
  ferry record put patients p-17 --delete")]
    Put {
        collection: String,
        key: String,
        /// The value (or use --file, or --delete).
        value: Option<String>,
        /// Read the value from this file, whatever bytes it holds.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Write a tombstone instead of a value.
        #[arg(long, conflicts_with_all = ["value", "file"])]
        delete: bool,
        /// Only if the current version is this one (else exit 1, nothing written).
        #[arg(long)]
        if_match: Option<String>,
    },
    /// Print a record's current value; concurrent versions are listed on stderr.
    #[command(after_help = "Examples:\n  ferry record get patients p-17\n  ferry record get patients p-17 --json")]
    Get {
        collection: String,
        key: String,
        /// The whole answer as JSON: version, value, concurrent versions.
        #[arg(long)]
        json: bool,
    },
    /// Page through a collection's current values.
    #[command(
        after_help = "Examples:\n  ferry record list patients\n  ferry record list patients --after CURSOR --limit 500 --json"
    )]
    List {
        collection: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Records edited concurrently and not yet resolved, oldest first.
    #[command(after_help = "Examples:\n  ferry record conflicts\n  ferry record conflicts --json")]
    Conflicts {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Every version of a record: where and when it was written.
    #[command(after_help = "Examples:\n  ferry record history patients p-17")]
    History {
        collection: String,
        key: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum WalCommand {
    /// Re-encrypt every segment under a new key (resumes if interrupted).
    #[command(after_help = "Examples:\n  ferry wal rekey --data-dir /var/lib/ferry    # with the daemon stopped")]
    Rekey,
}

#[derive(Args)]
pub struct PushArgs {
    /// The payload. Without it, `--file`, or JSON lines on standard input.
    pub payload: Option<String>,
    /// Read one payload from this file: the whole file is one event.
    #[arg(long, conflicts_with = "payload")]
    pub file: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    pub topic: String,
    /// urgent, normal or bulk.
    #[arg(long, default_value = "normal")]
    pub priority: ferry_proto::Priority,
    /// A key naming this write: pushing again with the same key writes
    /// nothing and prints what the first push printed.
    #[arg(long)]
    pub idempotency_key: Option<String>,
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
    /// Only this event, `ORIGIN:SEQ`.
    #[arg(long, conflicts_with_all = ["origin", "after"])]
    pub id: Option<String>,
    /// One JSON object per event; JSON payloads appear verbatim.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// The payloads' exact bytes, one after another with nothing between
    /// (use with `--id` or `--limit 1` for a single payload).
    #[arg(long)]
    pub raw: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// UDP address to listen on (default from config, 0.0.0.0:7700).
    #[arg(long, env = "FERRY_LISTEN")]
    pub listen: Option<String>,
    /// Peers to keep in sync with, HOST or HOST:PORT (port 7700 if not
    /// given); adds to config.
    #[arg(long, env = "FERRY_PEERS", value_delimiter = ',')]
    pub peer: Vec<String>,
    #[arg(long, value_enum, env = "FERRY_POLICY")]
    pub policy: Option<Policy>,
    /// Seconds between rounds with a connected peer.
    #[arg(long, env = "FERRY_SYNC_INTERVAL")]
    pub interval: Option<u64>,
    /// Seconds of silence after which a WAN connection sends a keep-alive
    /// (default from config, else 25): shorter than the NAT's UDP timeout.
    #[arg(long, env = "FERRY_KEEP_ALIVE")]
    pub keep_alive: Option<u64>,
    /// Cap in kbit/s on what this node sends to peers (default from config: none).
    #[arg(long, env = "FERRY_BANDWIDTH_KBPS")]
    pub bandwidth_kbps: Option<u64>,
    /// TCP address of the local HTTP API (default 127.0.0.1:7701). Any
    /// address but loopback needs the token in DATA_DIR/api.token.
    #[arg(long, env = "FERRY_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Largest request body the API takes, in bytes (default 4 MiB).
    #[arg(long, env = "FERRY_API_MAX_BODY_BYTES")]
    pub api_max_body_bytes: Option<usize>,
    /// Neither advertise nor look for peers on the LAN (mDNS).
    #[arg(long, env = "FERRY_NO_MDNS")]
    pub no_mdns: bool,
    /// Interfaces mDNS may use, e.g. eth0 (default from config: all but loopback).
    #[arg(long = "mdns-interface", env = "FERRY_MDNS_INTERFACES", value_delimiter = ',')]
    pub mdns_interfaces: Vec<String>,
}

/// Whether log lines on stderr may carry colour: only on a terminal, and
/// never when `NO_COLOR` is set to anything (https://no-color.org).
pub fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Logs to stderr, warnings only unless `--log` / `FERRY_LOG` says more.
pub fn init_logging(cli: &Cli) {
    // Directives of targets and levels (`info`, `ferry=debug,quinn=warn`):
    // `Targets`, not `EnvFilter`, whose span and field matching brings a
    // regex engine into the binary.
    let filter = cli.log.as_deref().unwrap_or("warn");
    let filter: Targets = filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::WARN));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Text => builder.with_ansi(colour_allowed()).finish().with(filter).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(filter)
            .try_init(),
    };
}
