//! The ferry node: identity and PKI, the QUIC driver of the sync core
//! (`ferry-sync`), the daemon, the local API and the CLI. The binary is a
//! thin `main` over this library; tests use its public modules, and the
//! rest is internal.

pub mod api;
pub(crate) mod budget;
pub mod cli;
pub mod commands;
pub(crate) mod congestion;
pub(crate) mod ctx;
pub mod daemon;
pub mod datadir;
pub(crate) mod demo;
pub(crate) mod driver;
pub(crate) mod link;
pub mod logauth;
pub(crate) mod netwatch;
pub mod node;
pub(crate) mod peers;
pub mod pki;
pub(crate) mod progress;
pub(crate) mod records;
pub mod renewal;
pub mod revocation;
pub(crate) mod silence;
pub(crate) mod status;
pub(crate) mod store;
pub mod sync_error;
pub mod tls;
pub mod transport;
