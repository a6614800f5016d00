//! The ferry node: identity and PKI, QUIC endpoint, sync sessions, daemon
//! and CLI. The binary is a thin `main` over this library, which tests use.

pub mod api;
pub mod budget;
pub mod cli;
pub mod commands;
pub mod congestion;
pub mod ctx;
pub mod daemon;
pub mod datadir;
pub mod demo;
pub mod driver;
pub mod link;
pub mod netwatch;
pub mod node;
pub mod peers;
pub mod pki;
pub mod progress;
pub mod records;
pub mod status;
pub mod store;
pub mod tls;
pub mod transport;
