//! ECDSA P-256 heads with ring, as a node signs with its rcgen key: shared
//! by the merkle tests and the auth-cost example.

use ferry_proto::merkle::{HeadKeys, HeadSigner};
use ferry_proto::NodeId;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use std::collections::HashMap;

pub struct Key {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Key {
    pub fn generate() -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key generation");
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("own PKCS#8");
        Key { pair, rng }
    }

    pub fn public(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }
}

impl HeadSigner for Key {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&self.rng, message)
            .expect("ECDSA signing")
            .as_ref()
            .to_vec()
    }
}

/// Public keys by node, as a node would take them from certificates.
#[derive(Default)]
pub struct Keys(pub HashMap<NodeId, Vec<u8>>);

impl HeadKeys for Keys {
    fn verify(&self, node: &NodeId, message: &[u8], signature: &[u8]) -> bool {
        self.0.get(node).is_some_and(|k| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k)
                .verify(message, signature)
                .is_ok()
        })
    }
}
