//! `zapgate-sim`: the simulated providers as a process.

use clap::Parser;
use std::time::Duration;

/// Simulated WhatsApp providers over real HTTP, for trying zapgate (and
/// testing it) without a phone: the WhatsApp Cloud API, Evolution API v2,
/// WAHA and UAZAPI on one port.
///
/// Routes:
///   POST /{version}/{phone_number_id}/messages      Cloud API send (Bearer token)
///   POST /instance/create, GET /instance/connect/{i}, GET /instance/connectionState/{i},
///   DELETE /instance/logout/{i}, DELETE /instance/delete/{i}, GET /instance/fetchInstances,
///   POST /message/{sendText|sendMedia}/{i}           Evolution API v2 (apikey header)
///   POST /api/sessions, GET /api/sessions[/{s}], DELETE /api/sessions/{s},
///   POST /api/sessions/{s}/logout, GET /api/{s}/auth/qr,
///   POST /api/{sendText|sendImage|sendVideo|sendFile}   WAHA (X-Api-Key)
///   POST /instance/init, GET /instance/all (admintoken header), POST /instance/connect,
///   GET /instance/status, POST /instance/disconnect, DELETE /instance,
///   POST /send/{text|media}                         UAZAPI (token header)
///   POST /_sim/faults    queue answers for the next calls, e.g.
///                        [{"status":429,"code":130429,"retry_after":1},{"status":500,"code":0}]
///   GET  /_sim/received  every call received (path, token, body)
///   POST /_sim/faults/rules  add fault rules (one or a list), tried in order, e.g.
///                        {"route":"send","provider":"waha","error_rate":0.2,"status":500}
///                        route: send | session | status | * (default *)
///                        provider: cloud | evolution | waha | uazapi | * (default *)
///                        error_rate (0..1, default 1), status, code (Cloud API body),
///                        message, retry_after (s), latency_ms {"min","max"} (uniform;
///                        alone it only delays), timeout (hang timeout_ms, default 120000,
///                        then 504), reset (TCP RST, no answer), count (expire after N hits)
///   GET  /_sim/faults/rules  the rules in force (id, hits, remaining)
///   DELETE /_sim/faults/rules  remove every rule
///   POST /_sim/flap      {"instance":"name","period_ms":200}: the instance (WAHA session,
///                        Evolution instance, UAZAPI name or token) is connected now and
///                        flips connected/disconnected every period; changes are posted to
///                        its webhook (session.status, connection.update, connection)
///   GET  /_sim/flap      the flapping instances
///   DELETE /_sim/flap[/{instance}]  stop flapping (all, or one), left connected
///   GET  /_sim/counters  {"attempts","sends","unique","duplicates","by_route",
///                        "by_message_id","by_content"}: sends accepted, and the same
///                        message (instance, recipient, text, client reference) sent twice
///   POST /_sim/counters/reset  start counting from zero
///   GET  /{version}/{waba_id}/message_templates   Cloud API templates (Meta's sample one)
///
/// With --chatwoot-listen, a simulated Chatwoot on that address too: its
/// application API (contacts, contact inboxes, conversations, messages;
/// api_access_token `cw-agent-token`), Active Storage file links, and
///   POST /_sim/chatwoot/fire  {"url","secret"?,"id","conversation_id","phone","content",
///                        "message_type"?,"private"?}: fire a signed `message_created`
///                        webhook (Chatwoot's payload) at a zapgate integration
///   GET  /_sim/chatwoot/conversations  what integrations posted
///
/// New WAHA sessions, Evolution and UAZAPI instances wait for a QR scan; the scan
/// "happens" --qr-scan-after the QR code is first fetched. The WAHA session
/// `default` exists from the start, connected.
///
/// Point zapgate at it with the instance's `base_url` (and
/// ZAPGATE_WEBHOOK_ALLOW_PRIVATE=true, since it listens on loopback).
#[derive(Parser)]
#[command(name = "zapgate-sim", version, verbatim_doc_comment)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9099")]
    listen: std::net::SocketAddr,
    /// How long after its QR code is first fetched a session counts as scanned.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    qr_scan_after: Duration,
    /// Also run a simulated Chatwoot here (its application API with token
    /// `cw-agent-token`, Active Storage links, and `POST /_sim/chatwoot/fire`
    /// to fire `message_created` webhooks at a zapgate integration).
    #[arg(long)]
    chatwoot_listen: Option<std::net::SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let (addr, sim) = zapgate_sim::start(cli.listen).await?;
        sim.set_qr_scan_after(cli.qr_scan_after);
        eprintln!("zapgate-sim listening on http://{addr}");
        if let Some(at) = cli.chatwoot_listen {
            let (_, base) = zapgate_sim::chatwoot::start_on(at).await?;
            eprintln!("simulated Chatwoot on {base}");
        }
        std::future::pending::<()>().await;
        Ok(())
    })
}
