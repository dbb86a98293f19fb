//! The WhatsApp Cloud API facade: the Graph API's routes under `/graph`, so
//! Cloud API clients (SDKs, Chatwoot's WhatsApp Cloud inbox) work against
//! zapgate with only their base URL changed (`http://host:port/graph`).
//!
//! It translates and nothing more: a send goes through the native accept
//! (`messages::accept`: durable before the answer, paced, retried, reported),
//! media through the native media store. Instances are addressed by their
//! numeric `phone_number_id` / `waba_id`, media by its id as digits
//! ([`zapgate_domain::MediaId::to_graph`]), messages by `wamid.<zapgate id>`.
//! Any version segment (`v13.0` … `v26.0`) is accepted, or none.

mod error;
mod media;
mod messages;

pub use error::{GraphError, GraphResult};

use super::AppState;
use super::extract::{bearer, tenant_for};
use crate::http::error::ApiError;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::get;
use zapgate_backends::InstanceRecord;
use zapgate_domain::{ApiToken, TenantId};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/graph/{a}/{b}", get(two).post(two).delete(two))
        .route("/graph/{a}/{b}/{c}", get(three).post(three))
        // Media uploads read their body with their own limit (ZAPGATE_MEDIA_MAX_BYTES),
        // JSON bodies with ZAPGATE_MAX_BODY_BYTES (`messages::send`).
        .layer(DefaultBodyLimit::disable())
}

/// The tenant of a facade request: the Bearer token, or `?access_token=`
/// (older Chatwoot releases pass it so).
pub struct GraphAuth(pub TenantId);

impl FromRequestParts<AppState> for GraphAuth {
    type Rejection = GraphError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = match bearer(parts) {
            Ok(t) => t,
            Err(missing) if parts.headers.get(axum::http::header::AUTHORIZATION).is_none() => {
                let query = parts.uri.query().unwrap_or("");
                let found = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "access_token")
                    .map(|(_, v)| ApiToken::presented(v.trim()));
                found.ok_or(missing)?
            }
            Err(bad) => return Err(bad.into()),
        };
        Ok(GraphAuth(tenant_for(state, token).await?))
    }
}

/// `v20.0`, `v13`: a Graph API version segment.
fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else { return false };
    let mut parts = rest.splitn(2, '.');
    let digits = |p: &str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    parts.next().is_some_and(digits) && parts.next().is_none_or(digits)
}

fn unknown_path(path: &str) -> GraphError {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, "route_not_found", format!("Unknown path components: {path}"))
        .into()
}

/// `{node}/{edge}` calls: with a version first, or versionless.
async fn edge(s: AppState, tenant: TenantId, node: &str, edge: &str, req: Request) -> GraphResult<Response> {
    match (req.method().as_str(), edge) {
        ("POST", "messages") => messages::send(&s, tenant, node, req).await,
        ("POST", "media") => media::upload(&s, tenant, node, req).await,
        ("GET", "message_templates") => messages::templates(&s, &tenant, node).await,
        _ => Err(unknown_path(&format!("/{node}/{edge}"))),
    }
}

/// `/graph/{version}/{node}/{edge}`.
async fn three(
    GraphAuth(tenant): GraphAuth,
    State(s): State<AppState>,
    Path((v, node, e)): Path<(String, String, String)>,
    req: Request,
) -> GraphResult<Response> {
    if !is_version(&v) {
        return Err(unknown_path(&format!("/{v}/{node}/{e}")));
    }
    edge(s, tenant, &node, &e, req).await
}

/// `/graph/{version}/{media_id}` (GET, DELETE), or a versionless `/graph/{node}/{edge}`.
async fn two(
    GraphAuth(tenant): GraphAuth,
    State(s): State<AppState>,
    Path((a, b)): Path<(String, String)>,
    req: Request,
) -> GraphResult<Response> {
    if !is_version(&a) {
        return edge(s, tenant, &a, &b, req).await;
    }
    match req.method().as_str() {
        "GET" => media::info(&s, &tenant, &b).await,
        "DELETE" => media::delete(&s, &tenant, &b).await,
        _ => Err(unknown_path(&format!("/{a}/{b}"))),
    }
}

/// The tenant's instance a Graph id names (`phone_number_id`, or `waba_id`
/// with `by_waba`); 404 (Meta's code 100, subcode 33) for any other.
async fn instance(s: &AppState, tenant: &TenantId, id: &str, by_waba: bool) -> GraphResult<InstanceRecord> {
    let all = s.backends.store.list_instances(tenant).await?;
    let found = all.into_iter().find(|i| if by_waba { i.waba_id == id } else { i.phone_number_id == id });
    found.ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "Unsupported request. Object with ID '{id}' does not exist, cannot be loaded due to missing \
                 permissions, or does not support this operation"
            ),
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::is_version;

    #[test]
    fn version_segments() {
        for ok in ["v13.0", "v26.0", "v20", "v1.5"] {
            assert!(is_version(ok), "{ok}");
        }
        for bad in ["", "v", "20.0", "v20.", "v20.0.1", "vx", "106540352242922", "messages"] {
            assert!(!is_version(bad), "{bad}");
        }
    }
}
