//! The credential endpoints on the daemon's loopback listener (the dashboard's), for tools'
//! backends: `POST /v1/credentials/verify` checks a token as `agentcage cred verify` does and
//! also consults revocations; `GET /.well-known/jwks.json` serves the node's public keys.
//! Neither needs the dashboard token: a token is its own bearer, and public keys are public.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::server::Shared;
use crate::credentials::{Expected, Invalid};

/// The largest verify request read.
const MAX_BODY: usize = 16 * 1024;

/// What a backend asks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    token: String,
    tool: String,
    method: String,
    resource: String,
}

/// Whether the request is for one of these endpoints.
pub fn wants(req: &Request<Incoming>) -> bool {
    matches!(
        (req.method(), req.uri().path()),
        (&Method::POST, "/v1/credentials/verify") | (&Method::GET, "/.well-known/jwks.json")
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Answers a request [`wants`] accepted: 200 with the claims for a valid token, 401 with the
/// reason for an invalid one, 400 for a malformed request.
pub async fn serve(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::GET {
        let jwks = serde_json::to_value(shared.state().jwks()).unwrap_or_default();
        return json(StatusCode::OK, &jwks);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let message = format!("unreadable request (at most {MAX_BODY} bytes): {e}");
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": message }),
            );
        }
    };
    let ask: VerifyRequest = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            let message = format!("expected {{token, tool, method, resource}}: {e}");
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": message }),
            );
        }
    };
    let want = Expected {
        tool: &ask.tool,
        method: &ask.method,
        resource: &ask.resource,
    };
    let verdict = shared.state().verify_credential(&ask.token, want);
    match verdict {
        Ok(claims) => json(
            StatusCode::OK,
            &serde_json::json!({ "valid": true, "claims": claims }),
        ),
        Err(e) => json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "valid": false, "reason": e.to_string(), "revoked": e == Invalid::Revoked }),
        ),
    }
}
