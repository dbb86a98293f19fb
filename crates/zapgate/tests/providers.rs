//! Provider servers shared by many instances (seed 002's provider manager):
//! pools managed by the super-admin, placement of new instances on the
//! least-loaded enabled server with room, settings that reach placed
//! instances at once — against two `zapgate-sim` WAHA servers over HTTP.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

async fn pool(s: &Server, body: Value) -> Value {
    let r = s.post(ADMIN, "/v1/providers", &body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn place(s: &Server, token: &str, body: Value) -> reqwest::Response {
    s.post(token, "/v1/instances", &body).await
}

async fn connection(s: &Server, token: &str, instance: &str) -> Value {
    let v: Value = s.get(token, &format!("/v1/instances/{instance}")).await.json().await.unwrap();
    v["connection"].clone()
}

/// Fetches the instance's QR code (the simulator "scans" it a moment later)
/// and waits until the instance is connected.
async fn link_by_qr(s: &Server, token: &str, instance: &str) {
    link_by_qr_of(s, token, instance, true).await
}

async fn link_by_qr_of(s: &Server, token: &str, instance: &str, raw: bool) {
    assert_eq!(connection(s, token, instance).await["state"], "waiting_for_qr");
    let r = s.get(token, &format!("/v1/instances/{instance}/qr")).await;
    assert_eq!(r.status(), 200);
    let qr: Value = r.json().await.unwrap();
    if raw {
        assert!(qr["qr"].as_str().unwrap().starts_with("2@"), "{qr}");
    } else {
        assert!(qr["qr"].is_null(), "{qr}");
    }
    assert!(qr["image"].as_str().unwrap().starts_with("data:image/png;base64,"), "{qr}");
    wait_connected(s, token, instance).await;
}

/// Waits until the provider reports the instance connected.
async fn wait_connected(s: &Server, token: &str, instance: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while connection(s, token, instance).await["state"] != "connected" {
        assert!(std::time::Instant::now() < deadline, "never connected: {}", connection(s, token, instance).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn instances_go_to_the_least_loaded_server_with_room_and_follow_its_settings() {
    let (sim_a_addr, sim_a) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (sim_b_addr, sim_b) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let a = pool(
        &s,
        json!({"kind": "waha", "name": "waha-a", "base_url": format!("http://{sim_a_addr}/"),
                            "api_key": "key-a", "capacity": 2}),
    )
    .await;
    let b = pool(
        &s,
        json!({"kind": "waha", "name": "waha-b", "base_url": format!("http://{sim_b_addr}"),
                            "api_key": "key-b", "capacity": 1}),
    )
    .await;
    assert_eq!(a["instances"], 0);
    assert_eq!(b["enabled"], true);
    let listed = s.get(ADMIN, "/v1/providers").await.text().await.unwrap();
    assert!(!listed.contains("key-a") && !listed.contains("key-b"), "credentials are never shown: {listed}");

    let (_, token) = s.tenant("acme").await;
    let mut placed = Vec::new();
    for n in 0..3 {
        let r = place(&s, &token, json!({"name": format!("n{n}"), "provider": "waha"})).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        assert!(!v.to_string().contains("key-"), "nor through the instance: {v}");
        placed.push(v);
    }
    // Ties go to the older server: a (0 → 1), b (0 → 1), a (1 → 2).
    let on: Vec<&Value> = placed.iter().map(|i| &i["provider_id"]).collect();
    assert_eq!(on, [&a["id"], &b["id"], &a["id"]]);
    let full = place(&s, &token, json!({"name": "n3", "provider": "waha"})).await;
    assert_eq!(full.status(), 409);
    let v: Value = full.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_provider_capacity", "{v}");
    let counts: Value = s.get(ADMIN, "/v1/providers").await.json().await.unwrap();
    let instances: Vec<&Value> = counts["data"].as_array().unwrap().iter().map(|p| &p["instances"]).collect();
    assert_eq!(instances, [&json!(2), &json!(1)]);

    // Each got its session on its server; the one on b is linked by its QR.
    assert_eq!(sim_a.waha_session_names().len(), 3, "default + 2: {:?}", sim_a.waha_session_names());
    let on_b = placed[1]["id"].as_str().unwrap();
    assert!(sim_b.waha_session_names().contains(&on_b.to_owned()));
    link_by_qr(&s, &token, on_b).await;
    // A send goes to the instance's server, under its session, with the server's key.
    let id = s.send_text(&token, on_b, "+5511999998888", "Olá").await;
    s.wait_status(&token, &id, &["sent"], WAIT).await;
    let got: Vec<_> = sim_b.received().into_iter().filter(|r| r.path == "/api/sendText").collect();
    assert_eq!(got.len(), 1, "only server b saw it");
    assert!(!sim_a.received().iter().any(|r| r.path == "/api/sendText"));
    assert_eq!(got[0].token.as_deref(), Some("key-b"));
    assert_eq!(got[0].body["session"], on_b, "the session is named by the instance id");

    // A new key reaches the placed instance without touching it.
    let r = s
        .http
        .patch(s.url(&format!("/v1/providers/{}", b["id"].as_str().unwrap())))
        .bearer_auth(ADMIN)
        .json(&json!({"api_key": "key-b2", "capacity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["capacity"].clone(), v["instances"].clone()), (json!(2), json!(1)));
    // Workers re-read instances every 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let id = s.send_text(&token, on_b, "+5511999998888", "again").await;
    s.wait_status(&token, &id, &["sent"], WAIT).await;
    assert_eq!(sim_b.received().last().unwrap().token.as_deref(), Some("key-b2"));

    // A disabled server gets no new instance; one asked for by id must fit.
    let a_path = format!("/v1/providers/{}", a["id"].as_str().unwrap());
    let r = s.http.patch(s.url(&a_path)).bearer_auth(ADMIN).json(&json!({"enabled": false})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = place(&s, &token, json!({"name": "n4", "provider": "waha", "provider_id": a["id"]})).await;
    assert_eq!(r.status(), 409, "a disabled server takes none");
    let r = place(&s, &token, json!({"name": "n4", "provider": "waha"})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["provider_id"], b["id"]);

    // A server with instances cannot go; once they are deleted it can.
    let r = s.http.delete(s.url(&a_path)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 409);
    for i in [&placed[0], &placed[2]] {
        let r = s.http.delete(s.url(&format!("/v1/instances/{}", i["id"].as_str().unwrap()))).bearer_auth(&token);
        assert_eq!(r.send().await.unwrap().status(), 204);
    }
    let r = s.http.delete(s.url(&a_path)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get(ADMIN, &a_path).await.status(), 404);
}

#[tokio::test]
async fn bad_pools_and_placements_get_clear_errors() {
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let (_, token) = s.tenant("acme").await;
    assert_eq!(s.get(&token, "/v1/providers").await.status(), 401, "super-admin only");
    for (body, field) in [
        (json!({"kind": "cloud_api", "name": "x", "base_url": "http://127.0.0.1:1"}), "kind"),
        (json!({"kind": "sandbox", "name": "x", "base_url": "http://127.0.0.1:1"}), "kind"),
        (json!({"kind": "evolution", "name": "x", "base_url": "http://127.0.0.1:1"}), "settings"),
        (json!({"kind": "waha", "name": "x", "base_url": "ftp://127.0.0.1:1"}), "base_url"),
        (json!({"kind": "waha", "name": "", "base_url": "http://127.0.0.1:1"}), "name"),
        (json!({"kind": "waha", "name": "x", "base_url": "http://127.0.0.1:1", "capacity": 0}), "capacity"),
    ] {
        let r = s.post(ADMIN, "/v1/providers", &body).await;
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["details"]["field"], field, "{body}: {v}");
    }
    // No evolution server yet: placing one is a clear 409.
    let r = place(&s, &token, json!({"name": "x", "provider": "evolution"})).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("every enabled, healthy evolution provider is full or down"));
    let waha = pool(&s, json!({"kind": "waha", "name": "w", "base_url": "http://127.0.0.1:1"})).await;
    for (body, status) in [
        // A server of another kind, a malformed id, a kind that is never placed.
        (json!({"name": "x", "provider": "evolution", "provider_id": waha["id"]}), 409),
        (json!({"name": "x", "provider": "waha", "provider_id": "prv_nope"}), 422),
        (json!({"name": "x", "provider": "sandbox", "provider_id": waha["id"]}), 422),
        // Settings come from the server, not the request.
        (json!({"name": "x", "provider": "waha", "provider_id": waha["id"], "config": {"session": "s"}}), 422),
    ] {
        let r = place(&s, &token, body.clone()).await;
        assert_eq!(r.status(), status, "{body}: {}", r.text().await.unwrap());
    }
}

/// Concurrent placements, through two API processes in distributed mode,
/// never put more instances on a server than its capacity.
#[tokio::test]
async fn concurrent_placements_never_exceed_a_capacity() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let env = [("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true"), ("ZAPGATE_TENANT_RATE_LIMIT", "0")];
    let (sim, _sim) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let first = Arc::new(Server::start_role(if distributed() { "api" } else { "serve" }, dir.clone(), &env).await);
    let apis = if distributed() {
        vec![first.clone(), Arc::new(Server::start_role("api", dir.clone(), &env).await)]
    } else {
        vec![first.clone()]
    };
    for name in ["p1", "p2"] {
        pool(&first, json!({"kind": "waha", "name": name, "base_url": format!("http://{sim}"), "capacity": 5})).await;
    }
    let (_, token) = first.tenant("acme").await;
    let mut tasks = Vec::new();
    for n in 0..30 {
        let (api, token) = (apis[n % apis.len()].clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            place(&api, &token, json!({"name": format!("i{n}"), "provider": "waha"})).await.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 10, "{statuses:?}");
    assert!(statuses.iter().all(|s| [201, 409].contains(s)), "{statuses:?}");
    let v: Value = first.get(ADMIN, "/v1/providers").await.json().await.unwrap();
    for p in v["data"].as_array().unwrap() {
        assert_eq!(p["instances"], 5, "{p}");
    }
}

/// How one pooled kind looks at the simulator.
struct Pooled {
    kind: &'static str,
    create_path: &'static str,
    create_body: fn(&str) -> Value,
    sessions: fn(&zapgate_sim::Sim) -> Vec<String>,
    /// Whether the connection state names the linked number.
    reports_phone: bool,
    /// Whether the QR answer has the raw string (UAZAPI gives the image only).
    qr_raw: bool,
    /// The request that asks the server to reconnect an instance.
    reconnect_path: fn(&str) -> String,
    sim: zapgate_sim::Provider,
}

const WAHA: Pooled = Pooled {
    kind: "waha",
    create_path: "/api/sessions",
    create_body: |ins| json!({"name": ins, "start": true}),
    sessions: zapgate_sim::Sim::waha_session_names,
    reports_phone: true,
    qr_raw: true,
    reconnect_path: |ins| format!("/api/sessions/{ins}/restart"),
    sim: zapgate_sim::Provider::Waha,
};

const EVOLUTION: Pooled = Pooled {
    kind: "evolution",
    create_path: "/instance/create",
    create_body: |ins| json!({"instanceName": ins, "integration": "WHATSAPP-BAILEYS", "qrcode": true}),
    sessions: zapgate_sim::Sim::evolution_instance_names,
    reports_phone: false,
    qr_raw: true,
    reconnect_path: |ins| format!("/instance/connect/{ins}"),
    sim: zapgate_sim::Provider::Evolution,
};

const UAZAPI: Pooled = Pooled {
    kind: "uazapi",
    create_path: "/instance/init",
    create_body: |ins| json!({"name": ins}),
    sessions: zapgate_sim::Sim::uazapi_instance_names,
    reports_phone: true,
    qr_raw: false,
    reconnect_path: |_| "/instance/connect".into(),
    sim: zapgate_sim::Provider::Uazapi,
};

#[tokio::test]
async fn a_placed_uazapi_instance_is_created_linked_logged_out_and_removed_at_its_server() {
    session_lifecycle(UAZAPI).await;
}

#[tokio::test]
async fn a_placed_waha_session_is_created_linked_logged_out_and_removed_at_its_server() {
    session_lifecycle(WAHA).await;
}

#[tokio::test]
async fn a_placed_evolution_instance_is_created_linked_logged_out_and_removed_at_its_server() {
    session_lifecycle(EVOLUTION).await;
}

/// zapgate owns the session of a placed instance: made on the server at
/// create, linked by QR, logged out and removed there with the instance.
async fn session_lifecycle(p: Pooled) {
    let (addr, sim) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    pool(&s, json!({"kind": p.kind, "name": "w", "base_url": format!("http://{addr}"), "api_key": "k"})).await;
    let (_, token) = s.tenant("acme").await;
    let r = place(&s, &token, json!({"name": "loja", "provider": p.kind})).await;
    assert_eq!(r.status(), 201);
    let ins = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let create = sim.received().into_iter().find(|r| r.path == p.create_path).expect("the session was created");
    // Where the session reports its events (WAHA's `config.webhooks`,
    // Evolution's `webhook`; UAZAPI sets it with a call of its own) is
    // zapgate's ingest route for the pool, checked in tests/ingest.rs.
    let mut body = create.body.clone();
    let hook = body.as_object_mut().and_then(|o| o.remove("webhook").or_else(|| o.remove("config")));
    assert_eq!(body, (p.create_body)(&ins));
    if let Some(hook) = hook {
        assert!(hook.to_string().contains(&format!("/providers/{}/prv_", p.kind)), "{hook}");
    }
    assert_eq!(create.token.as_deref(), Some("k"));

    let png = s.http.get(s.url(&format!("/v1/instances/{ins}/qr"))).bearer_auth(&token).header("Accept", "image/png");
    let png = png.send().await.unwrap();
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG"), "a PNG");
    link_by_qr_of(&s, &token, &ins, p.qr_raw).await;
    let c = connection(&s, &token, &ins).await;
    if p.reports_phone {
        assert_eq!(c["phone"], "5511900000000", "{c}");
    }
    let r = s.get(&token, &format!("/v1/instances/{ins}/qr")).await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_waiting_for_qr");
    let id = s.send_text(&token, &ins, "+5511999998888", "linked").await;
    // The server's receipts (through zapgate's webhook) may move it on at once.
    s.wait_status(&token, &id, &["sent", "delivered", "read"], WAIT).await;

    let r = s.post(&token, &format!("/v1/instances/{ins}/logout"), &json!({})).await;
    assert_eq!(r.status(), 204);
    assert_eq!(connection(&s, &token, &ins).await["state"], "disconnected");

    // The server failing to remove it keeps the instance, unless forced.
    sim.push_faults(vec![zapgate_sim::Fault { status: 500, code: 0, message: None, retry_after: None }; 2]);
    let path = format!("/v1/instances/{ins}");
    assert_eq!(s.http.delete(s.url(&path)).bearer_auth(&token).send().await.unwrap().status(), 502);
    assert_eq!(s.get(&token, &path).await.status(), 200, "still there");
    let forced = s.http.delete(s.url(&format!("{path}?force=true"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(forced.status(), 204);
    assert_eq!(s.get(&token, &path).await.status(), 404);

    // Removed at the server when it can be.
    let r = place(&s, &token, json!({"name": "two", "provider": p.kind})).await;
    let two = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert!((p.sessions)(&sim).contains(&two));
    let r = s.http.delete(s.url(&format!("/v1/instances/{two}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(!(p.sessions)(&sim).contains(&two), "{:?}", (p.sessions)(&sim));

    // A server that cannot create the session: 502, and nothing stays placed on it.
    sim.push_faults([zapgate_sim::Fault { status: 503, code: 0, message: None, retry_after: None }]);
    let r = place(&s, &token, json!({"name": "three", "provider": p.kind})).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "provider_unavailable");
    let v: Value = s.get(ADMIN, "/v1/providers").await.json().await.unwrap();
    assert_eq!(v["data"][0]["instances"], 0, "{v}");
}

async fn health_of(s: &Server, id: &Value) -> Value {
    let v: Value = s.get(ADMIN, &format!("/v1/providers/{}", id.as_str().unwrap())).await.json().await.unwrap();
    v["health"].clone()
}

async fn wait_health(s: &Server, id: &Value, healthy: bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let h = health_of(s, id).await;
        if h["healthy"] == healthy && !h["checked_at"].is_null() {
            return h;
        }
        assert!(std::time::Instant::now() < deadline, "never healthy={healthy}: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Servers are checked every interval; one that fails its checks gets no
/// new instance (even with fewer instances), and gets them again once it
/// answers.
#[tokio::test]
async fn unhealthy_servers_get_no_new_instances_until_they_recover() {
    let (addr, sim) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true"), ("ZAPGATE_PROVIDER_HEALTH_INTERVAL", "200ms")])
        .await;
    // The older server would win ties, but nothing listens there.
    let down = pool(&s, json!({"kind": "waha", "name": "down", "base_url": "http://127.0.0.1:1"})).await;
    let up =
        pool(&s, json!({"kind": "waha", "name": "up", "base_url": format!("http://{addr}"), "api_key": "k"})).await;
    let h = wait_health(&s, &down["id"], false).await;
    assert!(!h["error"].is_null() && !h["unhealthy_since"].is_null(), "{h}");
    wait_health(&s, &up["id"], true).await;
    assert!(sim.received().iter().any(|r| r.path == "GET /api/sessions" && r.token.as_deref() == Some("k")));
    let labels = format!("server=\"{}\"", down["id"].as_str().unwrap());
    assert_eq!(s.metric("zapgate_provider_server_up", &labels).await, 0.0);

    let (_, token) = s.tenant("acme").await;
    for n in 0..2 {
        let r = place(&s, &token, json!({"name": format!("n{n}"), "provider": "waha"})).await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.json::<Value>().await.unwrap()["provider_id"], up["id"], "never the server that is down");
    }

    // The healthy one fails its checks for a while: nowhere to place.
    sim.push_faults(vec![zapgate_sim::Fault { status: 500, code: 0, message: None, retry_after: None }; 10]);
    wait_health(&s, &up["id"], false).await;
    let r = place(&s, &token, json!({"name": "n2", "provider": "waha"})).await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "no_provider_capacity");
    // It answers again: placements resume.
    let h = wait_health(&s, &up["id"], true).await;
    assert!(h["error"].is_null() && h["unhealthy_since"].is_null(), "{h}");
    let r = place(&s, &token, json!({"name": "n2", "provider": "waha"})).await;
    assert_eq!(r.status(), 201);
}

/// New instances pace as their provider allows unless told otherwise: Cloud
/// API 80/s (up to 1000), Baileys-based servers 50/s in bursts of 100.
#[tokio::test]
async fn each_kind_has_its_default_pace_and_ceiling() {
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true"), ("ZAPGATE_INSTANCE_RATE", "500")]).await;
    let (_, token) = s.tenant("acme").await;
    let cloud = json!({"access_token": "t", "phone_number_id": "106540352242922", "base_url": "http://127.0.0.1:1"});
    let waha = json!({"base_url": "http://127.0.0.1:1", "session": "default"});
    for (body, pace) in [
        (json!({"name": "c", "provider": "cloud_api", "config": cloud}), (80, 80)),
        (json!({"name": "w", "provider": "waha", "config": waha}), (50, 100)),
        (json!({"name": "s"}), (500, 500)),
        (json!({"name": "w2", "provider": "waha", "config": waha, "rate_limit_per_second": 20}), (20, 20)),
    ] {
        let r = place(&s, &token, body.clone()).await;
        assert_eq!(r.status(), 201, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!((v["rate_per_sec"].as_u64().unwrap(), v["burst"].as_u64().unwrap()), pace, "{body}");
    }
    let cloud2 = json!({"access_token": "t", "phone_number_id": "106540352242923", "base_url": "http://127.0.0.1:1"});
    let too_fast = json!({"name": "c2", "provider": "cloud_api", "config": cloud2, "rate_limit_per_second": 1001});
    let r = place(&s, &token, too_fast).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("at most 1000/s"));
    let list: Value = s.get(&token, "/v1/instances").await.json().await.unwrap();
    let cloud_id =
        list["data"].as_array().unwrap().iter().find(|i| i["provider"] == "cloud_api").unwrap()["id"].clone();
    let path = format!("/v1/instances/{}", cloud_id.as_str().unwrap());
    let r = s.http.patch(s.url(&path)).bearer_auth(&token).json(&json!({"rate_limit_per_second": 2000})).send().await;
    assert_eq!(r.unwrap().status(), 422, "nor faster later");
    let r = s.http.patch(s.url(&path)).bearer_auth(&token).json(&json!({"rate_limit_per_second": 1000})).send().await;
    assert_eq!(r.unwrap().status(), 200);
}

/// A sim, a server (private addresses allowed, plus `env`) with one pool of
/// `kind` on the sim, and a tenant's instance placed on it: (sim, its
/// address, server, token, instance id, pool id).
async fn placed_on_sim(
    kind: &str,
    env: &[(&str, &str)],
) -> (std::sync::Arc<zapgate_sim::Sim>, std::net::SocketAddr, Server, String, String, String) {
    let (addr, sim) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut env = env.to_vec();
    env.push(("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true"));
    let s = Server::start(&env).await;
    let pool = pool(&s, json!({"kind": kind, "name": "w", "base_url": format!("http://{addr}"), "api_key": "k"})).await;
    let (_, token) = s.tenant("acme").await;
    let r = place(&s, &token, json!({"name": "loja", "provider": kind})).await;
    assert_eq!(r.status(), 201);
    let ins = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    (sim, addr, s, token, ins, pool["id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_waha_session_dropped_without_a_webhook_is_found_by_polls_and_reconnected_with_backoff() {
    dropped_connection(WAHA).await;
}

#[tokio::test]
async fn an_evolution_instance_dropped_without_a_webhook_is_found_by_polls_and_reconnected_with_backoff() {
    dropped_connection(EVOLUTION).await;
}

#[tokio::test]
async fn a_uazapi_instance_dropped_without_a_webhook_is_found_by_polls_and_reconnected_with_backoff() {
    dropped_connection(UAZAPI).await;
}

async fn stored_state(s: &Server, token: &str, instance: &str) -> (String, String) {
    let v: Value = s.get(token, &format!("/v1/instances/{instance}")).await.json().await.unwrap();
    (v["state"].as_str().unwrap_or("none").to_owned(), v["state_reason"].as_str().unwrap_or_default().to_owned())
}

async fn wait_stored_state(s: &Server, token: &str, instance: &str, state: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while stored_state(s, token, instance).await.0 != state {
        assert!(std::time::Instant::now() < deadline, "never {state}: {:?}", stored_state(s, token, instance).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An instance whose connection drops with no webhook saying so (the
/// provider missed it, or its webhook was lost) is not shown open for long:
/// the status polls find it closed, the server is asked to reconnect it and
/// it is open again. While the server keeps refusing, reconnect requests
/// back off (doubling, capped, jittered) instead of following every poll;
/// once it answers again, the instance comes back. A logged-out instance is
/// never asked to reconnect.
async fn dropped_connection(p: Pooled) {
    let env = [
        ("ZAPGATE_INSTANCE_POLL_INTERVAL", "100ms"),
        ("ZAPGATE_INSTANCE_RECONNECT_BASE", "400ms"),
        ("ZAPGATE_INSTANCE_RECONNECT_MAX", "1600ms"),
        // This test changes the state more than 5 times a minute on purpose.
        ("ZAPGATE_INSTANCE_FLAP_LIMIT", "50"),
    ];
    let (sim, _, s, token, ins, _) = placed_on_sim(p.kind, &env).await;
    // Never linked: polled, not asked to reconnect (that would only start a QR flow).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path = (p.reconnect_path)(&ins);
    assert!(!sim.received().iter().any(|r| r.path == path), "{:?}", sim.received());
    // UAZAPI starts its QR flow when the QR is first asked for.
    assert_eq!(s.get(&token, &format!("/v1/instances/{ins}/qr")).await.status(), 200);
    link_by_qr_of(&s, &token, &ins, p.qr_raw).await;
    wait_stored_state(&s, &token, &ins, "open").await;
    let asked = || sim.received().iter().filter(|r| r.provider == p.kind && r.path == path).count();
    // (Evolution and UAZAPI link by QR through the same route.)
    let linked_with = asked();
    let reconnects = || asked() - linked_with;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reconnects(), 0, "an open instance is not asked to reconnect");

    // Dropped silently: a poll finds it closed, a reconnect brings it back.
    let closed_before = s.metric("zapgate_instance_state_changes_total", "state=\"closed\"").await;
    assert!(sim.drop_connection(&ins, false));
    let deadline = std::time::Instant::now() + WAIT;
    while s.metric("zapgate_instance_state_changes_total", "state=\"closed\"").await <= closed_before {
        assert!(std::time::Instant::now() < deadline, "the dropped connection was never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_stored_state(&s, &token, &ins, "open").await;
    assert_eq!(reconnects(), 1, "one request brought it back");

    // The server refuses reconnects: they back off instead of following each poll.
    sim.add_rule(zapgate_sim::FaultRule {
        route: zapgate_sim::RouteKind::Session,
        provider: p.sim,
        status: Some(500),
        ..Default::default()
    });
    assert!(sim.drop_connection(&ins, false));
    let started = std::time::Instant::now();
    let mut seen_at = Vec::new();
    while started.elapsed() < Duration::from_millis(4500) {
        let n = reconnects() - 1;
        while seen_at.len() < n {
            seen_at.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Delays drawn from [d/2, d] for d = 400 ms, 800 ms, then 1.6 s (the
    // cap): at most 7 requests in 4.5 s, at least 3 (polls every 100 ms
    // would have made about 45).
    assert!((3..=7).contains(&seen_at.len()), "reconnect requests at {seen_at:?}");
    let gaps: Vec<Duration> = seen_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= Duration::from_millis(150)), "{gaps:?}");
    assert!(
        gaps.iter().skip(2).all(|g| *g >= Duration::from_millis(700)),
        "capped at 1.6 s, drawn from its upper half: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(1900)),
        "never longer than the cap (plus a poll): {gaps:?}"
    );
    assert_eq!(stored_state(&s, &token, &ins).await.0, "closed", "refused reconnects are no state changes");

    sim.clear_rules();
    wait_stored_state(&s, &token, &ins, "open").await;

    // Logged out on purpose: it stays logged out.
    let r = s.post(&token, &format!("/v1/instances/{ins}/logout"), &json!({})).await;
    assert_eq!(r.status(), 204);
    let asked = reconnects();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(stored_state(&s, &token, &ins).await, ("logged_out".to_owned(), "logged_out".to_owned()));
    assert_eq!(reconnects(), asked, "a logged-out instance is not asked to reconnect");
}

async fn circuit_of(s: &Server, pool_id: &str) -> (String, Value) {
    let pool: Value = s.get(ADMIN, &format!("/v1/providers/{pool_id}")).await.json().await.unwrap();
    let all: Value = s.get(ADMIN, "/v1/circuits").await.json().await.unwrap();
    (pool["circuit"].as_str().unwrap().to_owned(), all["data"].clone())
}

/// A provider server that fails every send opens its circuit in the worker,
/// and the API shows it (on the pool and in `GET /v1/circuits`) while
/// messages wait; when the server answers again the circuit closes, the
/// messages go out and the API shows it closed.
#[tokio::test]
async fn an_open_circuit_is_shown_on_its_pool_and_in_the_circuit_list_until_it_closes() {
    let env = [
        ("ZAPGATE_PROVIDER_CIRCUIT_FAILURES", "2"),
        ("ZAPGATE_PROVIDER_CIRCUIT_COOLDOWN", "300ms"),
        ("ZAPGATE_MESSAGE_RETRY_BASE", "100ms"),
    ];
    let (sim, addr, s, token, ins, pool_id) = placed_on_sim("waha", &env).await;
    let pool_id = pool_id.as_str();
    link_by_qr(&s, &token, &ins).await;
    assert_eq!(circuit_of(&s, pool_id).await, ("closed".to_owned(), json!([])));
    let list: Value = s.get(ADMIN, "/v1/providers").await.json().await.unwrap();
    assert_eq!(list["data"][0]["circuit"], "closed", "{list}");
    assert_eq!(s.get(&token, "/v1/circuits").await.status(), 401, "admin only");

    sim.add_rule(zapgate_sim::FaultRule {
        route: zapgate_sim::RouteKind::Send,
        provider: zapgate_sim::Provider::Waha,
        status: Some(503),
        ..Default::default()
    });
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(s.send_text(&token, &ins, &format!("+55119999900{n:02}"), "hi").await);
    }
    let deadline = std::time::Instant::now() + WAIT;
    let listed = loop {
        let (state, listed) = circuit_of(&s, pool_id).await;
        if state != "closed" {
            break listed;
        }
        assert!(std::time::Instant::now() < deadline, "the circuit never showed open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let c = &listed[0];
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(c["provider"], "waha");
    assert_eq!(c["endpoint"], format!("waha http://{addr}"));
    assert!(["open", "half_open"].contains(&c["state"].as_str().unwrap()), "{c}");
    assert_eq!(c["workers"], 1);
    assert!(c["since"].is_string(), "{c}");

    sim.clear_rules();
    for id in &ids {
        s.wait_status(&token, id, &["sent", "delivered", "read"], WAIT).await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    while circuit_of(&s, pool_id).await != ("closed".to_owned(), json!([])) {
        assert!(std::time::Instant::now() < deadline, "still shown open: {:?}", circuit_of(&s, pool_id).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_waha_session_links_with_a_pairing_code() {
    pairing_code(WAHA).await;
}

#[tokio::test]
async fn an_evolution_instance_links_with_a_pairing_code() {
    pairing_code(EVOLUTION).await;
}

#[tokio::test]
async fn a_uazapi_instance_links_with_a_pairing_code() {
    pairing_code(UAZAPI).await;
}

/// Linking without a camera: the provider's pairing code for the phone
/// (the simulators put the phone's last digits in it, so the code proves
/// the phone reached them), typed on the phone, links the instance; once
/// linked there is none; a bad phone is named.
async fn pairing_code(p: Pooled) {
    let (sim, _, s, token, ins, _) = placed_on_sim(p.kind, &[]).await;
    let path = format!("/v1/instances/{ins}/pairing-code");

    let r = s.post(&token, &path, &json!({"phone": "12"})).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["details"]["field"], "phone");

    let r = s.post(&token, &path, &json!({"phone": "+55 11 99999-8888"})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let code = r.json::<Value>().await.unwrap()["code"].as_str().unwrap().to_owned();
    assert!(code.contains("8888"), "the code was made for the phone: {code}");
    if p.kind != "evolution" {
        // (Evolution takes the number in the query string, which the sim's log does not keep.)
        let asked =
            sim.received().into_iter().rev().find(|r| r.path.contains("request-code") || r.path.contains("connect"));
        assert!(asked.expect("asked").body.to_string().contains("5511999998888"));
    }
    wait_connected(&s, &token, &ins).await;
    let r = s.post(&token, &path, &json!({"phone": "+5511999998888"})).await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_waiting_for_qr");
}
