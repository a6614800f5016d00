//! Writing and reading events. Payloads are bytes: one request body is one
//! event (or, as `application/x-ndjson`, one per line), and every read path
//! gives back exactly the bytes written.

use super::error::{bad_request, not_found, ApiError};
use super::Api;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use ferry_proto::{Event, Origin, Priority};
use ferry_wal::NewEvent;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Most events one listing returns.
pub const MAX_LIST: usize = 10_000;

/// How a payload appears in JSON, chosen so that it decodes to the exact
/// bytes written: JSON text is embedded verbatim (key order, number
/// spelling and all), other UTF-8 as a string, anything else as base64.
#[derive(Serialize)]
#[serde(rename_all = "lowercase", tag = "encoding", content = "payload")]
pub enum Payload {
    Json(Box<RawValue>),
    Text(String),
    Base64(String),
}

impl Payload {
    pub fn of(bytes: &[u8]) -> Payload {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Payload::Base64(base64::engine::general_purpose::STANDARD.encode(bytes));
        };
        // Embedded verbatim only when the text is exactly what a JSON
        // reader would take out again: no surrounding whitespace, and one
        // line, so `ferry log --json` stays one event per line.
        let verbatim = !text.contains(['\n', '\r']) && text.trim() == text;
        if verbatim {
            if let Ok(raw) = RawValue::from_string(text.to_string()) {
                return Payload::Json(raw);
            }
        }
        Payload::Text(text.to_string())
    }
}

/// One event as the API and `ferry log --json` show it.
#[derive(Serialize)]
pub struct EventJson {
    /// `ORIGIN:SEQ`, also the event's id in the stream.
    pub id: String,
    pub origin: String,
    pub seq: u64,
    pub hlc: u64,
    pub time_ms: u64,
    pub topic: String,
    pub priority: String,
    #[serde(flatten)]
    pub payload: Payload,
}

impl EventJson {
    pub fn of(e: &Event) -> EventJson {
        EventJson {
            id: format!("{}:{}", e.origin, e.seq),
            origin: e.origin.to_string(),
            seq: e.seq,
            hlc: e.hlc.0,
            time_ms: e.hlc.wall_ms(),
            topic: e.topic.clone(),
            priority: e.priority.to_string(),
            payload: Payload::of(&e.payload),
        }
    }
}

/// The media type a stored payload is served with: nothing records what the
/// writer sent, so it is read off the bytes.
pub fn content_type(bytes: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        "application/json"
    } else if std::str::from_utf8(bytes).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

#[derive(Deserialize)]
pub struct AppendQuery {
    topic: Option<String>,
    priority: Option<String>,
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn invalid_json(what: &str, e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        format!("{what} is not valid JSON ({e}); send other payloads as application/octet-stream or text/plain"),
    )
}

/// Splits a request body into event payloads by its media type.
pub fn payloads_of(media: &str, body: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the request body is empty; it is the event's payload",
        ));
    }
    if media == "application/x-ndjson" {
        let mut out = Vec::new();
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            serde_json::from_slice::<serde::de::IgnoredAny>(line)
                .map_err(|e| invalid_json(&format!("line {}", i + 1), e))?;
            out.push(line.to_vec());
        }
        if out.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty_body",
                "the body holds no lines with events",
            ));
        }
        return Ok(out);
    }
    if media == "application/json" || media.ends_with("+json") {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| invalid_json("the body", e))?;
    }
    Ok(vec![body.to_vec()])
}

pub struct Appending {
    pub topic: String,
    pub priority: Priority,
    pub payloads: Vec<Vec<u8>>,
}

/// Reads and checks an append request: query, media type, body size.
pub async fn parse_append(
    api: &Api,
    q: Result<Query<AppendQuery>, QueryRejection>,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Appending, ApiError> {
    let Query(q) = q?;
    let priority: Priority = q
        .priority
        .as_deref()
        .unwrap_or("normal")
        .parse()
        .map_err(|e| bad_request(format!("priority: {e}")))?;
    let topic = q.topic.unwrap_or_else(|| "default".into());
    let limit = api.opts.max_body_bytes;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over {limit} bytes (api_max_body_bytes in config.toml; one event's payload is at most {} bytes)", ferry_proto::event::MAX_PAYLOAD_LEN),
        )
    })?;
    let payloads = payloads_of(&media_type(headers), &body)?;
    Ok(Appending {
        topic,
        priority,
        payloads,
    })
}

