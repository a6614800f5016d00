//! Stand-in signatures for the simulator and tests: SHA-256 of a node's id,
//! a secret and the message. The real ones are ECDSA P-256 with the node's
//! key (`node/src/logauth.rs`); these only need to be unforgeable without
//! the secret within one simulated deployment, and cost next to nothing.

use ferry_proto::merkle::{HeadKeys, HeadSigner, MAX_SIGNATURE_LEN};
use ferry_proto::NodeId;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// The secret every honest node of a stand-in deployment signs with.
pub const HONEST: &[u8] = b"honest";

/// A node's stand-in key.
pub struct StandInKey {
    pub node: NodeId,
    pub secret: &'static [u8],
}

impl HeadSigner for StandInKey {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        Sha256::new()
            .chain_update(self.node.0)
            .chain_update(self.secret)
            .chain_update(message)
            .finalize()
            .to_vec()
    }
}

/// The stand-in keys one node knows: its own, then those it learns from
/// credentials, as a node learns them from certificates. A credential is
/// the node's id behind a fixed prefix: anyone can make one, which is
/// fine here, since a stand-in signature needs the honest secret anyway;
/// what the simulator checks is that credentials reach every node that
/// must verify a writer's heads.
pub struct StandInKeys {
    /// `None`: knows every node's key (tests that do not follow keys).
    known: Option<Mutex<BTreeSet<NodeId>>>,
}

const CREDENTIAL: &[u8] = b"stand-in certificate of ";

/// A node's stand-in credential: what a handshake would show of it.
pub fn credential(node: NodeId) -> Vec<u8> {
    [CREDENTIAL, &node.0].concat()
}

impl StandInKeys {
    pub fn new(own: NodeId) -> Self {
        StandInKeys {
            known: Some(Mutex::new(BTreeSet::from([own]))),
        }
    }

    pub fn everyone() -> Self {
        StandInKeys { known: None }
    }

    fn knows(&self, node: &NodeId) -> bool {
        self.known
            .as_ref()
            .is_none_or(|k| k.lock().unwrap_or_else(|p| p.into_inner()).contains(node))
    }
}

impl HeadKeys for StandInKeys {
    fn verify(&self, node: &NodeId, message: &[u8], signature: &[u8]) -> bool {
        let key = StandInKey {
            node: *node,
            secret: HONEST,
        };
        self.knows(node) && signature.len() <= MAX_SIGNATURE_LEN && key.sign(message) == signature
    }

    fn credential(&self, node: &NodeId) -> Option<Vec<u8>> {
        self.knows(node).then(|| credential(*node))
    }

    fn learn(&self, credential: &[u8]) -> Result<NodeId, String> {
        let id = credential
            .strip_prefix(CREDENTIAL)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(NodeId)
            .ok_or("not a stand-in credential")?;
        if let Some(k) = &self.known {
            k.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        }
        Ok(id)
    }
}
