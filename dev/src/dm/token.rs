//! `GET /msi/token`: the App Service managed-identity protocol (api-version 2019-08-01)
//! as spoken by azure_identity's `ManagedIdentityCredential` when `IDENTITY_ENDPOINT`
//! and `IDENTITY_HEADER` are set.

use std::sync::Arc;

use warp::http::HeaderMap;
use warp::reply::Response;

use super::reply;
use super::state::{State, TokenRequest};

fn error(status: u16, code: &str, description: &str) -> Response {
    reply::json(
        status,
        &serde_json::json!({
            "error": code,
            "error_description": description,
            "statusCode": status,
        }),
        &[],
    )
}

pub(crate) async fn handle(state: Arc<State>, query: &str, headers: &HeaderMap) -> Response {
    let delay = state.faults.token_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    };
    let mut record = TokenRequest {
        resource: param("resource"),
        client_id: param("client_id"),
        object_id: param("object_id"),
        msi_res_id: param("msi_res_id").or_else(|| param("mi_res_id")),
        api_version: param("api-version"),
        identity_header_ok: headers
            .get("x-identity-header")
            .is_some_and(|v| v.as_bytes() == state.identity_header.as_bytes()),
        metadata_header: headers
            .get("metadata")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
        status: 200,
        at: std::time::Instant::now(),
    };
    tracing::info!(
        resource = ?record.resource,
        client_id = ?record.client_id,
        "kusto-dev: token request"
    );

    let response = if let Some(status) = state.faults.token_failure() {
        record.status = status;
        error(
            status,
            "injected_failure",
            "Injected failure (kusto-dev emulator)",
        )
    } else if !record.identity_header_ok {
        record.status = 400;
        error(
            400,
            "invalid_request",
            "X-IDENTITY-HEADER is missing or does not match IDENTITY_HEADER",
        )
    } else if record.api_version.is_none() {
        record.status = 400;
        error(
            400,
            "invalid_request",
            "api-version query parameter is required",
        )
    } else if let Some(resource) = record.resource.clone() {
        let (token, lifetime) = state.issue_token(&resource);
        let expires_on =
            time::OffsetDateTime::now_utc().unix_timestamp() + lifetime.as_secs() as i64;
        let mut body = serde_json::json!({
            "access_token": token,
            // azure_identity requires a *string* of unix seconds here.
            "expires_on": expires_on.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        });
        if let Some(id) = &record.client_id {
            body["client_id"] = serde_json::Value::String(id.clone());
        }
        reply::json(200, &body, &[])
    } else {
        record.status = 400;
        error(
            400,
            "invalid_request",
            "resource query parameter is required",
        )
    };
    state.log().token.push(record);
    response
}
