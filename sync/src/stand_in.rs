//! Stand-in signatures for the simulator and tests: SHA-256 of a node's id,
//! a secret and the message. The real ones are ECDSA P-256 with the node's
//! key (`node/src/logauth.rs`); these only need to be unforgeable without
//! the secret within one simulated deployment, and cost next to nothing.

use ferry_proto::merkle::{HeadKeys, HeadSigner, MAX_SIGNATURE_LEN};
use ferry_proto::NodeId;
use sha2::{Digest, Sha256};

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

/// Every node's stand-in public key: a signature is good if it is the
/// node's own with the honest secret.
pub struct StandInKeys;

impl HeadKeys for StandInKeys {
    fn verify(&self, node: &NodeId, message: &[u8], signature: &[u8]) -> bool {
        let key = StandInKey {
            node: *node,
            secret: HONEST,
        };
        signature.len() <= MAX_SIGNATURE_LEN && key.sign(message) == signature
    }
}
