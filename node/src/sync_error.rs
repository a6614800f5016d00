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
