//! rustls and quinn configuration: TLS 1.3 only, ALPN `ferry/5`, mutual
//! authentication against the deployment CA and nothing else.

use crate::pki::Identity;
use crate::pki::{self, CertInfo};
use crate::revocation::Revocations;
use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::sync::Arc;

use crate::transport::TransportProfile;

/// Resumable sessions a node keeps for peers that dial it (two tickets per
/// full handshake, about 1 KiB each).
const SERVER_SESSIONS: usize = 1024;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a node needs to speak TLS: its certificate, key and the CA.
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    roots: Arc<RootCertStore>,
    /// This deployment's CA, named for messages about foreign peers.
    ca: Arc<str>,
    /// Revoked nodes: refused at the handshake, whatever their certificate says.
    revocations: Arc<Revocations>,
}

impl TlsIdentity {
    pub fn from_identity(id: &Identity) -> Result<Self> {
        let (Some(cert_pem), Some(ca_pem)) = (&id.cert_pem, &id.ca_pem) else {
            bail!("this node has no certificate yet: enrol it with `ferry ca enroll` or `ferry csr` / `ferry ca sign` / `ferry cert install`");
        };
        let chain = pki::parse_pem_certs(cert_pem)?;
        let mut roots = RootCertStore::empty();
        let cas = pki::parse_pem_certs(ca_pem)?;
        let ca = pki::describe_ca(&cas[0]);
        let revocations = Arc::new(Revocations::new(cas[0].to_vec()));
        for ca in cas {
            roots.add(ca).context("ca.crt is not a usable CA certificate")?;
        }
        Ok(TlsIdentity {
            chain,
            key_der: id.key.serialize_der(),
            roots: Arc::new(roots),
            ca: ca.into(),
            revocations,
        })
    }

    /// The revocations this node holds; a node's parts share this one.
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    /// A secret for QUIC stateless resets, derived from the node's key so
    /// that it is the same after a restart.
    pub fn reset_secret(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"ferry stateless reset key v1");
        h.update(&self.key_der);
        h.finalize().into()
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let verifier = Arc::new(Explained {
            inner: WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
                .build()
                .context("cannot build the client certificate verifier")?,
            ours: self.ca.clone(),
            revocations: self.revocations.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key())?;
        cfg.alpn_protocols = vec![ferry_proto::ALPN.to_vec()];
        // 0-RTT: QUIC allows only 0 or u32::MAX here. rustls accepts early
        // data only with stateful resumption, where each ticket is taken from
        // this cache on first use, so a replayed ClientHello cannot resume.
        cfg.max_early_data_size = u32::MAX;
        cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SERVER_SESSIONS);
        Ok(cfg)
    }

    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let verifier = Arc::new(Explained {
            inner: rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
                .build()
                .context("cannot build the server certificate verifier")?,
            ours: self.ca.clone(),
            revocations: self.revocations.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key())?;
        cfg.alpn_protocols = vec![ferry_proto::ALPN.to_vec()];
        cfg.enable_early_data = true;
        // Every peer presents the same server name, so tickets are kept per
        // dialled address: one client config, and so one store, per peer.
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(4);
        Ok(cfg)
    }

    pub fn quinn_server(&self, profile: &TransportProfile) -> Result<quinn::ServerConfig> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.server_config()?)?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(Arc::new(profile.quinn()));
        Ok(cfg)
    }

    pub fn quinn_client(&self, profile: &TransportProfile) -> Result<quinn::ClientConfig> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.client_config()?)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(profile.quinn()));
        Ok(cfg)
    }
}

/// Who is on the other end of an established connection. The handshake has
/// already verified the chain to our CA; this reads what the cert says.
pub fn peer_cert(conn: &quinn::Connection) -> Result<CertInfo> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| anyhow!("peer presented no certificate"))?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| anyhow!("peer identity is not an X.509 chain"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| anyhow!("peer presented an empty certificate chain"))?;
    pki::cert_info(leaf)
}

/// The peer's certificate (DER), as the handshake verified it.
pub fn peer_cert_der(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| c.to_vec())
}

/// Checks that `cert` is signed by `ca` (used when installing a certificate).
pub fn verify_chain(cert: &CertificateDer<'static>, ca: &CertificateDer<'static>) -> Result<()> {
    verify_chain_at(cert, ca, UnixTime::now().as_secs())
}

/// `verify_chain` as of `unix_secs`.
pub fn verify_chain_at(cert: &CertificateDer<'static>, ca: &CertificateDer<'static>, unix_secs: u64) -> Result<()> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .context("the CA certificate in the bundle is not usable")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    verifier
        .verify_client_cert(
            cert,
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(unix_secs)),
        )
        .map_err(|e| anyhow!("the certificate does not chain to the CA in the bundle: {e}"))?;
    Ok(())
}

/// WebPKI verification, plus the deployment's revocations (which travel in
/// the log, not as CRLs), and a certificate from another CA is reported as
/// what it almost always is: a node of another deployment, with both CAs
/// named, rather than rustls' bare `UnknownIssuer`.
#[derive(Debug)]
struct Explained<V: ?Sized> {
    inner: Arc<V>,
    ours: Arc<str>,
    revocations: Arc<Revocations>,
}

struct ForeignPeer(String);

/// rustls prints the reason of a refused certificate with `{:?}`: the
/// message should read as a sentence there too.
impl std::fmt::Debug for ForeignPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for ForeignPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ForeignPeer {}

impl<V: ?Sized> Explained<V> {
    fn explain(&self, e: rustls::Error, leaf: &CertificateDer<'_>) -> rustls::Error {
        use rustls::{CertificateError, Error, OtherError};
        match e {
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                let message = format!(
                    "the peer is a node of another deployment: its certificate was issued by CA {}, and this node's deployment CA is {}",
                    pki::describe_issuer(leaf),
                    self.ours
                );
                tracing::warn!("{message}");
                Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(ForeignPeer(message)))))
            }
            e => e,
        }
    }

    /// Refuses a certificate that chains to our CA but whose node is revoked.
    fn not_revoked(&self, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let Ok(info) = pki::cert_info(leaf) else {
            return Ok(()); // WebPKI accepted it; nothing of ours to check
        };
        if self.revocations.is_revoked(&info.node_id) {
            self.revocations.refused_handshake();
            tracing::warn!(peer = %info.node_id, name = %info.name, "refused a peer: its certificate is revoked by the deployment CA");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(())
    }
}

impl rustls::client::danger::ServerCertVerifier for Explained<rustls::client::WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| self.explain(e, end_entity))
            .and_then(|ok| self.not_revoked(end_entity).map(|()| ok))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl rustls::server::danger::ClientCertVerifier for Explained<dyn rustls::server::danger::ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| self.explain(e, end_entity))
            .and_then(|ok| self.not_revoked(end_entity).map(|()| ok))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
