//! Renewed certificates that travel by the log: `ferry cert publish` puts
//! the bundle `ferry ca sign` made (node certificate, then CA certificate)
//! into the log on the reserved topic `ferry.certificate`, and the node it
//! is for installs it when the event reaches it, over 2G, the LAN or a
//! mule, as it would with `ferry cert install`. Every other node only
//! carries it.
//!
//! A node installs a bundle only if the certificate is for its own key,
//! chains to the CA certificate it already holds (the bundle's own CA copy
//! is not trusted), and ends later than the one it has: a relay can neither
//! plant a certificate nor roll a node back to an older one.

use crate::datadir::DataDir;
use crate::pki;
use anyhow::{bail, Context, Result};
use ferry_proto::Event;

pub const TOPIC: &str = "ferry.certificate";

/// Checks a bundle before it goes into the log: well formed, and signed by
/// the CA this node holds. Returns the certificate's node and its end.
pub fn check(bundle: &[u8], ca_pem: &str) -> Result<(pki::CertInfo, i64)> {
    let pem = std::str::from_utf8(bundle).context("the certificate bundle is not PEM text")?;
    let certs = pki::parse_pem_certs(pem)?;
    let Some(cert) = certs.first() else {
        bail!("the bundle holds no certificate; give the file `ferry ca sign` wrote")
    };
    let ca = pki::parse_pem_certs(ca_pem)?;
    let ca = ca.first().context("this node's ca.crt holds no certificate")?;
    crate::tls::verify_chain(cert, ca).context("the certificate is not signed by this deployment's CA")?;
    Ok((pki::cert_info(cert)?, pki::not_after(cert)?))
}

/// What became of a certificate event at this node.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a certificate event, or one for another node: carried only.
    NotForUs,
    /// Installed; ends at this Unix time. A running node presents it from
    /// its next start.
    Installed { not_after: i64 },
    /// For this node, but no newer than the certificate it has.
    NotNewer,
}

/// A held event: if it is a renewed certificate for this node, install it.
/// Errors are for a bundle meant for this node that cannot be used.
pub fn observe(dir: &DataDir, e: &Event) -> Result<Outcome> {
    if e.topic != TOPIC {
        return Ok(Outcome::NotForUs);
    }
    let id = dir.identity()?;
    let ca_pem = id.ca_pem.as_deref().context("this node has no CA certificate")?;
    let (info, not_after) = match check(&e.payload, ca_pem) {
        Ok(x) => x,
        // Someone else's business unless it names this node; a bundle that
        // does not parse names nobody.
        Err(err) if names(&e.payload) == Some(id.node_id) => return Err(err),
        Err(_) => return Ok(Outcome::NotForUs),
    };
    if info.node_id != id.node_id {
        return Ok(Outcome::NotForUs);
    }
    let current = id
        .cert_pem
        .as_deref()
        .and_then(|p| pki::parse_pem_certs(p).ok())
        .and_then(|c| c.first().and_then(|d| pki::not_after(d).ok()));
    if current.is_some_and(|c| not_after <= c) {
        return Ok(Outcome::NotNewer);
    }
    // The CA copy inside the bundle is not used: the node keeps its own.
    let pem = std::str::from_utf8(&e.payload).context("the certificate bundle is not PEM text")?;
    let node_pem = pem
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .context("the bundle holds no certificate")?;
    dir.install_cert(&format!("{}\n{ca_pem}", node_pem.trim()))?;
    Ok(Outcome::Installed { not_after })
}

/// The node a bundle's first certificate is for, if it parses.
fn names(bundle: &[u8]) -> Option<ferry_proto::NodeId> {
    let pem = std::str::from_utf8(bundle).ok()?;
    let certs = pki::parse_pem_certs(pem).ok()?;
    Some(pki::cert_info(certs.first()?).ok()?.node_id)
}
