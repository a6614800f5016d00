//! Revocations: a node's certificate withdrawn by the deployment CA, as an
//! event that replicates like any other (over 2G, the LAN, or by mule).
//!
//! `ferry ca revoke` signs one with the CA key (ECDSA P-256, as the CA's
//! certificates are); every node checks the signature against the CA
//! certificate it already holds, so a relay cannot forge or alter one.
//! Invalid ones are stored like any event (they are part of their origin's
//! log) but never acted on: a warning and `ferry_revocations_invalid_total`.
//!
//! Encoding (CBOR, ciborium): a map `{"revocation": bytes, "sig": bytes}`;
//! `revocation` is the CBOR of `Body`, and `sig` an ASN.1 ECDSA signature
//! over `SIGNING_CONTEXT || revocation`.

use crate::pki;
use anyhow::{bail, Context, Result};
use ferry_proto::{Event, Hlc, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;

/// The reserved topic revocations travel on.
pub const TOPIC: &str = "ferry.revocation";

/// Signatures over revocations cannot be mistaken for any other signature
/// made with the CA key.
const SIGNING_CONTEXT: &[u8] = b"ferry revocation v1\0";

/// Where the CA keeps what it revoked, one line each (serial, node, time,
/// reason): serials count up from it, and `ferry ca sign` refuses those nodes.
pub const CA_LEDGER: &str = "revoked.txt";

/// What the CA signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    v: u8,
    /// The CA's fingerprint, as `ferry ca init` printed it.
    ca: String,
    node: String,
    serial: u64,
    /// The CA's wall clock when it signed: events the node stamped later
    /// are refused.
    revoked_at_ms: u64,
    reason: String,
}

/// A revocation whose signature checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Revocation {
    pub node: NodeId,
    pub serial: u64,
    pub revoked_at_ms: u64,
    pub reason: String,
    /// The CA that signed it (its fingerprint).
    pub ca: NodeId,
}

impl Revocation {
    /// The last timestamp accepted from the revoked node.
    pub fn cutoff(&self) -> Hlc {
        Hlc::new(self.revoked_at_ms, u16::MAX)
    }
}

/// `ferry ca revoke`: signs a revocation of `node` with the CA in `ca_dir`
/// and notes it in the CA's ledger. Returns the bytes to hand to
/// `ferry revoke --file`.
pub fn sign(ca_dir: &Path, node: NodeId, reason: &str) -> Result<(Vec<u8>, Revocation)> {
    let ca_key =
        rcgen::KeyPair::from_pem(&pki::read(&ca_dir.join("ca.key"))?).context("ca.key is not a valid private key")?;
    let ca_pem = pki::read(&ca_dir.join("ca.crt"))?;
    let ca_der = pki::parse_pem_certs(&ca_pem)?;
    let ca = pki::cert_info(&ca_der[0])?.node_id;
    let ledger = ca_dir.join(CA_LEDGER);
    let previous = std::fs::read_to_string(&ledger).unwrap_or_default();
    let serial = previous.lines().filter(|l| !l.trim().is_empty()).count() as u64 + 1;
    let revoked_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the CA's clock is before 1970")?
        .as_millis() as u64;
    let body = Body {
        v: 1,
        ca: ca.to_string(),
        node: node.to_string(),
        serial,
        revoked_at_ms,
        reason: reason.to_string(),
    };
    let mut body_bytes = Vec::new();
    ciborium::into_writer(&body, &mut body_bytes).context("could not encode the revocation")?;
    let rng = ring::rand::SystemRandom::new();
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &ca_key.serialize_der(),
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("ca.key is not an ECDSA P-256 key, which revocations are signed with: {e}"))?;
    let sig = signer
        .sign(&rng, &[SIGNING_CONTEXT, &body_bytes].concat())
        .map_err(|_| anyhow::anyhow!("could not sign the revocation"))?;
    let envelope = ciborium::Value::Map(vec![
        ("revocation".into(), ciborium::Value::Bytes(body_bytes)),
        ("sig".into(), ciborium::Value::Bytes(sig.as_ref().to_vec())),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&envelope, &mut out).context("could not encode the revocation")?;
    let line = format!(
        "{serial}\t{node}\t{revoked_at_ms}\t{}\n",
        reason.replace(['\n', '\t'], " ")
    );
    std::fs::write(&ledger, previous + &line).with_context(|| format!("could not write {}", ledger.display()))?;
    Ok((
        out,
        Revocation {
            node,
            serial,
            revoked_at_ms,
            reason: reason.to_string(),
            ca,
        },
    ))
}

