//! `ferry status` and `ferry peers`. Both read; neither ever takes the WAL
//! writer's lock, so they never stand in the way of a daemon starting.

use crate::datadir::{DataDir, PeerRecord};
use anyhow::Result;
use serde_json::json;
use std::io::Write;

pub fn status_json(dir: &DataDir) -> Result<serde_json::Value> {
    status_of(dir, &dir.open_wal_for_reading()?)
}

/// What a peer's record says, with the state `ferry peers` shows.
pub fn state(p: &PeerRecord) -> &'static str {
    if p.foreign {
        "foreign"
    } else if p.connected {
        "connected"
    } else if p.last_error.is_some() {
        "failed"
    } else {
        "idle"
    }
}

/// One peer as `status --json`, the API and the dashboard show it.
pub fn peer_json(node_id: &str, p: &PeerRecord) -> serde_json::Value {
    json!({
        "node_id": node_id, "name": p.name, "role": p.role, "addr": p.addr,
        "found_by": p.found_by, "state": state(p), "connected": p.connected,
        "verified": p.verified, "connected_since_unix": p.connected_since_unix,
        "last_sync_unix": p.last_sync_unix, "last_error": p.last_error,
        "events_received": p.events_received, "events_sent": p.events_sent,
        "bytes_received": p.bytes_received, "bytes_sent": p.bytes_sent,
        "we_lack": p.we_lack, "they_lack": p.they_lack,
    })
}

/// When a PEM certificate expires (Unix seconds), if it parses.
fn not_after_of(pem: Option<&String>) -> Option<i64> {
    let der = crate::pki::parse_pem_certs(pem?).ok()?;
    crate::pki::not_after(der.first()?).ok()
}

/// Seconds until this node's certificate and the CA's expire (negative
/// once past), for `/metrics`.
pub fn expiry_seconds(id: &crate::pki::Identity) -> (Option<i64>, Option<i64>) {
    let now = crate::datadir::unix_now() as i64;
    (
        not_after_of(id.cert_pem.as_ref()).map(|t| t - now),
        not_after_of(id.ca_pem.as_ref()).map(|t| t - now),
    )
}

/// The certificate's lifetime as a person reads it, with what to do when
/// it is near its end.
pub fn expiry_text(id: &crate::pki::Identity) -> Option<String> {
    let (left, _) = expiry_seconds(id);
    let left = left?;
    let days = left.div_euclid(86_400);
    Some(if left <= 0 {
        "EXPIRED: peers refuse it. Renew: `ferry csr --renew`, `ferry ca sign` at the CA, `ferry cert install`".into()
    } else if days < crate::pki::EXPIRY_WARNING_DAYS as i64 {
        format!("expires in {days} days: renew it soon (`ferry csr --renew`, `ferry ca sign` at the CA, `ferry cert install`)")
    } else {
        format!("valid for {days} more days")
    })
}

fn certificate_json(id: &crate::pki::Identity) -> serde_json::Value {
    let (node, ca) = expiry_seconds(id);
    let Some(left) = node else {
        return serde_json::Value::Null;
    };
    json!({
        "expires_in_seconds": left,
        "expiring": left < (crate::pki::EXPIRY_WARNING_DAYS * 86_400) as i64,
        "ca_expires_in_seconds": ca,
        "summary": expiry_text(id),
    })
}

/// Revocations held in the WAL, checked against this node's CA.
fn revoked_json(id: &crate::pki::Identity, wal: &ferry_wal::Wal) -> Vec<serde_json::Value> {
    let Some(ca) = id.ca_pem.as_ref().and_then(|p| crate::pki::parse_pem_certs(p).ok()) else {
        return Vec::new();
    };
    let held = crate::revocation::Revocations::new(ca[0].to_vec());
    if let Err(e) = held.rebuild(wal) {
        tracing::warn!("could not read the revocations this node holds: {e:#}");
    }
    held.list().iter().map(|r| json!(r)).collect()
}

