//! The node's side of log authentication (`ferry_proto::merkle`): heads
//! signed with the node's own key, and other writers' public keys taken from
//! their certificates. Not used by the sync yet (see "Log authentication"
//! in docs/architecture.md).

use anyhow::{Context, Result};
use ferry_proto::merkle::{HeadKeys, HeadSigner};
use ferry_proto::NodeId;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::collections::HashMap;

/// Signs this node's heads with its node key (ECDSA P-256, as rcgen made
/// it): 64-byte signatures.
pub struct NodeSigner {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl NodeSigner {
    pub fn new(key: &rcgen::KeyPair) -> Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("the node key is not an ECDSA P-256 key; log heads cannot be signed with it")?;
        Ok(NodeSigner { pair, rng })
    }
}

impl HeadSigner for NodeSigner {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self.pair.sign(&self.rng, message) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(e) => {
                // Only the system RNG failing makes ring refuse; an empty
                // signature is refused by every receiver, so nothing
                // unsigned passes for signed.
                tracing::error!("could not sign a log head (system RNG: {e}); peers will refuse it");
                Vec::new()
            }
        }
    }
}

/// Public keys of writers, by node id, from certificates the caller has
/// verified against the deployment CA. A node id is the hash of its key
/// (`NodeId::from_spki`), so a certificate can only give its own node's key.
#[derive(Default)]
pub struct WriterKeys {
    keys: HashMap<NodeId, Vec<u8>>,
}

impl WriterKeys {
    /// Keeps the key of a verified certificate (DER); returns its node id.
    pub fn add_verified_cert(&mut self, der: &[u8]) -> Result<NodeId> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).context("certificate is not valid X.509")?;
        let spki = cert.public_key();
        let node = NodeId::from_spki(spki.raw);
        self.keys.insert(node, spki.subject_public_key.data.to_vec());
        Ok(node)
    }
}

impl HeadKeys for WriterKeys {
    fn verify(&self, node: &NodeId, message: &[u8], signature: &[u8]) -> bool {
        self.keys.get(node).is_some_and(|k| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k)
                .verify(message, signature)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::merkle::{AuthError, Known, Mode};
    use ferry_proto::{Event, Hlc, Origin, Priority};

    fn node() -> (rcgen::KeyPair, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ferry-node".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (key, cert.der().to_vec())
    }

    fn event(origin: Origin, seq: u64) -> Event {
        Event {
            origin,
            seq,
            hlc: Hlc::new(1_800_000_000_000 + seq, 0),
            topic: "clinic/visit".into(),
            priority: Priority::Normal,
            payload: vec![seq as u8; 20],
        }
    }

    #[test]
    fn a_head_signed_with_the_node_key_verifies_with_its_certificate() {
        let (key, der) = node();
        let (other_key, other_der) = node();
        let mut keys = WriterKeys::default();
        let id = keys.add_verified_cert(&der).unwrap();
        assert_eq!(id, crate::pki::node_id_of_key(&key));
        keys.add_verified_cert(&other_der).unwrap();
        let origin = Origin { node: id, epoch: 1 };
        let mut log = Known::new(origin);
        for seq in 1..=10 {
            log.append(&event(origin, seq)).unwrap();
        }
        let head = log.sign_head(10, &NodeSigner::new(&key).unwrap()).unwrap();
        assert_eq!(head.signature.len(), 64);
        // A receiver checks a range against it, as a relay would send it.
        let verified = head.clone().verify(&keys).unwrap();
        let proof = log.prove(&head, Mode::Fresh, 3, 7).unwrap();
        let range: Vec<Event> = (3..=7).map(|seq| event(origin, seq)).collect();
        Known::new(origin).verify(&verified, &proof, &range).unwrap();
        // Another enrolled node cannot sign for this one.
        let forged = log.sign_head(10, &NodeSigner::new(&other_key).unwrap()).unwrap();
        assert_eq!(forged.verify(&keys), Err(AuthError::BadSignature { origin }));
        // Nor is a head of a node whose certificate was not seen accepted.
        assert!(head.verify(&WriterKeys::default()).is_err());
    }
}
