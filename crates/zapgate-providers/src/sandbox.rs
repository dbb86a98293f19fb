//! The `sandbox` provider: answers like WhatsApp, sends nothing anywhere.
//!
//! Every send gets a provider id (`sbx_…`), then `delivered` and `read`
//! statuses after configurable delays. Magic recipients exercise each
//! failure path by hand:
//!
//! | recipient       | behaviour |
//! |-----------------|-----------|
//! | `+15550110000`  | rejected for good (code `sandbox_rejected`) → `failed` |
//! | `+1555012000N`  | unavailable on the first N calls for each message (N = 1…9), then sent |
//! | `+15550129999`  | always unavailable → retried until `dead` |
//! | `+15550130000`  | never answers → the send timeout fires (retryable) |
//! | `+15550140000`  | sent, never delivered (ack timeout stays open) |
//! | `+15550150000`  | sent, then a `failed` status callback |
//!
//! Call counts live in memory: a restart starts them again.
//!
//! Each accepted send can be appended to a receipts file (JSON lines), which
//! is how tests count what reached the "provider" across crashes.

use crate::{OutboundMessage, Provider, ProviderError, SendAccepted, StatusReport, StatusSink};
use async_trait::async_trait;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use zapgate_domain::{ChatId, MessageId, MessageStatus, Timestamp};

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Simulated latency of each send call.
    pub send_latency: Duration,
    /// Delay from sent to the `delivered` callback.
    pub delivered_after: Duration,
    /// Delay from delivered to the `read` callback.
    pub read_after: Duration,
    /// Append one JSON line per accepted send here.
    pub receipts_file: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            send_latency: Duration::ZERO,
            delivered_after: Duration::from_secs(1),
            read_after: Duration::from_secs(2),
            receipts_file: None,
        }
    }
}

/// What a magic recipient asks the sandbox to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    Reject,
    FailTimes(u32),
    AlwaysUnavailable,
    Hang,
    NeverDelivered,
    FailAfterSent,
}

impl Behaviour {
    pub fn of(to: &ChatId) -> Self {
        let ChatId::Phone(d) = to else {
            return Behaviour::Normal;
        };
        match d.as_str() {
            "15550110000" => Behaviour::Reject,
            "15550129999" => Behaviour::AlwaysUnavailable,
            "15550130000" => Behaviour::Hang,
            "15550140000" => Behaviour::NeverDelivered,
            "15550150000" => Behaviour::FailAfterSent,
            s if s.len() == 11 && s.starts_with("1555012000") => {
                let n = u32::from(s.as_bytes()[10] - b'0');
                if n == 0 { Behaviour::Normal } else { Behaviour::FailTimes(n) }
            }
            _ => Behaviour::Normal,
        }
    }
}

pub struct Sandbox {
    cfg: SandboxConfig,
    delivered: mpsc::UnboundedSender<Pending>,
    receipts: Option<Mutex<File>>,
    /// Calls so far per message, for the fail-N-times numbers.
    calls: Mutex<HashMap<MessageId, u32>>,
}

impl Sandbox {
    pub fn new(cfg: SandboxConfig, sink: StatusSink) -> std::io::Result<Self> {
        let receipts = match &cfg.receipts_file {
            Some(p) => Some(Mutex::new(File::options().create(true).append(true).open(p)?)),
            None => None,
        };
        let (delivered, delivered_rx) = mpsc::unbounded_channel();
        let (read, read_rx) = mpsc::unbounded_channel();
        tokio::spawn(emit_in_order(delivered_rx, sink.clone(), Some((read, cfg.read_after))));
        tokio::spawn(emit_in_order(read_rx, sink, None));
        Ok(Self { cfg, delivered, receipts, calls: Mutex::new(HashMap::new()) })
    }

    fn record_receipt(&self, msg: &OutboundMessage, provider_id: &str) {
        let Some(f) = &self.receipts else { return };
        let line = serde_json::json!({
            "message_id": msg.message_id,
            "instance_id": msg.instance_id,
            "to": msg.to.key(),
            "attempt": msg.attempt,
            "provider_message_id": provider_id,
            "at_ms": Timestamp::now().as_millis(),
        });
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line (O_APPEND): a crash right after still leaves it
        // in the file, which is what the durability tests rely on.
        if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
            tracing::warn!(error = %e, "sandbox: could not write receipt");
        }
    }

    fn report_later(&self, provider_id: String, behaviour: Behaviour) {
        let status = match behaviour {
            Behaviour::NeverDelivered => return,
            Behaviour::FailAfterSent => MessageStatus::Failed,
            _ => MessageStatus::Delivered,
        };
        let _ = self.delivered.send((Instant::now() + self.cfg.delivered_after, provider_id, status));
    }
}

type Pending = (Instant, String, MessageStatus);

