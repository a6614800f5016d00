//! The local HTTP API of a running node (`ferry run`): how applications
//! write and read events, follow them live, and how operators watch the
//! node. Described for machines by `docs/openapi.json`, which the daemon
//! serves at `/v1/openapi.json`.
//!
//! It listens on loopback unless told otherwise; bound to any other
//! address it asks every request for the token in `api.token` (0600).

pub(crate) mod client;
mod dashboard;
mod error;
mod events;
mod metrics;
mod records;
mod revocations;
mod stream;

pub use client::{Body, Client};
pub use error::ApiError;
pub use events::{content_type, list_events, EventJson, Payload};
pub use metrics::Histogram;

use crate::ctx::NodeCtx;
use crate::datadir::DataDir;
use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ferry_wal::Wal;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where a running daemon writes its API address, for the CLI to find.
pub const ADDR_FILE: &str = "api.addr";
/// The token a non-loopback API asks for (made on first use, 0600).
pub const TOKEN_FILE: &str = "api.token";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7701";
/// Default cap on one request body; one event's payload is at most 1 MiB
/// whatever this says (the protocol's limit).
pub const DEFAULT_MAX_BODY: usize = 4 << 20;

/// How the daemon runs its API.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
}

/// What every handler sees.
pub struct Api {
    wal: Arc<Wal>,
    dir: Option<DataDir>,
    node_id: String,
    name: String,
    role: String,
    opts: ApiOptions,
    token: Option<String>,
    stopping: tokio_util::sync::CancellationToken,
    /// Time from an append request to its events being durable.
    append_seconds: Histogram,
    /// The keyed-record index (`None` only in unit tests of other parts).
    records: Option<Arc<crate::records::Records>>,
    /// The revocations the node holds.
    revocations: Arc<crate::revocation::Revocations>,
    /// Writers' keys, and the count of events refused for want of proof.
    writer_keys: Arc<crate::logauth::WriterKeys>,
    /// Connections given up as silent (`Counters::silent_peers`).
    silent_peers: Arc<std::sync::atomic::AtomicU64>,
}

/// Starts the API and records its address in the data directory.
pub async fn start(ctx: &Arc<NodeCtx>, opts: ApiOptions) -> Result<SocketAddr> {
    let token = if opts.listen.ip().is_loopback() {
        None
    } else {
        let dir = ctx
            .data_dir
            .as_ref()
            .context("an API beyond loopback needs a token, kept in the data directory; this node has none")?;
        Some(load_or_make_token(dir)?)
    };
    let listener = tokio::net::TcpListener::bind(opts.listen).await.with_context(|| {
        format!(
            "could not listen for the local API on {} (TCP); is another node using it? Use --api-listen",
            opts.listen
        )
    })?;
    let addr = listener.local_addr()?;
    if let Some(dir) = &ctx.data_dir {
        crate::datadir::atomic_write(&dir.path(ADDR_FILE), addr.to_string().as_bytes())?;
    }
    let api = Arc::new(Api {
        wal: ctx.wal.clone(),
        dir: ctx.data_dir.clone(),
        node_id: ctx.node_id.to_string(),
        name: ctx.name.clone(),
        role: ctx.role.to_string(),
        opts,
        token,
        stopping: ctx.stopping.clone(),
        append_seconds: Histogram::default(),
        records: Some(crate::records::Records::start(ctx)?),
        revocations: ctx.revocations.clone(),
        writer_keys: ctx.writer_keys.clone(),
        silent_peers: ctx.totals.silent_peers.clone(),
    });
    let app = router(api);
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

fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/v1/events", post(events::append).get(events::list))
        .route("/v1/events/{origin}/{seq}", get(events::get_one))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/records/{collection}", get(records::list))
        .route(
            "/v1/records/{collection}/{key}",
            get(records::get).put(records::put).delete(records::delete),
        )
        .route("/v1/records/{collection}/{key}/history", get(records::history))
        .route("/v1/conflicts", get(records::conflicts))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/revocations", get(revocations::list).post(revocations::add))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .layer(axum::middleware::from_fn(error::json_errors))
        // Bodies are read with the configured limit in the handler.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(api)
}

/// Paths that need no token: probes, and documents that hold no data.
fn is_open(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/readyz" | "/v1/openapi.json")
}

async fn authorize(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let Some(token) = &api.token else {
        return next.run(req).await;
    };
    if is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Browsers' EventSource cannot set headers, so the stream (and only a
    // client that must) may pass it in the query instead.
    let query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    let given = bearer.map(str::to_string).or(query);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!(
            "this API listens beyond loopback and needs the token in the node's {TOKEN_FILE}: send `Authorization: Bearer TOKEN`"
        ),
    )
    .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in `api.token`, made (32 random bytes, hex, mode 0600) if absent.
pub fn load_or_make_token(dir: &DataDir) -> Result<String> {
    let path = dir.path(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() < 16 {
            bail!(
                "{} holds a token shorter than 16 characters; remove it and a new one is made",
                path.display()
            );
        }
        return Ok(t);
    }
    let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    crate::pki::write_secret(&path, &format!("{token}\n"))?;
    tracing::info!(path = %path.display(), "made a token for the API");
    Ok(token)
}

async fn status(State(api): State<Arc<Api>>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let dir = api
        .dir
        .as_ref()
        .ok_or_else(|| error::not_found("this node has no data directory"))?;
    crate::status::status_of(dir, &api.wal)
        .map(axum::Json)
        .map_err(|e| error::internal(format!("{e:#}")))
}

async fn peers(State(api): State<Arc<Api>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "peers": peer_list(&api) }))
}

/// Peers as the API, the stream and the dashboard show them.
fn peer_list(api: &Api) -> Vec<serde_json::Value> {
    let Some(dir) = &api.dir else { return Vec::new() };
    dir.peers()
        .into_iter()
        .map(|(id, p)| crate::status::peer_json(&id, &p))
        .collect()
}

/// The OpenAPI document, compiled in so it always matches this binary.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
