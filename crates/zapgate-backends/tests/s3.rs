//! `S3MediaStore` against a real S3-compatible server: each test starts its own
//! `moto_server` (`pip install 'moto[server]'`) on a free port and creates its bucket over
//! plain HTTP. Without `moto_server` on PATH the tests skip, unless `ZAPGATE_TEST_S3=1`
//! (set by the distributed pass of `scripts/test.sh`), which makes them fail instead.
//! The key checks need no server and always run.

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zapgate_backends::{Backends, MediaStore, S3Config, S3MediaStore};

/// A `moto_server` child process, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `moto_server`; `None` (after a skip line) when it is not installed and
    /// `ZAPGATE_TEST_S3` is not `1`.
    async fn start(test: &str) -> Option<Moto> {
        let required = std::env::var("ZAPGATE_TEST_S3").is_ok_and(|v| v == "1");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => {
                println!(
                    "skipped {test}: moto_server is not on PATH (pip install 'moto[server]'; \
                     ZAPGATE_TEST_S3=1 makes this a failure)"
                );
                return None;
            }
            Err(e) => panic!(
                "ZAPGATE_TEST_S3=1 but moto_server cannot be started ({e}): install it with \
                 pip install 'moto[server]' and make sure moto_server is on PATH"
            ),
        };
        let mut moto = Moto { child, port, log, _dir: dir };
        match moto.wait_ready().await {
            Ok(()) => Some(moto),
            // 127: a wrapper (a pyenv shim) found no moto_server behind it.
            Err(Some(127)) if !required => {
                println!("skipped {test}: moto_server is not installed:\n{}", moto.log_text());
                None
            }
            Err(_) => panic!("moto_server did not start (pip install 'moto[server]'):\n{}", moto.log_text()),
        }
    }

    /// Waits until the server answers; on failure the exit code if it exited.
    async fn wait_ready(&mut self) -> Result<(), Option<i32>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                eprintln!("moto_server exited with {status} before answering");
                return Err(status.code());
            }
            if let Ok(r) = http().get(self.url("")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                eprintln!("moto_server did not answer within 30 s");
                return Err(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Creates a bucket (`object_store` cannot): moto takes an unsigned `PUT /<bucket>`.
    async fn bucket(&self, name: &str) -> String {
        let r = http().put(self.url(name)).send().await.expect("moto answers");
        assert!(r.status().is_success(), "create bucket {name}: {}", r.status());
        name.to_string()
    }

    /// The keys in a bucket, from a raw `ListObjectsV2`.
    async fn keys(&self, bucket: &str) -> Vec<String> {
        let body = http().get(self.url(&format!("{bucket}?list-type=2"))).send().await.unwrap().text().await.unwrap();
        body.split("<Key>").skip(1).map(|s| s.split("</Key>").next().unwrap().to_string()).collect()
    }

    fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            endpoint: Some(self.url("")),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            allow_http: true,
        }
    }

    fn store(&self, bucket: &str) -> S3MediaStore {
        S3MediaStore::new(self.config(bucket)).expect("valid S3 config")
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Deterministic bytes covering every byte value.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn binary_bytes_round_trip_small_and_large() {
    let Some(moto) = Moto::start("binary_bytes_round_trip_small_and_large").await else { return };
    let m = moto.store(&moto.bucket("media").await);

    let every_byte: Vec<u8> = (0..=255u8).collect();
    m.put("bytes.bin", &every_byte).await.unwrap();
    assert_eq!(m.get("bytes.bin").await.unwrap(), Some(every_byte));

    m.put("empty", b"").await.unwrap();
    assert_eq!(m.get("empty").await.unwrap(), Some(vec![]));

    let large = noise(5 * 1024 * 1024 + 7);
    m.put("video.mp4", &large).await.unwrap();
    let back = m.get("video.mp4").await.unwrap().expect("stored");
    assert!(back == large, "5 MiB round trip: {} bytes back", back.len());

    // A put replaces the object.
    m.put("bytes.bin", b"v2").await.unwrap();
    assert_eq!(m.get("bytes.bin").await.unwrap().as_deref(), Some(&b"v2"[..]));

    // One object per key at the bucket's root, named by the key.
    let mut keys = moto.keys("media").await;
    keys.sort();
    assert_eq!(keys, ["bytes.bin", "empty", "video.mp4"]);
}

#[tokio::test]
async fn missing_keys_and_delete() {
    let Some(moto) = Moto::start("missing_keys_and_delete").await else { return };
    let m = moto.store(&moto.bucket("media").await);

    assert_eq!(m.get("nothing.png").await.unwrap(), None);
    assert!(!m.delete("nothing.png").await.unwrap(), "deleting a missing key answers false");

    m.put("a.png", b"png").await.unwrap();
    m.put("b.png", b"other").await.unwrap();
    assert!(m.delete("a.png").await.unwrap());
    assert_eq!(m.get("a.png").await.unwrap(), None);
    assert!(!m.delete("a.png").await.unwrap(), "a second delete answers false");
    assert_eq!(m.get("b.png").await.unwrap().as_deref(), Some(&b"other"[..]), "other keys untouched");
    assert_eq!(moto.keys("media").await, ["b.png"]);
}

#[tokio::test]
async fn escaping_and_invalid_keys_are_refused_and_nothing_is_written() {
    let Some(moto) = Moto::start("escaping_and_invalid_keys_are_refused_and_nothing_is_written").await else {
        return;
    };
    let bucket = moto.bucket("media").await;
    let m = moto.store(&bucket);
    // A neighbour bucket an escaping key could reach through path-style addressing.
    let other = moto.bucket("other").await;
    moto.store(&other).put("secret", b"s").await.unwrap();

    for key in ["../other/secret", "../x", "a/b", "/abs", ".hidden", "..", "%2e%2e", "a b", "", &"k".repeat(201)] {
        for err in
            [m.put(key, b"x").await.unwrap_err(), m.get(key).await.unwrap_err(), m.delete(key).await.unwrap_err()]
        {
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{key:?}: {err}");
        }
    }
    assert!(moto.keys(&bucket).await.is_empty());
    assert_eq!(moto.keys(&other).await, ["secret"]);
    // The longest allowed key works.
    let longest = "k".repeat(200);
    m.put(&longest, b"ok").await.unwrap();
    assert_eq!(m.get(&longest).await.unwrap().as_deref(), Some(&b"ok"[..]));
}

#[tokio::test]
async fn a_second_store_sees_the_first_ones_objects() {
    let Some(moto) = Moto::start("a_second_store_sees_the_first_ones_objects").await else { return };
    let bucket = moto.bucket("shared").await;
    let (a, b) = (moto.store(&bucket), moto.store(&bucket));

    a.put("from-a.jpg", b"jpeg").await.unwrap();
    assert_eq!(b.get("from-a.jpg").await.unwrap().as_deref(), Some(&b"jpeg"[..]));
    b.put("from-b.ogg", b"ogg").await.unwrap();
    assert_eq!(a.get("from-b.ogg").await.unwrap().as_deref(), Some(&b"ogg"[..]));
    assert!(b.delete("from-a.jpg").await.unwrap());
    assert_eq!(a.get("from-a.jpg").await.unwrap(), None);

    // Through the process's backends, as the server holds it.
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open_embedded(dir.path(), false).await.unwrap().with_s3(moto.store(&bucket));
    assert_eq!(backends.media.get("from-b.ogg").await.unwrap().as_deref(), Some(&b"ogg"[..]));
    backends.media.put("via-backends", b"x").await.unwrap();
    assert_eq!(a.get("via-backends").await.unwrap().as_deref(), Some(&b"x"[..]));
    assert!(!dir.path().join("media").exists(), "nothing went to the local media directory");
}

#[tokio::test]
async fn a_missing_bucket_is_an_error_on_put() {
    let Some(moto) = Moto::start("a_missing_bucket_is_an_error_on_put").await else { return };
    let m = moto.store("no-such-bucket");
    let err = m.put("a.png", b"png").await.unwrap_err();
    assert_ne!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
}

/// Keys are checked before any request: these answer at once even with nothing listening.
#[tokio::test]
async fn invalid_keys_are_refused_without_a_server() {
    let m = S3MediaStore::new(S3Config {
        bucket: "media".into(),
        endpoint: Some("http://127.0.0.1:1".into()),
        region: "us-east-1".into(),
        access_key_id: "id".into(),
        secret_access_key: "secret".into(),
        allow_http: true,
    })
    .unwrap();
    let started = Instant::now();
    assert_eq!(m.put("../x", b"").await.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    assert_eq!(m.get("a/b").await.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    assert_eq!(m.delete(".partial").await.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    assert!(started.elapsed() < Duration::from_secs(1));
}
