//! The one HTTP client for calls zapgate makes to addresses tenants give it
//! (webhooks today; Chatwoot attachments, provider media and failure URLs
//! later). It refuses loopback, private, link-local and other internal
//! addresses — at connect time through its own DNS resolver (so a name that
//! re-resolves to an internal address is caught on every connection and
//! every redirect) and for IP-literal URLs before sending and on each
//! redirect — unless `ZAPGATE_WEBHOOK_ALLOW_PRIVATE=true`.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
}

#[derive(Clone)]
pub struct Egress {
    client: reqwest::Client,
    allow_private: bool,
}

/// How names become addresses: the system's resolver, or a test's.
type Lookup = Arc<
    dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

fn system_lookup() -> Lookup {
    Arc::new(|host| Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) }))
}

impl Egress {
    pub fn new(allow_private: bool, timeout: Duration) -> Result<Self, EgressError> {
        Self::with_lookup(allow_private, timeout, system_lookup())
    }

    fn with_lookup(allow_private: bool, timeout: Duration, lookup: Lookup) -> Result<Self, EgressError> {
        install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("zapgate/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver { allow_private, lookup }))
            // A proxy would resolve names itself, past the guarded resolver.
            .no_proxy()
            // Webhooks are POSTs: a redirect would turn them into GETs (and
            // carry the tenant's headers to another host), so a 3xx is an
            // answer, i.e. a failed attempt, not something to follow.
            .redirect(redirect::Policy::none())
            .build()?;
        Ok(Self { client, allow_private })
    }

    /// Parses a URL a tenant gave and checks it may be called.
    pub fn check_url(&self, raw: &str) -> Result<reqwest::Url, EgressError> {
        let url = reqwest::Url::parse(raw).map_err(|e| EgressError::Refused(format!("not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::Refused("the URL must be http or https".into()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(EgressError::Refused("the URL has no host".into()));
        }
        check_host(&url, self.allow_private).map_err(EgressError::Refused)?;
        Ok(url)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// One TLS crypto provider for the process: ring (no aws-lc build dependency).
/// Reads at most `max` bytes of an answer from a server a tenant chose: a
/// public server can still stream without end. Err when there is more.
pub async fn read_capped(mut res: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| format!("reading the answer failed: {e}"))? {
        if bytes.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn check_host(url: &reqwest::Url, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let refused = || {
        Err(format!(
            "{} is an internal address; zapgate only calls public addresses unless ZAPGATE_WEBHOOK_ALLOW_PRIVATE=true",
            url.host_str().unwrap_or_default()
        ))
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => refused(),
        Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => refused(),
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") => refused(),
        _ => Ok(()),
    }
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still routed in places)
                || (s[..6] == [0; 6]) // ::/96, IPv4-compatible
                || (s[0] == 0x64 && s[1] == 0xff9b)) // NAT64 (64:ff9b::/96 and 64:ff9b:1::/48) can reach internal v4
        }
    }
}

/// Checks every answer at connect time, so the address connected to is the
/// address checked: a name that resolves to a public address when the URL is
/// checked and to an internal one later (DNS rebinding) gets nowhere.
struct GuardedResolver {
    allow_private: bool,
    lookup: Lookup,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let lookup = (self.lookup)(name.as_str().to_owned());
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?;
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| allow_private || is_public(a.ip())).collect();
            if allowed.is_empty() {
                return Err("the address is not allowed (internal, or it does not resolve)".into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_to_internal_hosts_are_refused_unless_allowed() {
        let strict = Egress::new(false, Duration::from_secs(1)).unwrap();
        for u in [
            "http://127.0.0.1:8080/x",
            "http://localhost/x",
            "http://[::1]/",
            "http://169.254.169.254/latest",
            "ftp://example.com/",
            "not a url",
        ] {
            assert!(strict.check_url(u).is_err(), "{u}");
        }
        assert!(strict.check_url("https://example.com/hook").is_ok());
        let open = Egress::new(true, Duration::from_secs(1)).unwrap();
        assert!(open.check_url("http://127.0.0.1:8080/x").is_ok());
    }

    /// A name whose answer changes between calls (DNS rebinding): the URL
    /// passes the check (it is a name), the first connection goes to the
    /// public answer, and when the answer turns internal the connection is
    /// refused before it is made — the local server never sees a request.
    #[tokio::test]
    async fn a_dns_answer_that_turns_internal_is_refused_at_connect() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while server.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        // First a public address nothing answers at (192.88.99.0/24 is
        // public and unrouted here), then loopback, where the server is.
        let lookup: Lookup = Arc::new(move |_host| {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            Box::pin(async move {
                let ip: IpAddr = if first { "192.88.99.1".parse().unwrap() } else { "127.0.0.1".parse().unwrap() };
                Ok(vec![SocketAddr::new(ip, 0)])
            })
        });
        let egress = Egress::with_lookup(false, Duration::from_millis(500), lookup).unwrap();
        let url = egress.check_url(&format!("http://rebinding.example:{port}/hook")).unwrap();
        let first = egress.client().post(url.clone()).send().await;
        assert!(first.is_err(), "nothing answers at the public address");
        let second = egress.client().post(url).send().await.expect_err("the internal answer is refused");
        assert!(format!("{second:?}").contains("not allowed"), "{second:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the name was resolved for each connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection reached the internal address");
    }
}
