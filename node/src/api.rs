//! The local HTTP API on loopback: how applications write and read events
//! while `ferry run` holds the data directory (the CLI's `push` uses it
//! too). There is no authentication, so it only ever listens on loopback.
//!
//! - `POST /v1/events?topic=T&priority=P`: the body is one event's payload,
//!   or with `Content-Type: application/x-ndjson` one event per line.
//!   Answers `{"events": [{"origin": ..., "seq": ...}]}` once durable.
//! - `GET /v1/events?origin=O&after=N&limit=L`: `{"events": [...]}`.
//! - `GET /v1/status`: what `ferry status --json` prints.
//!
//! Errors are `{"error": {"code": ..., "message": ...}}` with stable codes:
//! `bad_request`, `invalid_event`, `disk_full`, `storage_error`.

use crate::datadir::DataDir;
use crate::ctx::NodeCtx;
use anyhow::{bail, Context, Result};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_proto::{Origin, Priority};
use ferry_wal::{NewEvent, WalError};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where a running daemon writes its API address, for the CLI to find.
pub const ADDR_FILE: &str = "api.addr";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7701";

struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message: message.into(),
    }
}

impl From<WalError> for ApiError {
    fn from(e: WalError) -> Self {
        let (status, code) = match &e {
            WalError::InvalidEvent(_) => (StatusCode::BAD_REQUEST, "invalid_event"),
            WalError::DiskFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct AppendQuery {
    topic: Option<String>,
    priority: Option<String>,
}

async fn append(
    State(ctx): State<Arc<NodeCtx>>,
    Query(q): Query<AppendQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let priority: Priority = q.priority.as_deref().unwrap_or("normal").parse().map_err(bad_request)?;
    let topic = q.topic.unwrap_or_else(|| "default".into());
    let ndjson = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let payloads: Vec<Vec<u8>> = if ndjson {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(<[u8]>::to_vec)
            .collect()
    } else {
        vec![body.to_vec()]
    };
    let items = payloads
        .into_iter()
        .map(|payload| NewEvent {
            topic: topic.clone(),
            priority,
            payload,
        })
        .collect();
    let events = ctx.wal.append_local(items).await?;
    let ids: Vec<_> = events
        .iter()
        .map(|e| json!({ "origin": e.origin.to_string(), "seq": e.seq }))
        .collect();
    Ok(Json(json!({ "events": ids })))
}

#[derive(Deserialize)]
struct ReadQuery {
    origin: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

async fn read(
    State(ctx): State<Arc<NodeCtx>>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let origin: Option<Origin> = q
        .origin
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| bad_request(format!("origin: {e}")))?;
    let (after, mut left) = (q.after.unwrap_or(0), q.limit.unwrap_or(100).min(10_000));
    let mut out = Vec::new();
    for (o, have) in &ctx.wal.summary().0 {
        if origin.is_some_and(|want| want != *o) {
            continue;
        }
        for &(a, b) in have.ranges() {
            if b <= after || left == 0 {
                continue;
            }
            for e in ctx.wal.read_range(o, a.max(after + 1), b, left)? {
                left -= 1;
                out.push(crate::commands::event_json(&e));
            }
        }
    }
    Ok(Json(json!({ "events": out })))
}

async fn status(State(ctx): State<Arc<NodeCtx>>) -> Result<Json<serde_json::Value>, ApiError> {
    let dir = ctx
        .data_dir
        .as_ref()
        .ok_or_else(|| bad_request("this node has no data directory"))?;
    crate::status::status_of(dir, &ctx.wal).map(Json).map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "storage_error",
        message: format!("{e:#}"),
    })
}

/// Starts the API and records its address in the data directory.
pub async fn start(ctx: Arc<NodeCtx>, listen: SocketAddr) -> Result<SocketAddr> {
    if !listen.ip().is_loopback() {
        bail!(
            "the local API has no authentication, so it listens on loopback only; {listen} is not a loopback address"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("could not listen for the local API on {listen} (TCP); is another node using it? Use --api-listen")
    })?;
    let addr = listener.local_addr()?;
    if let Some(dir) = &ctx.data_dir {
        crate::datadir::atomic_write(&dir.path(ADDR_FILE), addr.to_string().as_bytes())?;
    }
    let app = Router::new()
        .route("/v1/events", post(append).get(read))
        .route("/v1/status", get(status))
        .with_state(ctx.clone());
    let stopping = ctx.stopping.clone();
    ctx.tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopping.cancelled_owned())
            .await
        {
            tracing::warn!("local API stopped: {e}");
        }
    });
    Ok(addr)
}

/// A blocking client for the CLI, talking to the daemon that holds `dir`.
pub struct Client {
    base: String,
}

impl Client {
    pub fn find(dir: &DataDir) -> Option<Client> {
        let addr = std::fs::read_to_string(dir.path(ADDR_FILE)).ok()?;
        Some(Client {
            base: format!("http://{}", addr.trim()),
        })
    }

    /// Appends payloads through the daemon; returns `origin:seq` of each.
    pub fn append(&self, topic: &str, priority: Priority, payloads: &[Vec<u8>]) -> Result<Vec<String>> {
        let body = payloads.join(&b'\n');
        let url = format!("{}/v1/events", self.base);
        let resp = ureq::post(&url)
            .query("topic", topic)
            .query("priority", &priority.to_string())
            .set("Content-Type", "application/x-ndjson")
            .send_bytes(&body);
        let value: serde_json::Value = match resp {
            Ok(r) => r.into_json()?,
            Err(ureq::Error::Status(_, r)) => {
                let v: serde_json::Value = r.into_json().unwrap_or_default();
                bail!(
                    "the daemon refused the events: {}",
                    v["error"]["message"].as_str().unwrap_or("unknown error")
                );
            }
            Err(e) => bail!("could not reach the daemon's local API at {}: {e}", self.base),
        };
        let events = value["events"].as_array().context("malformed answer from the daemon")?;
        Ok(events
            .iter()
            .map(|e| format!("{}:{}", e["origin"].as_str().unwrap_or("?"), e["seq"]))
            .collect())
    }
}