/// Whether the CA in `ca_dir` has revoked `node` (for `ferry ca sign`).
pub fn revoked_at_ca(ca_dir: &Path, node: &NodeId) -> bool {
    let ledger = std::fs::read_to_string(ca_dir.join(CA_LEDGER)).unwrap_or_default();
    let node = node.to_string();
    ledger.lines().any(|l| l.split('\t').nth(1) == Some(node.as_str()))
}

/// Checks a revocation's signature against the deployment CA (DER).
pub fn verify(bytes: &[u8], ca_der: &[u8]) -> Result<Revocation> {
    let envelope: ciborium::Value = ciborium::from_reader(bytes).context("not a revocation: the bytes are not CBOR")?;
    let field = |name: &str| -> Result<Vec<u8>> {
        envelope
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some(name)))
            .and_then(|(_, v)| v.as_bytes().cloned())
            .with_context(|| format!("not a revocation: no '{name}' field"))
    };
    let (body_bytes, sig) = (field("revocation")?, field("sig")?);
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der).context("the CA certificate is not valid X.509")?;
    let ours = NodeId::from_spki(ca.public_key().raw);
    let key = &ca.public_key().subject_public_key.data;
    let checked = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(&[SIGNING_CONTEXT, &body_bytes].concat(), &sig);
    let body: Option<Body> = ciborium::from_reader(body_bytes.as_slice()).ok();
    if checked.is_err() {
        match body {
            Some(b) if b.ca != ours.to_string() => bail!(
                "the revocation of {} was signed by CA {}, not by this deployment's CA {ours}",
                b.node,
                b.ca
            ),
            Some(b) => bail!(
                "the signature on the revocation of {} does not verify with this deployment's CA {ours}: it was altered or forged",
                b.node
            ),
            None => bail!("the revocation's signature does not verify with this deployment's CA {ours}"),
        }
    }
    let body = body.context("the revocation is signed but its body is not readable; is this ferry too old?")?;
    if body.v != 1 {
        bail!("revocation version {} is not known to this ferry; upgrade it", body.v);
    }
    let node = body
        .node
        .parse()
        .map_err(|e| anyhow::anyhow!("the revocation names no valid node id: {e}"))?;
    Ok(Revocation {
        node,
        serial: body.serial,
        revoked_at_ms: body.revoked_at_ms,
        reason: body.reason,
        ca: ours,
    })
}

/// The revocations a node holds, shared by its TLS verifiers, its driver
/// and its API.
#[derive(Debug)]
pub struct Revocations {
    ca_der: Vec<u8>,
    held: RwLock<BTreeMap<NodeId, Revocation>>,
    /// Revocation events that did not verify.
    invalid: AtomicU64,
    /// Handshakes refused because the peer's certificate is revoked.
    refused_handshakes: AtomicU64,
    /// Events refused because a revoked node wrote them after its
    /// revocation (the sync core counts; the driver copies it here).
    events_refused: AtomicU64,
}

