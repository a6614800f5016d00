//! A blocking client for the CLI, talking to the daemon that holds a data
//! directory.

use crate::datadir::DataDir;
use anyhow::{bail, Context, Result};
use ferry_proto::Priority;
use std::net::SocketAddr;
use std::time::Duration;

/// What one append request carries.
pub enum Body<'a> {
    /// One event, whatever its bytes.
    One(&'a [u8]),
    /// Several events, one JSON document per line.
    JsonLines(&'a [Vec<u8>]),
}

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// The daemon's API as its data directory records it, if one runs.
    pub fn find(dir: &DataDir) -> Option<Client> {
        let text = std::fs::read_to_string(dir.path(super::ADDR_FILE)).ok()?;
        let mut addr: SocketAddr = text.trim().parse().ok()?;
        // Bound to every address: reach it on this machine's loopback.
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let token = std::fs::read_to_string(dir.path(super::TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_string());
        Some(Client {
            base: format!("http://{addr}"),
            token,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout(Duration::from_secs(120))
                .build(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// The node id of the daemon answering at the recorded address, if any.
    pub fn node_id(&self) -> Option<String> {
        let resp = self
            .agent
            .get(&format!("{}/healthz", self.base))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?;
        let v: serde_json::Value = resp.into_json().ok()?;
        v["node_id"].as_str().map(str::to_string)
    }

    /// Appends payloads through the daemon, one event each; returns
    /// `origin:seq` of each.
    pub fn append(&self, topic: &str, priority: Priority, payloads: &[Vec<u8>]) -> Result<Vec<String>> {
        let lines_ok = payloads.len() > 1
            && payloads
                .iter()
                .all(|p| !p.contains(&b'\n') && serde_json::from_slice::<serde::de::IgnoredAny>(p).is_ok());
        if lines_ok {
            return self.append_body(topic, priority, Body::JsonLines(payloads), None);
        }
        let mut ids = Vec::new();
        for p in payloads {
            ids.extend(self.append_body(topic, priority, Body::One(p), None)?);
        }
        Ok(ids)
    }

    /// One append request; with a key, a retry answers as the first try did.
    pub fn append_body(
        &self,
        topic: &str,
        priority: Priority,
        body: Body<'_>,
        idempotency_key: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut req = self
            .request("POST", "/v1/events")
            .query("topic", topic)
            .query("priority", &priority.to_string());
        if let Some(k) = idempotency_key {
            req = req.set("Idempotency-Key", k);
        }
        let resp = match body {
            Body::One(bytes) => req.set("Content-Type", "application/octet-stream").send_bytes(bytes),
            Body::JsonLines(lines) => req
                .set("Content-Type", "application/x-ndjson")
                .send_bytes(&lines.join(&b'\n')),
        };
        let value = self.answer(resp, "the daemon refused the events")?;
        let events = value["events"]
            .as_array()
            .with_context(|| format!("the daemon's answer has no events list: {value}"))?;
        events
            .iter()
            .map(|e| match (e["origin"].as_str(), e["seq"].as_u64()) {
                (Some(o), Some(s)) => Ok(format!("{o}:{s}")),
                _ => bail!("the daemon's answer names an event without origin and seq: {e}"),
            })
            .collect()
    }

    /// Puts a revocation into the daemon's log; returns `origin:seq`.
    pub fn revoke(&self, bytes: &[u8]) -> Result<String> {
        let resp = self
            .request("POST", "/v1/revocations")
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes);
        let value = self.answer(resp, "the daemon refused the revocation")?;
        value["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the daemon's answer has no event id: {value}"))
    }

    /// The JSON of a successful answer, or the server's own error message.
    fn answer(&self, resp: Result<ureq::Response, ureq::Error>, what: &str) -> Result<serde_json::Value> {
        json_answer(resp, &self.base, Some(what))
    }
}

/// The JSON of a successful answer, or the daemon's own error message and
/// code, prefixed with `what` was being done when given. The records CLI
/// uses it too.
pub(crate) fn json_answer(
    resp: Result<ureq::Response, ureq::Error>,
    base: &str,
    what: Option<&str>,
) -> Result<serde_json::Value> {
    let doing = what.map(|w| format!("{w}: ")).unwrap_or_default();
    match resp {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(status, r)) => {
            let text = r.into_string().unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) if v["error"]["message"].is_string() => bail!(
                    "{doing}{} ({}, HTTP {status})",
                    v["error"]["message"].as_str().unwrap_or_default(),
                    v["error"]["code"].as_str().unwrap_or("no code"),
                ),
                _ => bail!("{doing}HTTP {status}: {}", text.trim()),
            }
        }
        Err(e) => bail!("could not reach the daemon's local API at {base}: {e}"),
    }
}
