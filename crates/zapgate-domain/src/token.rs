//! API tokens: 256 random bits behind a public prefix, stored only as SHA-256.
//!
//! SHA-256 (not a slow password hash) is right here: the secret has 256 bits of
//! entropy, so there is nothing to brute-force, and the hash sits on the hot
//! path of every request.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;

pub const TOKEN_PREFIX: &str = "zg_live_";

/// `bytes` random bytes as URL-safe base64: secrets that travel in URLs
/// (the token of a provider webhook URL).
pub fn random_url_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A token secret as the caller holds it. Shown once, never stored or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Wraps a presented secret. Any string is accepted: an unknown or
    /// malformed one simply hashes to something that matches nothing.
    pub fn presented(s: &str) -> Self {
        Self(s.to_owned())
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The secret itself, for the one response that reveals it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// A short, non-secret hint (`zg_live_AbC…`) for listings and logs.
    pub fn hint(&self) -> String {
        self.0.chars().take(TOKEN_PREFIX.len() + 4).collect::<String>() + "…"
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({})", self.hint())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Comparison whose time does not depend on where the inputs differ.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths
/// only, not on where they differ: for comparing secrets a caller presents.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hash_stably() {
        let a = ApiToken::generate();
        let b = ApiToken::generate();
        assert_ne!(a, b);
        assert!(a.reveal().starts_with(TOKEN_PREFIX));
        assert_eq!(a.reveal().len(), TOKEN_PREFIX.len() + 43);
        assert!(a.hash().ct_eq(&ApiToken::presented(a.reveal()).hash()));
        assert!(!a.hash().ct_eq(&b.hash()));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let a = ApiToken::generate();
        assert!(!format!("{a:?}").contains(a.reveal()));
    }
}
