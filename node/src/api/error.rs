//! Every error the API answers is `{"error": {"code", "message"}}`, with a
//! stable code an application can branch on and a message a person can act on.

use axum::extract::rejection::QueryRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_wal::WalError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e.to_string())
}

impl From<WalError> for ApiError {
    fn from(e: WalError) -> Self {
        let (status, code) = match &e {
            WalError::InvalidEvent(m) if m.contains("payload is") => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            WalError::InvalidEvent(_) => (StatusCode::BAD_REQUEST, "invalid_event"),
            WalError::DiskFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            WalError::InvalidIdempotencyKey(_) => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            // The key names an earlier, different request: retrying cannot help.
            WalError::IdempotencyKeyReused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            // Like a full disk: the log takes no more until an operator acts.
            WalError::SeqExhausted(_) => (StatusCode::INSUFFICIENT_STORAGE, "log_exhausted"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        // axum's text names the field and what was wrong with it.
        bad_request(format!("bad query string: {}", e.body_text()))
    }
}

/// Any path the API does not have.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    not_found(format!(
        "no such endpoint: {}; see /v1/openapi.json for what this API offers",
        uri.path()
    ))
}

/// A path the API has, with a method it does not take there.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}; see /v1/openapi.json", uri.path()),
    )
}

/// Last line of defence: an error answer that some layer produced as plain
/// text (axum's own rejections, a timeout) becomes the JSON shape too.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError::new(status, code, message).into_response()
}
