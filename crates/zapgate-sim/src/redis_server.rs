//! A throwaway `redis-server` of a test's own, on a port it chooses: the
//! shared Redis of a test pass cannot be killed without failing every other
//! test that runs at the same time. It keeps nothing on disk, so a restart
//! comes back empty, as Redis without persistence does in production.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running `redis-server`, killed (SIGKILL) on drop.
pub struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// True when a `redis-server` binary is on PATH.
    pub fn available() -> bool {
        Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok()
    }

    /// A free port for a server (and for its restarts on the same port).
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
    }

    /// Starts `redis-server` on 127.0.0.1:`port`; it may not answer yet (see
    /// [`RedisServer::wait_until_up`]).
    pub fn start(port: u16) -> std::io::Result<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(RedisServer { port, child })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Waits until the server answers `PING` (panics after 10 s).
    pub async fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pong().await {
            assert!(Instant::now() < deadline, "redis-server on port {} did not come up", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pong(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)).await else { return false };
        if conn.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), conn.read_exact(&mut reply)).await,
            Ok(Ok(_)) if &reply == b"+PONG\r\n"
        )
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
