//! The deployment's PKI: a CA made once, node keys that never leave their
//! node, certificates that bind a node's key to its name and role.

use anyhow::{bail, Context, Result};
use ferry_proto::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;

/// Every node certificate carries this DNS name; clients verify it, then
/// check the node id from the certificate's key.
pub const SERVER_NAME: &str = "ferry-node";

pub use ferry_proto::Role;

/// A node's identity as its data directory holds it.
pub struct Identity {
    pub key: KeyPair,
    pub node_id: NodeId,
    /// Present once enrolled.
    pub cert: Option<CertInfo>,
    pub cert_pem: Option<String>,
    pub ca_pem: Option<String>,
}

/// What a verified certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub node_id: NodeId,
    pub name: String,
    pub role: Option<Role>,
}

/// Reads node id, name and role from a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).context("certificate is not valid X.509")?;
    let node_id = NodeId::from_spki(cert.public_key().raw);
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string();
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .and_then(|r| r.parse().ok());
    Ok(CertInfo { node_id, name, role })
}

pub fn node_id_of_key(key: &KeyPair) -> NodeId {
    NodeId::from_spki(&key.public_key_der())
}

/// How long a node certificate is valid unless `ferry ca sign --days` says
/// otherwise: five years, long enough that a clinic visited once a year by
/// a mule is renewed at ease, short enough that a box sold off without a
/// revocation stops being trusted some day.
pub const NODE_CERT_DAYS: u32 = 5 * 365 + 1;
/// The deployment CA: twenty years, beyond any node certificate it signs.
pub const CA_CERT_DAYS: u32 = 20 * 365 + 5;
/// `ferry status` and `/metrics` warn this long before a certificate expires.
pub const EXPIRY_WARNING_DAYS: u64 = 60;

/// Valid from 1970 on purpose: a Pi without a real-time clock can boot in
/// 1970 after a power cut, and a clinic must still sync. The end is real:
/// `days` from now (revocation ends trust sooner).
fn set_validity(params: &mut CertificateParams, days: u32) {
    params.not_before = rcgen::date_time_ymd(1970, 1, 2);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(days));
}

/// When a certificate (DER) stops being valid, in Unix seconds.
pub fn not_after(der: &[u8]) -> Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).context("certificate is not valid X.509")?;
    Ok(cert.validity().not_after.timestamp())
}

pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not create {} (does it already exist?)", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))
}

/// Creates the deployment CA in `dir`: `ca.key` (keep it offline) and `ca.crt`.
pub fn ca_init(dir: &Path, deployment: &str) -> Result<CertInfo> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    if dir.join("ca.key").exists() {
        bail!("{} already holds a CA; refusing to overwrite it", dir.display());
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("ferry CA {deployment}"));
    dn.push(DnType::OrganizationName, deployment);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_CERT_DAYS);
    let cert = params.self_signed(&key)?;
    write_secret(&dir.join("ca.key"), &key.serialize_pem())?;
    std::fs::write(dir.join("ca.crt"), cert.pem())?;
    cert_info(cert.der())
}

/// A certificate signing request for the node key, with the node's name.
pub fn make_csr(key: &KeyPair, name: &str) -> Result<String> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(params.serialize_request(key)?.pem()?)
}

/// Signs a node's CSR for `days`; returns the certificate followed by the
/// CA certificate (PEM), ready for `ferry cert install`. A renewal is a CSR
/// with the same key: the node keeps its id. A node the CA revoked is not
/// signed again.
pub fn ca_sign(ca_dir: &Path, csr_pem: &str, role: Role, name: Option<&str>, days: u32) -> Result<String> {
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?).context("ca.key is not a valid private key")?;
    let ca_pem = read(&ca_dir.join("ca.crt"))?;
    let mut ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)?;
    // Node certificates name their CA by its fingerprint (the authority key
    // identifier), so a node of another deployment can be told which CA it
    // came from.
    let ca_der = parse_pem_certs(&ca_pem)?;
    let ca_fp = cert_info(ca_der.first().context("ca.crt holds no certificate")?)?.node_id;
    ca_params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(ca_fp.0.to_vec());
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let mut csr =
        CertificateSigningRequestParams::from_pem(csr_pem).context("not a valid certificate signing request")?;
    let node = csr_node_id(csr_pem)?;
    if crate::revocation::revoked_at_ca(ca_dir, &node) {
        bail!("node {node} was revoked by this CA (see {}); it is not signed again. Give the machine a new key with `ferry init` and enrol that", crate::revocation::CA_LEDGER);
    }
    if days == 0 {
        bail!("a certificate valid for 0 days is of no use; pass --days 1 or more");
    }
    let requested = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .map(|v| match v {
            rcgen::DnValue::Utf8String(s) => s.clone(),
            rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
            rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    let name = name.map(str::to_string).unwrap_or(requested);
    if name.is_empty() {
        bail!("the CSR has no node name; pass --name");
    }
    // The CA decides everything but the key: name, role, usages.
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.to_string());
    params.subject_alt_names = vec![SanType::DnsName(SERVER_NAME.try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days);
    csr.params = params;
    let cert = csr.signed_by(&ca_cert, &ca_key)?;
    Ok(format!("{}{}", cert.pem(), ca_pem))
}

/// The node id a CSR asks a certificate for: the hash of its key.
pub fn csr_node_id(csr_pem: &str) -> Result<NodeId> {
    use rustls::pki_types::CertificateSigningRequestDer;
    use x509_parser::prelude::FromDer;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .context("not a valid certificate signing request (PEM)")?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
        .context("not a valid certificate signing request")?;
    Ok(NodeId::from_spki(req.certification_request_info.subject_pki.raw))
}

/// Parses every certificate in a PEM bundle.
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("could not parse PEM certificates")?;
    if certs.is_empty() {
        bail!("no certificate found in the PEM input");
    }
    Ok(certs)
}

/// The deployment's fingerprint, advertised over mDNS so nodes skip peers
/// of other deployments before dialing: SHA-256 of the CA certificate,
/// first 16 bytes, written like a node id.
pub fn deployment_fingerprint(ca_pem: &str) -> Result<String> {
    let ca = parse_pem_certs(ca_pem)?;
    let first = ca.first().context("ca.crt holds no certificate")?;
    Ok(ferry_proto::NodeId::from_spki(first.as_ref()).to_string())
}

/// A CA as people know it: its name and the fingerprint `ferry ca init`
/// printed, e.g. `'ferry CA bhutan-east' (fingerprint jfj7-c0ev-...)`.
pub fn describe_ca(ca_der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(ca_der) {
        Ok((_, cert)) => format!(
            "'{}' (fingerprint {})",
            common_name(cert.subject()),
            NodeId::from_spki(cert.public_key().raw)
        ),
        Err(_) => "an unreadable CA certificate".into(),
    }
}

/// The CA that issued a node certificate, as far as the certificate says:
/// the issuer's name, and its fingerprint where the certificate carries it
/// (those signed by this version of ferry do).
pub fn describe_issuer(leaf_der: &[u8]) -> String {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf_der) else {
        return "an unreadable certificate".into();
    };
    let fingerprint = cert.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => aki
            .key_identifier
            .as_ref()
            .and_then(|k| <[u8; 16]>::try_from(k.0).ok())
            .map(NodeId),
        _ => None,
    });
    match fingerprint {
        Some(fp) => format!("'{}' (fingerprint {fp})", common_name(cert.issuer())),
        None => format!("'{}' (fingerprint not in its certificate)", common_name(cert.issuer())),
    }
}

fn common_name(name: &x509_parser::x509::X509Name) -> String {
    name.iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("unnamed")
        .to_string()
}
