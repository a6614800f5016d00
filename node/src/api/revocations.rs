//! `/v1/revocations`: the revocations this node holds, and a way to put
//! one (made by `ferry ca revoke`) into the log.

use super::error::ApiError;
use super::Api;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ferry_wal::NewEvent;
use std::sync::Arc;

/// Largest revocation taken: a few hundred bytes in practice.
const MAX_BYTES: usize = 64 * 1024;

pub async fn list(State(api): State<Arc<Api>>) -> Json<serde_json::Value> {
    let held = &api.revocations;
    Json(serde_json::json!({
        "revocations": held.list(),
        "invalid": held.invalid(),
    }))
}

/// Checks the revocation against this node's CA, then writes it as an
/// urgent event on the revocation topic; the driver acts on it as soon as
/// it is durable (closing connections to the revoked node).
pub async fn add(State(api): State<Arc<Api>>, body: axum::body::Body) -> Result<Json<serde_json::Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a revocation is a few hundred bytes; this body is over {MAX_BYTES}"),
        )
    })?;
    let r = api.revocations.verify(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_revocation",
            format!("{e:#}; send the file `ferry ca revoke` wrote, unchanged"),
        )
    })?;
    let written = api
        .wal
        .append_local(vec![NewEvent {
            topic: crate::revocation::TOPIC.into(),
            priority: ferry_proto::Priority::Urgent,
            payload: bytes.to_vec(),
        }])
        .await?;
    let e = written
        .first()
        .ok_or_else(|| super::error::internal("the WAL wrote no event"))?;
    Ok(Json(serde_json::json!({
        "id": format!("{}:{}", e.origin, e.seq),
        "revocation": r,
    })))
}