pub async fn append(
    State(api): State<Arc<Api>>,
    q: Result<Query<AppendQuery>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let req = parse_append(&api, q, &headers, body).await?;
    let items = req
        .payloads
        .into_iter()
        .map(|payload| NewEvent {
            topic: req.topic.clone(),
            priority: req.priority,
            payload,
        })
        .collect();
    let key = idempotency_key(&headers)?;
    let started = std::time::Instant::now();
    let (ids, replayed): (Vec<(Origin, u64)>, bool) = match key {
        Some(key) => {
            let once = api.wal.append_local_once(&key, items).await?;
            (once.events, once.replayed)
        }
        None => {
            let events = api.wal.append_local(items).await?;
            (events.iter().map(|e| (e.origin, e.seq)).collect(), false)
        }
    };
    if !replayed {
        api.append_seconds.observe(started.elapsed().as_secs_f64());
    }
    let ids: Vec<_> = ids
        .iter()
        .map(|(o, s)| serde_json::json!({ "origin": o.to_string(), "seq": s, "id": format!("{o}:{s}") }))
        .collect();
    let mut resp = Json(serde_json::json!({ "events": ids, "replayed": replayed })).into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// The `Idempotency-Key` header, if the request has one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| bad_request("Idempotency-Key must be visible ASCII text"))?;
    Ok(Some(key.to_string()))
}

#[derive(Deserialize)]
pub struct ListQuery {
    origin: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
    topic: Option<String>,
}

pub fn parse_origin(s: &str) -> Result<Origin, ApiError> {
    s.parse().map_err(|e| {
        bad_request(format!(
            "origin '{s}': {e} (an origin is NODE_ID.EPOCH, as /v1/status lists)"
        ))
    })
}

/// Stored events, by origin then sequence number.
pub fn list_events(
    wal: &ferry_wal::Wal,
    origin: Option<Origin>,
    after: u64,
    limit: usize,
    topic: Option<&str>,
) -> Result<Vec<Event>, ferry_wal::WalError> {
    let mut out = Vec::new();
    for (o, have) in &wal.summary().0 {
        if origin.is_some_and(|want| want != *o) {
            continue;
        }
        for &(a, b) in have.ranges() {
            let mut from = a.max(after + 1);
            while from <= b && out.len() < limit {
                let page = wal.read_range(o, from, b, (limit - out.len()).max(1))?;
                let Some(last) = page.last().map(|e| e.seq) else { break };
                from = last + 1;
                out.extend(page.into_iter().filter(|e| topic.is_none_or(|t| t == e.topic)));
            }
        }
    }
    Ok(out)
}

/// Serialised straight from `EventJson`, never through `serde_json::Value`,
/// which would reorder keys and round big numbers in JSON payloads.
#[derive(Serialize)]
pub struct Listing {
    events: Vec<EventJson>,
}

pub async fn list(
    State(api): State<Arc<Api>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Listing>, ApiError> {
    let Query(q) = q?;
    let origin = q.origin.as_deref().map(parse_origin).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if limit > MAX_LIST {
        return Err(bad_request(format!(
            "limit {limit} is over {MAX_LIST}; page with `after`"
        )));
    }
    let events = list_events(&api.wal, origin, q.after.unwrap_or(0), limit, q.topic.as_deref())?;
    Ok(Json(Listing {
        events: events.iter().map(EventJson::of).collect(),
    }))
}

/// `GET /v1/events/{origin}/{seq}`: the payload itself, byte for byte.
pub async fn get_one(
    State(api): State<Arc<Api>>,
    Path((origin, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let origin = parse_origin(&origin)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| bad_request(format!("sequence number '{seq}' is not a whole number")))?;
    let event = api
        .wal
        .read_range(&origin, seq, seq, 1)?
        .into_iter()
        .next()
        .ok_or_else(|| not_found(format!("this node holds no event {origin}:{seq}")))?;
    let mut resp = event.payload.clone().into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&event.payload)),
    );
    if let Ok(v) = HeaderValue::from_str(&event.topic) {
        h.insert("ferry-topic", v);
    }
    h.insert("ferry-priority", HeaderValue::from_static(priority_str(event.priority)));
    h.insert("ferry-time-ms", HeaderValue::from(event.hlc.wall_ms()));
    Ok(resp)
}

fn priority_str(p: Priority) -> &'static str {
    match p {
        Priority::Urgent => "urgent",
        Priority::Normal => "normal",
        Priority::Bulk => "bulk",
    }
}
