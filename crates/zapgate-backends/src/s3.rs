//! Media bytes in an S3-compatible bucket (AWS S3, MinIO, …) for the distributed mode,
//! through `object_store`: one object per key at the bucket's root, the same keys and
//! answers as [`LocalMediaStore`](crate::LocalMediaStore).
//!
//! TLS is rustls with ring through the workspace's `reqwest` (`rustls-no-provider`) and
//! request signing uses ring: no aws-lc, no OpenSSL. [`S3MediaStore::new`] installs ring as
//! the process's default rustls provider if none is installed yet (as the server does at
//! start-up), so the store works in any process.

use crate::StoreError;
use crate::media::MediaStore;
use async_trait::async_trait;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use std::fmt;
use std::io;

/// Where the bucket is and how to sign for it.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// `None` for AWS itself (virtual-hosted addressing,
    /// `https://<bucket>.s3.<region>.amazonaws.com/<key>`); `Some` for any other
    /// S3-compatible server (MinIO, moto, …), e.g. `http://127.0.0.1:9000`, with path-style
    /// addressing (`<endpoint>/<bucket>/<key>`).
    pub endpoint: Option<String>,
    /// Signed into every request; S3-compatible servers accept any name (`us-east-1`).
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Allows a plain `http://` endpoint (a local MinIO or moto); otherwise only `https://`.
    pub allow_http: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Objects in one bucket. Keys are restricted to `[A-Za-z0-9._-]` (at most 200 bytes, no
/// leading dot), as in the local store, so the two accept and refuse the same keys.
///
/// Cheap to clone (the HTTP client is shared). The bucket must exist: `object_store` does
/// not create buckets.
#[derive(Clone, Debug)]
pub struct S3MediaStore {
    store: AmazonS3,
}

impl S3MediaStore {
    /// Builds the client; makes no request (a wrong endpoint, bucket or credentials show up
    /// as errors from the first `put`/`get`/`delete`). Fails on an invalid configuration.
    pub fn new(config: S3Config) -> Result<Self, StoreError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if config.bucket.is_empty() {
            return Err(StoreError::Config("S3 media: the bucket name is empty".into()));
        }
        // `new`, not `from_env`: nothing but `config` (no AWS_* variables) decides where
        // media goes.
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_allow_http(config.allow_http)
            // AWS: `https://<bucket>.s3.<region>.amazonaws.com` (AWS's recommended addressing);
            // a custom endpoint: `<endpoint>/<bucket>` (what MinIO and moto expect).
            .with_virtual_hosted_style_request(config.endpoint.is_none());
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        let store = builder.build().map_err(|e| StoreError::Config(format!("S3 media: {e}")))?;
        Ok(Self { store })
    }
}

fn location(key: &str) -> io::Result<Path> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(Path::from(key)) } else { Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid media key")) }
}

fn io_error(e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            io::ErrorKind::PermissionDenied
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

#[async_trait]
impl MediaStore for S3MediaStore {
    /// One `PUT`: S3 replaces an object atomically, so a reader never sees a half-written one.
    async fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = location(key)?;
        self.store.put(&path, PutPayload::from(bytes.to_vec())).await.map_err(io_error)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = location(key)?;
        let result = match self.store.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        match result.bytes().await {
            Ok(b) => Ok(Some(b.into())),
            // Deleted between the answer's head and its body.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    /// S3 answers a `DELETE` the same whether or not the object existed, so a `HEAD` first
    /// tells which (`false` for a missing key). Two concurrent deletes of one key may both
    /// answer `true`.
    async fn delete(&self, key: &str) -> io::Result<bool> {
        let path = location(key)?;
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(io_error(e)),
        }
        self.store.delete(&path).await.map_err(io_error)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3Config {
        S3Config {
            bucket: "media".into(),
            endpoint: Some("http://127.0.0.1:1/".into()),
            region: "us-east-1".into(),
            access_key_id: "id".into(),
            secret_access_key: "very-secret".into(),
            allow_http: true,
        }
    }

    #[test]
    fn keys_are_those_of_the_local_store() {
        for ok in ["a.png", "A-b_c.9", "x", &"k".repeat(200)] {
            assert_eq!(location(ok).unwrap().as_ref(), ok, "{ok}");
        }
        for bad in ["", ".hidden", "..", "../x", "a/b", "a\\b", "a b", "é", "%2e%2e", &"k".repeat(201)] {
            assert_eq!(location(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn the_secret_stays_out_of_debug_output_and_an_empty_bucket_is_refused() {
        assert!(!format!("{:?}", config()).contains("very-secret"));
        let store = S3MediaStore::new(config()).expect("valid config");
        assert!(!format!("{store:?}").contains("very-secret"), "{store:?}");
        let err = S3MediaStore::new(S3Config { bucket: String::new(), ..config() }).unwrap_err();
        assert!(matches!(err, StoreError::Config(_)), "{err}");
    }
}
