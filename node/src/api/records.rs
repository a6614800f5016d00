//! Keyed records over HTTP: `PUT`/`GET`/`DELETE /v1/records/{collection}/{key}`,
//! paging a collection, the conflicts list and a record's history. Versions
//! are `ORIGIN:SEQ`, sent as strong ETags; `If-Match` makes a write
//! conditional (409 and nothing written when stale).

use super::error::{bad_request, internal, not_found, ApiError};
use super::events::Payload;
use super::Api;
use crate::records::{IfMatch, WriteError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_records::{Record, Version, VersionId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most records or conflicts one page returns.
pub const MAX_PAGE: usize = 1000;

fn records(api: &Api) -> Result<&Arc<crate::records::Records>, ApiError> {
    api.records.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "records_unavailable",
            "this node runs without a record index",
        )
    })
}

fn etag(v: &VersionId) -> HeaderValue {
    // A version is an origin (hex and '.') and a number: always a valid header.
    HeaderValue::from_str(&format!("\"{v}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// One version as the API shows it; with its value when asked.
#[derive(Serialize)]
struct VersionJson {
    version: String,
    origin: String,
    seq: u64,
    hlc: u64,
    time_ms: u64,
    deleted: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    value: Option<Payload>,
}

fn version_json(api: &Api, v: &Version, with_value: bool) -> Result<VersionJson, ApiError> {
    let value = if with_value && !v.deleted {
        let (_, w) = records(api)?
            .load(&v.id)
            .map_err(|e| internal(format!("{e:#}")))?
            .ok_or_else(|| internal(format!("the index names version {} which the log does not hold", v.id)))?;
        w.value.as_deref().map(Payload::of)
    } else {
        None
    };
    Ok(VersionJson {
        version: v.id.to_string(),
        origin: v.id.origin.to_string(),
        seq: v.id.seq,
        hlc: v.hlc.0,
        time_ms: v.hlc.wall_ms(),
        deleted: v.deleted,
        value,
    })
}

/// The names of an indexed record, read back from one of its events (the
/// index keeps only hashes of them).
fn names_of(api: &Api, rec: &Record) -> Result<(String, String), ApiError> {
    let v = rec
        .history()
        .first()
        .map(|v| v.id)
        .ok_or_else(|| internal("an indexed record has no versions"))?;
    let (_, w) = records(api)?
        .load(&v)
        .map_err(|e| internal(format!("{e:#}")))?
        .ok_or_else(|| internal(format!("the index names version {v} which the log does not hold")))?;
    Ok((w.collection, w.key))
}

#[derive(Serialize)]
struct RecordJson {
    collection: String,
    key: String,
    #[serde(flatten)]
    current: VersionJson,
    /// More than one live version: the others are in `concurrent`.
    conflict: bool,
    concurrent: Vec<VersionJson>,
}

fn record_json(api: &Api, collection: &str, key: &str, rec: &Record) -> Result<RecordJson, ApiError> {
    let live = rec.live();
    let (winner, others) = live
        .split_first()
        .ok_or_else(|| internal("an indexed record has no versions"))?;
    Ok(RecordJson {
        collection: collection.into(),
        key: key.into(),
        current: version_json(api, winner, true)?,
        conflict: !others.is_empty(),
        concurrent: others
            .iter()
            .map(|v| version_json(api, v, true))
            .collect::<Result<_, _>>()?,
    })
}

fn lookup(api: &Api, collection: &str, key: &str) -> Result<Record, ApiError> {
    check_names(collection, key)?;
    records(api)?
        .record(collection, key)
        .map_err(|e| internal(format!("{e:#}")))?
        .ok_or_else(|| not_found(format!("there is no record {collection}/{key}")))
}

fn check_names(collection: &str, key: &str) -> Result<(), ApiError> {
    ferry_records::check_collection(collection).map_err(bad_request)?;
    ferry_records::check_key(key).map_err(bad_request)
}

/// `GET /v1/records/{collection}/{key}`
pub async fn get(
    State(api): State<Arc<Api>>,
    Path((collection, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rec = lookup(&api, &collection, &key)?;
    let body = record_json(&api, &collection, &key, &rec)?;
    // A deleted record reads as gone, unless a concurrent version keeps it
    // in question: then the conflict is shown.
    let winner = rec.winner().map(|w| w.id);
    if body.current.deleted && !body.conflict {
        let mut resp = ApiError::new(
            StatusCode::NOT_FOUND,
            "record_deleted",
            format!(
                "record {collection}/{key} was deleted (version {}); its history is at .../history",
                body.current.version
            ),
        )
        .into_response();
        if let Some(w) = winner {
            resp.headers_mut().insert(header::ETAG, etag(&w));
        }
        return Ok(resp);
    }
    let mut resp = Json(body).into_response();
    if let Some(w) = winner {
        resp.headers_mut().insert(header::ETAG, etag(&w));
    }
    Ok(resp)
}

fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| bad_request("If-Match is not ASCII text"))?
        .trim();
    if v == "*" {
        return Ok(Some(IfMatch::Any));
    }
    let versions = v
        .split(',')
        .map(|t| {
            let t = t.trim();
            let t = t.strip_prefix("W/").unwrap_or(t);
            let t = t.trim_matches('"');
            t.parse::<VersionId>().map_err(bad_request)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(IfMatch::Versions(versions)))
}

#[derive(Serialize)]
struct Written {
    collection: String,
    key: String,
    version: String,
    deleted: bool,
    /// The versions this write supersedes (more than one resolves a conflict).
    superseded: Vec<String>,
}

async fn write(
    api: &Api,
    collection: String,
    key: String,
    value: Option<Vec<u8>>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    check_names(&collection, &key)?;
    let cond = if_match(headers)?;
    let deleted = value.is_none();
    let result = records(api)?.write(&collection, &key, value, cond).await;
    let (version, superseded) = match result {
        Ok(r) => r,
        Err(WriteError::Stale { current }) => {
            let mut resp = ApiError::new(
                StatusCode::CONFLICT,
                "version_mismatch",
                match current {
                    Some(v) => format!("record {collection}/{key} is at version {v}, not the one in If-Match; read it again, then write with If-Match: \"{v}\""),
                    None => format!("record {collection}/{key} does not exist; write without If-Match to create it"),
                },
            )
            .into_response();
            if let Some(v) = current {
                resp.headers_mut().insert(header::ETAG, etag(&v));
            }
            return Ok(resp);
        }
        Err(WriteError::NotFound(c, k)) => return Err(not_found(format!("there is no record {c}/{k} to delete"))),
        Err(WriteError::Invalid(m)) => return Err(bad_request(m)),
        Err(WriteError::Wal(e)) => return Err(e.into()),
        Err(WriteError::Index(e)) => return Err(internal(format!("{e:#}"))),
    };
    let mut resp = Json(Written {
        collection,
        key,
        version: version.to_string(),
        deleted,
        superseded: superseded.iter().map(ToString::to_string).collect(),
    })
    .into_response();
    resp.headers_mut().insert(header::ETAG, etag(&version));
    Ok(resp)
}

/// `PUT /v1/records/{collection}/{key}`: the body is the value.
pub async fn put(
    State(api): State<Arc<Api>>,
    Path((collection, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // Room for the names and the causal context beside the value.
    let limit = api.opts.max_body_bytes.min(ferry_proto::event::MAX_PAYLOAD_LEN - 4096);
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a record's value is at most {limit} bytes"),
        )
    })?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if media.starts_with("application/json") {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!(
                    "the body is not valid JSON ({e}); send other values as application/octet-stream or text/plain"
                ),
            )
        })?;
    }
    write(&api, collection, key, Some(body.to_vec()), &headers).await
}

