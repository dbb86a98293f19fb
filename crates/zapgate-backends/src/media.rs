//! Media bytes by key. A local directory here; S3 in distributed mode.

use async_trait::async_trait;
use std::io;
use std::path::PathBuf;

#[async_trait]
pub trait MediaStore: Send + Sync + 'static {
    async fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// `Ok(None)` when no object has this key.
    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    async fn delete(&self, key: &str) -> io::Result<bool>;
}

/// Objects as files under one directory. Keys are restricted to
/// `[A-Za-z0-9._-]` so a key can never escape the directory.
pub struct LocalMediaStore {
    root: PathBuf,
}

impl LocalMediaStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let ok = !key.is_empty()
            && key.len() <= 200
            && !key.starts_with('.')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok { Ok(self.root.join(key)) } else { Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid media key")) }
    }
}

#[async_trait]
impl MediaStore for LocalMediaStore {
    async fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key)?;
        tokio::fs::create_dir_all(&self.root).await?;
        // Write then rename, so a reader never sees a half-written object.
        let tmp = path.with_extension("partial");
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, &path).await
    }

    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, key: &str) -> io::Result<bool> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete_and_refuse_escaping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let m = LocalMediaStore::new(dir.path().join("media"));
        m.put("a.png", b"png").await.unwrap();
        assert_eq!(m.get("a.png").await.unwrap().as_deref(), Some(&b"png"[..]));
        assert!(m.delete("a.png").await.unwrap());
        assert_eq!(m.get("a.png").await.unwrap(), None);
        assert!(m.put("../x", b"").await.is_err());
        assert!(m.get("a/b").await.is_err());
    }
}
