//! OpenAPI 3.1 generated from the handlers (utoipa), and a self-contained
//! interactive docs page (no CDN: it works offline and in air-gapped installs).

use axum::Json;
use axum::response::Html;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "zapgate", description = "WhatsApp messaging gateway: REST API v1."),
    paths(
        super::health::live, super::health::ready,
        super::tenants::create, super::tenants::list, super::tenants::create_token, super::tenants::list_tokens,
        super::tenants::revoke_token,
        super::providers::create, super::providers::list, super::providers::get, super::providers::update,
        super::providers::delete, super::circuits::list,
        super::instances::create, super::instances::list, super::instances::get, super::instances::update, super::instances::delete,
        super::sessions::qr, super::sessions::pairing_code, super::sessions::logout,
        super::messages::send, super::messages::get, super::messages::cancel, super::messages::list,
        super::dead_letters::list, super::dead_letters::replay,
        super::templates::create, super::templates::list, super::templates::get, super::templates::delete,
        super::audiences::create, super::audiences::list, super::audiences::get, super::audiences::delete,
        super::audiences::add_members, super::audiences::list_members, super::audiences::delete_member,
        super::schedules::create, super::schedules::list, super::schedules::get, super::schedules::update,
        super::schedules::delete, super::schedules::runs,
        super::campaigns::create, super::campaigns::list, super::campaigns::get, super::campaigns::add_recipients,
        super::campaigns::rejects, super::campaigns::start, super::campaigns::pause, super::campaigns::resume,
        super::campaigns::cancel,
        super::webhooks::create, super::webhooks::list, super::webhooks::get, super::webhooks::update,
        super::webhooks::delete, super::webhooks::secret, super::webhooks::rotate_secret, super::webhooks::deliveries,
        super::webhooks::delivery, super::webhooks::replay, super::webhooks::replay_failed,
        super::media::upload, super::media::download, super::media::info, super::media::delete,
        super::inbound::list, super::inbound::get, super::inbound::mark_read,
        super::chatwoot::create, super::chatwoot::list, super::chatwoot::get, super::chatwoot::update,
        super::chatwoot::delete,
        super::ingest::receive, super::ingest::handshake,
    ),
    modifiers(&BearerAuth),
    tags((name = "messages", description = "Send messages and follow their status"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["tenant", "admin"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/docs.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_openapi_31_and_lists_every_route() {
        let spec = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
        for p in [
            "/v1/messages",
            "/v1/messages/{message_id}",
            "/v1/instances",
            "/v1/tenants",
            "/v1/dead-letters",
            "/v1/audiences/{audience_id}/members",
            "/v1/schedules/{schedule_id}/runs",
        ] {
            assert!(spec["paths"][p].is_object(), "{p} missing");
        }
    }
}