/// `DELETE /v1/records/{collection}/{key}`: writes a tombstone.
pub async fn delete(
    State(api): State<Arc<Api>>,
    Path((collection, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    write(&api, collection, key, None, &headers).await
}

#[derive(Deserialize)]
pub struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad_request(format!("limit {limit}: use 1 to {MAX_PAGE}")));
    }
    Ok(limit)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_cursor(s: &str) -> Result<[u8; 16], ApiError> {
    let bad = || {
        bad_request(format!(
            "cursor '{s}' is not one this API gave out (32 hex digits, from `next`)"
        ))
    };
    if s.len() != 32 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[derive(Serialize)]
struct PageJson {
    collection: String,
    records: Vec<RecordJson>,
    /// Pass as `after` for the next page; `null` at the end.
    next: Option<String>,
}

/// `GET /v1/records/{collection}?after=CURSOR&limit=N`: current values, in
/// the index's order (not by key). Deleted records are left out.
pub async fn list(
    State(api): State<Arc<Api>>,
    Path(collection): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let Query(q) = q?;
    ferry_records::check_collection(&collection).map_err(bad_request)?;
    let limit = page_limit(q.limit)?;
    let after = q.after.as_deref().map(parse_cursor).transpose()?;
    let page = records(&api)?
        .page(&collection, after, limit)
        .map_err(|e| internal(format!("{e:#}")))?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|(id, _)| hex(&id[16..])))
        .flatten();
    let mut out = Vec::new();
    for (_, rec) in &page {
        let (_, key) = names_of(&api, rec)?;
        let r = record_json(&api, &collection, &key, rec)?;
        if !r.current.deleted || r.conflict {
            out.push(r);
        }
    }
    Ok(Json(PageJson {
        collection,
        records: out,
        next,
    }))
}

