//! `zapgate campaign create|status`: campaigns through a running zapgate's
//! API, with progress bars (the upload, then with `--follow` the sending).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[derive(Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign from a CSV file and start it. The header row names the recipient
    /// column (`to` or `phone`) and one column per template variable; `,` or `;`.
    Create(CreateArgs),
    /// Show a campaign's progress (with --follow, until it completes or is cancelled).
    Status {
        /// Campaign id (`cmp_…`).
        campaign_id: String,
        /// Keep showing the progress until the campaign ends.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args)]
pub struct ApiArgs {
    /// Base URL of a running zapgate API.
    #[arg(long, env = "ZAPGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The tenant's API token.
    #[arg(long, env = "ZAPGATE_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Args)]
pub struct CreateArgs {
    /// The recipients (CSV, streamed: any size).
    #[arg(long, value_name = "FILE")]
    csv: PathBuf,
    /// The instance (`ins_…`) to send from.
    #[arg(long)]
    instance: String,
    /// The tenant template (`tpl_…`) each row fills.
    #[arg(long)]
    template: String,
    /// Campaign name [default: the file name].
    #[arg(long)]
    name: Option<String>,
    /// high, normal or low [default: low, so one-off messages overtake it].
    #[arg(long)]
    priority: Option<String>,
    /// Messages per second, below the instance's rate.
    #[arg(long, value_name = "N")]
    rate: Option<u32>,
    /// Start releasing at this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    start_at: Option<String>,
    /// Leave it a draft (start it later with POST /v1/campaigns/{id}/start).
    #[arg(long)]
    no_start: bool,
    /// After starting, show the sending progress until the campaign ends.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    api: ApiArgs,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        zapgate_server::egress::install_tls_provider();
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Self { http, base: args.url.trim_end_matches('/').to_owned(), token: args.token.clone() })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let r = req.bearer_auth(&self.token).send().await.with_context(|| format!("reaching {}", self.base))?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"].as_str().map_or_else(|| body.to_string(), str::to_owned);
            bail!("{status}: {message}");
        }
        Ok(body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub async fn run(command: CampaignCommand) -> anyhow::Result<()> {
    match command {
        CampaignCommand::Create(args) => create(args).await,
        CampaignCommand::Status { campaign_id, follow, api } => {
            let api = Api::new(&api)?;
            if follow {
                follow_progress(&api, &campaign_id).await
            } else {
                let c = api.call(api.http.get(api.url(&format!("/v1/campaigns/{campaign_id}")))).await?;
                println!("{}", serde_json::to_string_pretty(&c)?);
                Ok(())
            }
        }
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let mut file = tokio::fs::File::open(&args.csv).await.with_context(|| format!("opening {}", args.csv.display()))?;
    let size = file.metadata().await?.len();
    let name = args.name.clone().unwrap_or_else(|| {
        args.csv.file_stem().map_or_else(|| "campaign".into(), |s| s.to_string_lossy().into_owned())
    });
    let mut body = json!({"name": name, "instance_id": args.instance, "template_id": args.template});
    for (key, value) in [("priority", args.priority.clone()), ("start_at", args.start_at.clone())] {
        if let Some(v) = value {
            body[key] = json!(v);
        }
    }
    if let Some(rate) = args.rate {
        body["rate_per_second"] = json!(rate);
    }
    let campaign = api.call(api.http.post(api.url("/v1/campaigns")).json(&body)).await?;
    let id = campaign["id"].as_str().context("the API answered without a campaign id")?.to_owned();
    eprintln!("campaign {id} created");

    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template"),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let reader_bar = bar.clone();
    let reader = tokio::spawn(async move {
        loop {
            let mut chunk = vec![0u8; 256 * 1024];
            match file.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    reader_bar.inc(n as u64);
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let upload = api.http.post(api.url(&format!("/v1/campaigns/{id}/recipients"))).header("content-type", "text/csv");
    let added = api.call(upload.body(reqwest::Body::wrap_stream(stream))).await;
    reader.abort();
    bar.finish_and_clear();
    let added = added.context("uploading the recipients")?;
    eprintln!(
        "{} rows: {} recipients, {} duplicates, {} invalid",
        added["rows"], added["added"], added["duplicates"], added["invalid"]
    );
    for r in added["rejects"].as_array().into_iter().flatten().take(10) {
        eprintln!("  row {}: {}: {}", r["row"], r["field"], r["message"]);
    }
    if added["invalid"].as_u64().unwrap_or(0) > 10 {
        eprintln!("  (all of them: GET /v1/campaigns/{id}/rejects)");
    }
    if args.no_start {
        println!("{id}");
        return Ok(());
    }
    api.call(api.http.post(api.url(&format!("/v1/campaigns/{id}/start")))).await.context("starting the campaign")?;
    eprintln!("campaign {id} started");
    println!("{id}");
    if args.follow {
        follow_progress(&api, &id).await?;
    }
    Ok(())
}

/// A bar of recipients done (sent, failed or cancelled) until the campaign ends.
async fn follow_progress(api: &Api, id: &str) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("sending {bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("a valid template"),
    );
    loop {
        let c = api.call(api.http.get(api.url(&format!("/v1/campaigns/{id}")))).await?;
        let p = &c["progress"];
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        bar.set_length(n("total"));
        bar.set_position(n("sent") + n("failed") + n("cancelled"));
        bar.set_message(format!(
            "delivered {} read {} failed {} [{}]",
            n("delivered"),
            n("read"),
            n("failed"),
            c["state"]
        ));
        if matches!(c["state"].as_str(), Some("completed" | "cancelled")) {
            bar.finish();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
