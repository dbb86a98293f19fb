//! The HTTP call every adapter makes: POST a JSON body, read status,
//! `Retry-After` and body; transport failures become retryable errors.

use crate::ProviderError;
use std::time::Duration;

pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Result<Answer, ProviderError> {
    let network = |e: reqwest::Error| ProviderError::Unavailable {
        code: if e.is_timeout() { "timeout".into() } else { "network".into() },
        message: e.to_string(),
        retry_after: None,
    };
    let res = req.send().await.map_err(network)?;
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = res.bytes().await.map_err(network)?.to_vec();
    Ok(Answer { status, retry_after, body })
}

/// The usual mapping of an HTTP status for providers without finer codes:
/// 429 waits, 401/403 and 5xx retry (spending attempts), the rest fails.
pub fn classify_status(
    prefix: &str,
    status: u16,
    message: String,
    retry_after: Option<Duration>,
    retryable: &[u16],
) -> ProviderError {
    let code = format!("{prefix}_{status}");
    match status {
        429 => ProviderError::Throttled { code, retry_after },
        s if s >= 500 || retryable.contains(&s) => ProviderError::Unavailable { code, message, retry_after },
        _ => ProviderError::Rejected { code, message },
    }
}

/// `{base}/{segments…}?{query}`, each segment escaped (a base with a path
/// prefix keeps it). `base` was checked as an http(s) URL when stored.
pub fn url(base: &str, segments: &[&str], query: &[(&str, &str)]) -> Result<reqwest::Url, ProviderError> {
    let bad = || ProviderError::Rejected { code: "bad_config".into(), message: format!("bad base_url {base:?}") };
    let mut url = reqwest::Url::parse(base).map_err(|_| bad())?;
    url.path_segments_mut().map_err(|_| bad())?.pop_if_empty().extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}