/// Status from a WAL that is already open (the daemon's, for its API).
pub fn status_of(dir: &DataDir, wal: &ferry_wal::Wal) -> Result<serde_json::Value> {
    let cfg = dir.config()?;
    let id = dir.identity()?;
    let summary = wal.summary();
    let stats = wal.stats();
    let have: serde_json::Map<String, serde_json::Value> = summary
        .0
        .iter()
        .map(|(o, r)| {
            (
                o.to_string(),
                json!(r.ranges().iter().map(|(a, b)| [a, b]).collect::<Vec<_>>()),
            )
        })
        .collect();
    let peers: Vec<serde_json::Value> = dir.peers().iter().map(|(id, p)| peer_json(id, p)).collect();
    Ok(json!({
        "version": crate::cli::VERSION,
        "node_id": id.node_id.to_string(),
        "name": cfg.name,
        "role": id.cert.as_ref().and_then(|c| c.role),
        "enrolled": id.cert.is_some(),
        "local_origin": wal.local_origin().to_string(),
        "events": stats.events,
        "have": have,
        "wal_bytes": stats.bytes,
        "wal_segments": stats.segments,
        "wal_encrypted": cfg.encrypt_wal,
        "policy": cfg.policy,
        "certificate": certificate_json(&id),
        "revoked": revoked_json(&id, wal),
        "peers": peers,
    }))
}

pub fn print(dir: &DataDir, as_json: bool) -> Result<()> {
    let s = status_json(dir)?;
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    let str_of = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    writeln!(
        out,
        "node      {} '{}' ({})",
        str_of(&s["node_id"]),
        str_of(&s["name"]),
        str_of(&s["role"])
    )?;
    if s["enrolled"] == false {
        writeln!(
            out,
            "          not enrolled: run `ferry ca enroll --ca-dir CA --data-dir DIR --role clinic` where the CA is, or send `ferry csr` to it"
        )?;
    }
    if let Some(text) = s["certificate"]["summary"].as_str() {
        writeln!(out, "cert      {text}")?;
        if s["certificate"]["expiring"] == true {
            tracing::warn!("this node's certificate {text}");
        }
    }
    for r in s["revoked"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "revoked   {} (serial {}, at {}): {}",
            str_of(&r["node"]),
            r["serial"],
            r["revoked_at_ms"].as_u64().unwrap_or(0) / 1000,
            str_of(&r["reason"])
        )?;
    }
    writeln!(out, "events    {} in {} bytes of WAL", s["events"], s["wal_bytes"])?;
    if let Some(have) = s["have"].as_object() {
        for (origin, ranges) in have {
            writeln!(out, "  {origin}  {ranges}")?;
        }
    }
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    writeln!(out, "peers     {}", peers.len())?;
    for p in peers {
        let last = p["last_sync_unix"]
            .as_u64()
            .map(|t| format!("{}s ago", crate::datadir::unix_now().saturating_sub(t)))
            .unwrap_or_else(|| "never".into());
        writeln!(
            out,
            "  {} '{}' {} at {}: last sync {last}, received {}, sent {}{}",
            str_of(&p["node_id"]),
            str_of(&p["name"]),
            str_of(&p["role"]),
            str_of(&p["addr"]),
            p["events_received"],
            p["events_sent"],
            p["last_error"]
                .as_str()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `ferry peers`: what peers.json says, one line per peer.
pub fn print_peers(dir: &DataDir, as_json: bool) -> Result<()> {
    let peers = dir.peers();
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&peers)?)?;
        return Ok(());
    }
    if peers.is_empty() {
        writeln!(
            out,
            "no peers known yet: add `peers` to config.toml, or run `ferry run` on a LAN with other nodes"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<10} {:<7} {:<22} {:<9} {:<14} {:>11} {:>12}",
        "NODE", "NAME", "ROLE", "ADDRESS", "FOUND BY", "STATE", "LAST SYNC", "LACKS (W/T)"
    )?;
    let now = crate::datadir::unix_now();
    for (id, p) in peers {
        let short = id.get(..9).unwrap_or(&id);
        let state = state(&p);
        let last = p
            .last_sync_unix
            .map(|t| format!("{}s ago", now.saturating_sub(t)))
            .unwrap_or_else(|| "never".into());
        let lacks = match (p.we_lack, p.they_lack) {
            (Some(w), Some(t)) => format!("{w}/{t}"),
            _ => "-".into(),
        };
        let role = p.role.map(|r| r.to_string()).unwrap_or_else(|| "?".into());
        writeln!(
            out,
            "{short:<12} {:<10} {role:<7} {:<22} {:<9} {state:<14} {last:>11} {lacks:>12}",
            p.name, p.addr, p.found_by
        )?;
        if let Some(e) = &p.last_error {
            writeln!(out, "{:12} last error: {e}", "")?;
        }
    }
    Ok(())
}