impl Revocations {
    pub fn new(ca_der: Vec<u8>) -> Self {
        Revocations {
            ca_der,
            held: Default::default(),
            invalid: AtomicU64::new(0),
            refused_handshakes: AtomicU64::new(0),
            events_refused: AtomicU64::new(0),
        }
    }

    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.held.read().unwrap_or_else(|p| p.into_inner()).contains_key(node)
    }

    pub fn list(&self) -> Vec<Revocation> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn invalid(&self) -> u64 {
        self.invalid.load(Relaxed)
    }

    pub fn refused_handshakes(&self) -> u64 {
        self.refused_handshakes.load(Relaxed)
    }

    pub fn events_refused(&self) -> u64 {
        self.events_refused.load(Relaxed)
    }

    /// Records the core's count; returns the one before.
    pub(crate) fn set_events_refused(&self, n: u64) -> u64 {
        self.events_refused.swap(n, Relaxed)
    }

    pub(crate) fn refused_handshake(&self) {
        self.refused_handshakes.fetch_add(1, Relaxed);
    }

    /// Checks a revocation (the payload of an event on `TOPIC`).
    pub fn verify(&self, bytes: &[u8]) -> Result<Revocation> {
        verify(bytes, &self.ca_der)
    }

    /// Takes in a held event: a valid revocation is kept (the earliest per
    /// node) and returned if it changed anything; an invalid one is logged
    /// and counted. Events on other topics are ignored.
    pub fn observe(&self, e: &Event) -> Option<Revocation> {
        if e.topic != TOPIC {
            return None;
        }
        match self.verify(&e.payload) {
            Ok(r) => self.hold(r),
            Err(err) => {
                self.invalid.fetch_add(1, Relaxed);
                tracing::warn!(event = %format!("{}:{}", e.origin, e.seq), "ignoring an invalid revocation: {err:#}");
                None
            }
        }
    }

    /// Keeps a verified revocation; returns it if it is news.
    pub fn hold(&self, r: Revocation) -> Option<Revocation> {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        match held.get(&r.node) {
            Some(h) if h.revoked_at_ms <= r.revoked_at_ms => None,
            _ => {
                tracing::warn!(node = %r.node, serial = r.serial, reason = %r.reason, "node revoked by the deployment CA");
                held.insert(r.node, r.clone());
                Some(r)
            }
        }
    }

    /// Reads the revocations a WAL holds. They are written as urgent
    /// events, so only urgent events are read: a small part of the log.
    pub fn rebuild(&self, wal: &ferry_wal::Wal) -> Result<usize> {
        let mut n = 0;
        for (origin, set) in wal.classes().urgent {
            for &(first, last) in set.ranges() {
                for e in wal.read_range(&origin, first, last, usize::MAX)? {
                    n += usize::from(self.observe(&e).is_some());
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: Vec<u8>) -> Event {
        Event {
            origin: ferry_proto::Origin {
                node: NodeId([1; 16]),
                epoch: 1,
            },
            seq: 1,
            hlc: Hlc::new(1, 0),
            topic: TOPIC.into(),
            priority: ferry_proto::Priority::Urgent,
            payload,
        }
    }

    #[test]
    fn only_the_deployment_cas_unaltered_revocations_count() {
        let tmp = tempfile::tempdir().unwrap();
        let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
        pki::ca_init(&ours, "ours").unwrap();
        pki::ca_init(&theirs, "theirs").unwrap();
        let ca_der = |dir: &Path| pki::parse_pem_certs(&pki::read(&dir.join("ca.crt")).unwrap()).unwrap()[0].to_vec();
        let victim = NodeId([7; 16]);
        let (good, rev) = sign(&ours, victim, "stolen").unwrap();
        assert_eq!(rev.serial, 1);
        assert!(revoked_at_ca(&ours, &victim));
        let (forged, _) = sign(&theirs, victim, "forged").unwrap();
        // Altered: the same signature over another reason.
        let mut tampered = good.clone();
        let at = tampered.windows(6).position(|w| w == b"stolen").unwrap();
        tampered[at..at + 6].copy_from_slice(b"stolex");

        let held = Revocations::new(ca_der(&ours));
        assert!(held.observe(&event(forged.clone())).is_none());
        let err = held.verify(&forged).unwrap_err().to_string();
        assert!(err.contains("not by this deployment's CA"), "{err}");
        assert!(held.observe(&event(tampered.clone())).is_none());
        let err = held.verify(&tampered).unwrap_err().to_string();
        assert!(err.contains("altered or forged"), "{err}");
        assert!(held.observe(&event(b"garbage".to_vec())).is_none());
        assert_eq!(held.invalid(), 3);
        assert!(!held.is_revoked(&victim));
        assert_eq!(held.observe(&event(good.clone())), Some(rev.clone()));
        assert!(held.is_revoked(&victim));
        assert_eq!(held.observe(&event(good)), None, "news only once");
        let (_, second) = sign(&ours, victim, "again").unwrap();
        assert_eq!(second.serial, 2);
    }
}
