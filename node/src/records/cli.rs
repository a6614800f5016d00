//! `ferry record put|get|list|conflicts|history`: the record API of the
//! running daemon, for operators and scripts.

use crate::api::{Client, ADDR_FILE, TOKEN_FILE};
use crate::cli::RecordCommand;
use crate::datadir::DataDir;
use anyhow::{bail, Context, Result};
use std::io::Write as _;
use std::time::Duration;

struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// Path segments are percent-encoded: keys may hold '/', spaces, anything.
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Api {
    fn find(dir: &DataDir) -> Result<Api> {
        let client = Client::find(dir).with_context(|| {
            format!(
                "no running daemon found ({} missing): records are read and written through `ferry run`; start it first",
                dir.path(ADDR_FILE).display()
            )
        })?;
        if client.node_id().is_none() {
            bail!(
                "the daemon recorded in {ADDR_FILE} ({}) does not answer; is `ferry run` still running?",
                client.base()
            );
        }
        Ok(Api {
            base: client.base().to_string(),
            token: std::fs::read_to_string(dir.path(TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_string()),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .build(),
        })
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// The JSON of a successful answer, or the daemon's error, explained.
    fn answer(&self, resp: Result<ureq::Response, ureq::Error>) -> Result<serde_json::Value> {
        crate::api::client::json_answer(resp, &self.base, None)
    }
}

pub fn run(dir: &DataDir, cmd: &RecordCommand) -> Result<()> {
    let api = Api::find(dir)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        RecordCommand::Put {
            collection,
            key,
            value,
            file,
            delete,
            if_match,
        } => {
            let path = format!("/v1/records/{}/{}", seg(collection), seg(key));
            let method = if *delete { "DELETE" } else { "PUT" };
            let mut req = api.request(method, &path);
            if let Some(v) = if_match {
                req = req.set("If-Match", &format!("\"{}\"", v.trim_matches('"')));
            }
            let resp = if *delete {
                req.call()
            } else {
                let bytes = match (value, file) {
                    (Some(v), _) => v.clone().into_bytes(),
                    (None, Some(f)) => std::fs::read(f).with_context(|| format!("could not read {}", f.display()))?,
                    (None, None) => bail!("give the value as an argument, with --file, or --delete"),
                };
                let ctype = if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
                    "application/json"
                } else {
                    "application/octet-stream"
                };
                req.set("Content-Type", ctype).send_bytes(&bytes)
            };
            let v = api.answer(resp)?;
            writeln!(out, "{}", v["version"].as_str().unwrap_or_default())?;
        }
        RecordCommand::Get { collection, key, json } => {
            let path = format!("/v1/records/{}/{}", seg(collection), seg(key));
            let v = api.answer(api.request("GET", &path).call())?;
            if *json {
                writeln!(out, "{v}")?;
            } else {
                if v["deleted"] == true {
                    eprintln!(
                        "the current version {} is a delete",
                        v["version"].as_str().unwrap_or_default()
                    );
                } else {
                    out.write_all(&value_bytes(&v)?)?;
                    writeln!(out)?;
                }
                if let Some(others) = v["concurrent"].as_array().filter(|a| !a.is_empty()) {
                    eprintln!(
                        "conflict: version {} wins over {} concurrent version(s): {}; a write here resolves it",
                        v["version"].as_str().unwrap_or_default(),
                        others.len(),
                        others
                            .iter()
                            .map(|o| o["version"].as_str().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        RecordCommand::List {
            collection,
            after,
            limit,
            json,
        } => {
            let mut req = api
                .request("GET", &format!("/v1/records/{}", seg(collection)))
                .query("limit", &limit.to_string());
            if let Some(a) = after {
                req = req.query("after", a);
            }
            let v = api.answer(req.call())?;
            if *json {
                writeln!(out, "{v}")?;
            } else {
                for r in v["records"].as_array().into_iter().flatten() {
                    let value = String::from_utf8_lossy(&value_bytes(r)?).into_owned();
                    let mark = if r["conflict"] == true { " (conflict)" } else { "" };
                    writeln!(
                        out,
                        "{}\t{}{mark}\t{value}",
                        r["key"].as_str().unwrap_or_default(),
                        r["version"].as_str().unwrap_or_default()
                    )?;
                }
                if let Some(next) = v["next"].as_str() {
                    eprintln!("more: ferry record list {collection} --after {next}");
                }
            }
        }
        RecordCommand::Conflicts { limit, json } => {
            let v = api.answer(
                api.request("GET", "/v1/conflicts")
                    .query("limit", &limit.to_string())
                    .call(),
            )?;
            if *json {
                writeln!(out, "{v}")?;
            } else {
                for c in v["conflicts"].as_array().into_iter().flatten() {
                    let versions: Vec<&str> = c["versions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x["version"].as_str())
                        .collect();
                    writeln!(
                        out,
                        "{}/{}\t{}",
                        c["collection"].as_str().unwrap_or_default(),
                        c["key"].as_str().unwrap_or_default(),
                        versions.join(" ")
                    )?;
                }
                eprintln!("{} record(s) in conflict", v["count"]);
            }
        }
        RecordCommand::History { collection, key, json } => {
            let path = format!("/v1/records/{}/{}/history", seg(collection), seg(key));
            let v = api.answer(api.request("GET", &path).call())?;
            if *json {
                writeln!(out, "{v}")?;
            } else {
                for h in v["versions"].as_array().into_iter().flatten() {
                    let state = if v["current"] == h["version"] {
                        "current"
                    } else if h["superseded"] == true {
                        "superseded"
                    } else {
                        "concurrent"
                    };
                    let value = if h["deleted"] == true {
                        "(deleted)".to_string()
                    } else {
                        String::from_utf8_lossy(&value_bytes(h)?).into_owned()
                    };
                    writeln!(
                        out,
                        "{}\t{}\t{state}\t{value}",
                        h["version"].as_str().unwrap_or_default(),
                        h["time_ms"]
                    )?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The value of a version as the API encodes it (json, text or base64).
fn value_bytes(v: &serde_json::Value) -> Result<Vec<u8>> {
    use base64::Engine;
    Ok(match v["encoding"].as_str() {
        Some("json") => serde_json::to_vec(&v["payload"])?,
        Some("text") => v["payload"].as_str().unwrap_or_default().as_bytes().to_vec(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(v["payload"].as_str().unwrap_or_default())
            .context("the daemon sent a value that is not base64")?,
        _ => Vec::new(),
    })
}
