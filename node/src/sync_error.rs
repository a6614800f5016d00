//! How connecting to a peer or syncing with it can fail, as a type: the
//! daemon backs off on some and not others, the CLI says what to do, and
//! tests can tell them apart.

use ferry_proto::NodeId;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no answer from {addr} within {after:?}; is the peer running and the UDP port open?")]
    Unreachable { addr: SocketAddr, after: Duration },
    /// The handshake failed or the connection broke: a refused certificate
    /// (another deployment, an unenrolled node) reads here.
    #[error("could not connect to {addr}: {source}")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    /// The peer runs a release that speaks another protocol version: the
    /// TLS handshake found no ALPN both sides speak.
    #[error(
        "{addr} speaks another version of the ferry protocol than this node ({}): run the same ferry release on both",
        String::from_utf8_lossy(ferry_proto::ALPN)
    )]
    Version { addr: SocketAddr },
    #[error("could not start a connection to {addr}: {source}")]
    Dial {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("{addr} resumed a session of node {expected} but presents {found}")]
    WrongPeer {
        addr: SocketAddr,
        expected: NodeId,
        found: NodeId,
    },
    #[error("sync with {addr} did not complete: {reason}")]
    Incomplete { addr: SocketAddr, reason: String },
    /// Something on this node: its socket, its certificate, the peer's.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// TLS alert 120, `no_application_protocol`, as a QUIC close code.
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// Whether a handshake failed because the two ends share no ALPN, that is,
/// no version of the ferry protocol: sent by this end or the peer.
pub fn is_version_mismatch(e: &quinn::ConnectionError) -> bool {
    let alpn = quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL);
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code == alpn,
        quinn::ConnectionError::TransportError(t) => t.code == alpn,
        _ => false,
    }
}

impl SyncError {
    /// A failed handshake or a broken connection to `addr`.
    pub fn connection(addr: SocketAddr, source: quinn::ConnectionError) -> SyncError {
        if is_version_mismatch(&source) {
            SyncError::Version { addr }
        } else {
            SyncError::Connection { addr, source }
        }
    }
}