#[derive(Deserialize)]
pub struct ConflictQuery {
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ConflictJson {
    collection: String,
    key: String,
    /// When the record became conflicted (the second concurrent write).
    since_ms: u64,
    /// Winner first.
    versions: Vec<VersionJson>,
}

/// `GET /v1/conflicts`: records with concurrent versions, oldest first.
pub async fn conflicts(
    State(api): State<Arc<Api>>,
    q: Result<Query<ConflictQuery>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let Query(q) = q?;
    let limit = page_limit(q.limit)?;
    let recs = records(&api)?;
    let count = recs.conflict_count().map_err(|e| internal(format!("{e:#}")))?;
    let list = recs.conflicts(limit).map_err(|e| internal(format!("{e:#}")))?;
    let mut out = Vec::new();
    for (_, rec) in &list {
        let (collection, key) = names_of(&api, rec)?;
        out.push(ConflictJson {
            collection,
            key,
            since_ms: rec.conflict_since().map_or(0, |h| h.wall_ms()),
            versions: rec
                .live()
                .iter()
                .map(|v| version_json(&api, v, false))
                .collect::<Result<_, _>>()?,
        });
    }
    Ok(Json(serde_json::json!({ "count": count, "conflicts": out })))
}

#[derive(Serialize)]
struct HistoryEntry {
    #[serde(flatten)]
    version: VersionJson,
    /// Whether a later version supersedes this one.
    superseded: bool,
    /// The versions this one supersedes, as its writer's context names them.
    context: Vec<String>,
}

/// `GET /v1/records/{collection}/{key}/history`: every version, oldest first.
pub async fn history(
    State(api): State<Arc<Api>>,
    Path((collection, key)): Path<(String, String)>,
) -> Result<Json<impl Serialize>, ApiError> {
    let rec = lookup(&api, &collection, &key)?;
    let versions = rec
        .history()
        .into_iter()
        .map(|v| {
            Ok(HistoryEntry {
                version: version_json(&api, v, true)?,
                superseded: rec.is_superseded(&v.id),
                context: v.context.entries().map(|c| c.to_string()).collect(),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let current = rec.winner().map(|w| w.id.to_string());
    Ok(Json(serde_json::json!({
        "collection": collection,
        "key": key,
        "current": current,
        "versions": versions,
    })))
}

/// A record event as the live stream shows it (`event: record`).
pub fn stream_json(e: &ferry_proto::Event) -> Option<String> {
    let (w, v) = ferry_records::Applied::decode(e).ok().flatten()?;
    let value = w.value.as_deref().map(Payload::of);
    #[derive(Serialize)]
    struct Change {
        id: String,
        collection: String,
        key: String,
        version: String,
        hlc: u64,
        time_ms: u64,
        deleted: bool,
        supersedes: Vec<String>,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        value: Option<Payload>,
    }
    serde_json::to_string(&Change {
        id: v.id.to_string(),
        collection: w.collection,
        key: w.key,
        version: v.id.to_string(),
        hlc: v.hlc.0,
        time_ms: v.hlc.wall_ms(),
        deleted: v.deleted,
        supersedes: v.context.entries().map(|c| c.to_string()).collect(),
        value,
    })
    .ok()
}