/// Emits each report at its due time. Delays are fixed per sandbox, so
/// reports arrive in due order and one FIFO per stage is a timer wheel:
/// a pending callback costs a queue slot, not a sleeping task.
async fn emit_in_order(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    sink: StatusSink,
    then: Option<(mpsc::UnboundedSender<Pending>, Duration)>,
) {
    while let Some((due, provider_id, status)) = rx.recv().await {
        tokio::time::sleep_until(due.into()).await;
        let failed = status == MessageStatus::Failed;
        let report = StatusReport {
            provider_message_id: provider_id.clone(),
            status,
            at: Timestamp::now(),
            error_code: failed.then(|| "sandbox_failed".to_owned()),
            error_message: failed.then(|| "the handset refused it".to_owned()),
        };
        if sink.send(report).is_err() {
            return;
        }
        if let Some((next, after)) = &then
            && !failed
        {
            let _ = next.send((Instant::now() + *after, provider_id, MessageStatus::Read));
        }
    }
}

#[async_trait]
impl Provider for Sandbox {
    fn kind(&self) -> &'static str {
        "sandbox"
    }

    /// Always connected: there is no phone to link.
    async fn connection(&self, _config: &serde_json::Value) -> Result<Option<crate::Connection>, ProviderError> {
        Ok(Some(crate::Connection { state: crate::ConnectionState::Connected, phone: None }))
    }

    /// Its failures are per message (magic numbers), never an outage.
    fn endpoint(&self, _config: &serde_json::Value) -> Option<String> {
        None
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError> {
        if !self.cfg.send_latency.is_zero() {
            tokio::time::sleep(self.cfg.send_latency).await;
        }
        let behaviour = Behaviour::of(&msg.to);
        let unavailable = || ProviderError::Unavailable {
            code: "sandbox_unavailable".into(),
            message: "the sandbox refused this attempt as asked by the recipient number".into(),
            retry_after: None,
        };
        match behaviour {
            Behaviour::Reject => {
                return Err(ProviderError::Rejected {
                    code: "sandbox_rejected".into(),
                    message: "recipient is not on WhatsApp (sandbox magic number)".into(),
                });
            }
            Behaviour::AlwaysUnavailable => return Err(unavailable()),
            Behaviour::FailTimes(n) => {
                let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
                let seen = calls.entry(msg.message_id.clone()).or_default();
                *seen += 1;
                if *seen <= n {
                    return Err(unavailable());
                }
                calls.remove(&msg.message_id);
            }
            Behaviour::Hang => {
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        let provider_message_id = format!("sbx_{}", uuid::Uuid::new_v4().simple());
        self.record_receipt(msg, &provider_message_id);
        self.report_later(provider_message_id.clone(), behaviour);
        Ok(SendAccepted { provider_message_id, wa_id: msg.to.e164().map(|e| e[1..].to_owned()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: &str, attempt: u32) -> OutboundMessage {
        OutboundMessage {
            attempt,
            ..crate::test_message(serde_json::json!({"type": "text", "text": {"body": "hi"}}), to)
        }
    }

    fn sandbox() -> (Sandbox, tokio::sync::mpsc::UnboundedReceiver<StatusReport>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = SandboxConfig {
            delivered_after: Duration::from_millis(5),
            read_after: Duration::from_millis(5),
            ..Default::default()
        };
        (Sandbox::new(cfg, tx).unwrap(), rx)
    }

    #[tokio::test]
    async fn normal_send_reports_delivered_then_read() {
        let (s, mut rx) = sandbox();
        let ok = s.send(&msg("+5511999998888", 0)).await.unwrap();
        assert!(ok.provider_message_id.starts_with("sbx_"));
        assert_eq!(ok.wa_id.as_deref(), Some("5511999998888"));
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!((a.status, b.status), (MessageStatus::Delivered, MessageStatus::Read));
        assert_eq!(a.provider_message_id, ok.provider_message_id);
    }

    #[tokio::test]
    async fn magic_numbers_fail_as_documented() {
        let (s, mut rx) = sandbox();
        assert!(matches!(s.send(&msg("+15550110000", 0)).await, Err(ProviderError::Rejected { .. })));
        let twice = msg("+15550120002", 0);
        assert!(matches!(s.send(&twice).await, Err(ProviderError::Unavailable { .. })));
        assert!(matches!(s.send(&twice).await, Err(ProviderError::Unavailable { .. })));
        assert!(s.send(&twice).await.is_ok());
        assert!(matches!(s.send(&msg("+15550129999", 9)).await, Err(ProviderError::Unavailable { .. })));
        let hang = tokio::time::timeout(Duration::from_millis(50), s.send(&msg("+15550130000", 0))).await;
        assert!(hang.is_err(), "the hang number never answers");
        s.send(&msg("+15550150000", 0)).await.unwrap();
        // The fail-after-sent number reports failed (after the earlier normal sends' reports).
        let mut saw_failed = false;
        while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            saw_failed |= r.status == MessageStatus::Failed;
        }
        assert!(saw_failed);
    }
}
