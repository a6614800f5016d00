//! The node's side of log authentication (`ferry_proto::merkle`): heads
//! signed with the node's own key, and other writers' public keys taken from
//! their certificates, which travel before the heads they verify (see "Log
//! authentication" in docs/architecture.md).

use anyhow::{Context, Result};
use ferry_proto::merkle::{HeadKeys, HeadSigner};
use ferry_proto::NodeId;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;

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

/// Public keys of writers, by node id, from certificates the deployment CA
/// signed. A node id is the hash of its key (`NodeId::from_spki`), so a
/// certificate can only give its own node's key. Certificates learned from
/// peers are kept in the data directory (`writers/`), so a relay can pass
/// them on after a restart.
pub struct WriterKeys {
    ca: Vec<u8>,
    dir: Option<PathBuf>,
    known: RwLock<HashMap<NodeId, Writer>>,
    /// Events refused since start because they did not prove.
    unproved: AtomicU64,
}

struct Writer {
    public: Vec<u8>,
    cert: Vec<u8>,
}

fn parse(der: &[u8]) -> Result<(NodeId, Writer)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).context("certificate is not valid X.509")?;
    let spki = cert.public_key();
    let writer = Writer {
        public: spki.subject_public_key.data.to_vec(),
        cert: der.to_vec(),
    };
    Ok((NodeId::from_spki(spki.raw), writer))
}

impl WriterKeys {
    /// The keys of certificates kept in `dir`, checked against `ca` (DER)
    /// again; a file that fails is skipped with a warning.
    pub fn open(ca: &[u8], dir: Option<PathBuf>) -> Self {
        let keys = WriterKeys {
            ca: ca.to_vec(),
            dir,
            known: RwLock::new(HashMap::new()),
            unproved: AtomicU64::new(0),
        };
        let entries = keys.dir.as_ref().and_then(|d| std::fs::read_dir(d).ok());
        for entry in entries.into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "der") {
                continue;
            }
            let kept = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|der| keys.check(&der).map(|(node, w)| keys.insert(node, w)));
            if let Err(e) = kept {
                tracing::warn!("skipping the writer certificate {}: {e:#}", path.display());
            }
        }
        keys
    }

    /// Keeps the key of a certificate already verified (this node's own).
    pub fn add_verified_cert(&self, der: &[u8]) -> Result<NodeId> {
        let (node, writer) = parse(der)?;
        self.insert(node, writer);
        Ok(node)
    }

    /// Counts events refused for want of proof (`Notice::Unproved`).
    pub fn count_unproved(&self, n: u64) {
        self.unproved.fetch_add(n, Relaxed);
    }

    pub fn unproved(&self) -> u64 {
        self.unproved.load(Relaxed)
    }

    /// Whether a certificate of `node` is held.
    pub fn knows(&self, node: &NodeId) -> bool {
        self.known.read().unwrap_or_else(|p| p.into_inner()).contains_key(node)
    }

    fn insert(&self, node: NodeId, writer: Writer) {
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, writer);
    }

    /// A certificate signed by this deployment's CA. Checked at a time
    /// within its own validity: heads its writer signed stay verifiable
    /// after the certificate expires (revocation is what withdraws a key).
    fn check(&self, der: &[u8]) -> Result<(NodeId, Writer)> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).context("certificate is not valid X.509")?;
        let at = cert.validity().not_before.timestamp().saturating_add(1).max(0) as u64;
        let der = rustls::pki_types::CertificateDer::from(der.to_vec());
        let ca = rustls::pki_types::CertificateDer::from(self.ca.clone());
        crate::tls::verify_chain_at(&der, &ca, at).context("the certificate is not signed by this deployment's CA")?;
        parse(&der)
    }

    fn persist(&self, node: &NodeId, der: &[u8]) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(format!("{node}.der"));
        if path.exists() {
            return;
        }
        let kept = std::fs::create_dir_all(dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| crate::datadir::atomic_write(&path, der));
        if let Err(e) = kept {
            // Held in memory; after a restart this node learns it again
            // from the next peer that sends the writer's events.
            tracing::warn!("could not keep a writer's certificate: {e:#}");
        }
    }
}

impl HeadKeys for WriterKeys {
    fn verify(&self, node: &NodeId, message: &[u8], signature: &[u8]) -> bool {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .is_some_and(|w| {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &w.public)
                    .verify(message, signature)
                    .is_ok()
            })
    }

    fn credential(&self, node: &NodeId) -> Option<Vec<u8>> {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .map(|w| w.cert.clone())
    }

    fn learn(&self, credential: &[u8]) -> std::result::Result<NodeId, String> {
        let (node, writer) = self.check(credential).map_err(|e| format!("{e:#}"))?;
        if !self.knows(&node) {
            self.persist(&node, credential);
            self.insert(node, writer);
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::merkle::{AuthError, Known, Mode};
    use ferry_proto::{Event, Hlc, Origin, Priority, Role};
    use std::path::Path;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-logauth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A node key and its certificate from the CA in `ca_dir` (DER).
    fn enrolled(ca_dir: &Path, name: &str) -> (rcgen::KeyPair, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = crate::pki::make_csr(&key, name).unwrap();
        let pem = crate::pki::ca_sign(ca_dir, &csr, Role::Clinic, None, 30).unwrap();
        let der = crate::pki::parse_pem_certs(&pem).unwrap()[0].to_vec();
        (key, der)
    }

    fn ca(dir: &Path, name: &str) -> Vec<u8> {
        crate::pki::ca_init(dir, name).unwrap();
        let pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        crate::pki::parse_pem_certs(&pem).unwrap()[0].to_vec()
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
        let root = scratch("heads");
        let ca_der = ca(&root.join("ca"), "north");
        let (key, der) = enrolled(&root.join("ca"), "clinic-a");
        let (other_key, _) = enrolled(&root.join("ca"), "clinic-b");
        let keys = WriterKeys::open(&ca_der, None);
        let id = keys.learn(&der).unwrap();
        assert_eq!(id, crate::pki::node_id_of_key(&key));
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
        assert!(head.verify(&WriterKeys::open(&ca_der, None)).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn only_certificates_of_the_deployment_teach_a_key_and_they_are_kept() {
        let root = scratch("learn");
        let ca_der = ca(&root.join("ca"), "north");
        ca(&root.join("other-ca"), "south");
        let (_, ours) = enrolled(&root.join("ca"), "clinic-a");
        let (_, theirs) = enrolled(&root.join("other-ca"), "clinic-x");
        let kept = root.join("writers");
        let keys = WriterKeys::open(&ca_der, Some(kept.clone()));
        let err = keys.learn(&theirs).unwrap_err();
        assert!(err.contains("not signed by this deployment's CA"), "{err}");
        assert!(keys.learn(b"not a certificate").is_err());
        let id = keys.learn(&ours).unwrap();
        assert_eq!(keys.credential(&id), Some(ours.clone()));
        // After a restart the certificate is still there to pass on; a
        // file planted in the directory from another CA is not taken.
        let planted = crate::pki::cert_info(&theirs).unwrap().node_id;
        std::fs::write(kept.join(format!("{planted}.der")), &theirs).unwrap();
        let again = WriterKeys::open(&ca_der, Some(kept));
        assert!(again.knows(&id));
        assert!(!again.knows(&planted));
        let _ = std::fs::remove_dir_all(&root);
    }
}
