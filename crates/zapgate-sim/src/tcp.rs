//! A TCP proxy whose connections a test can cut, stall or refuse: what a
//! client sees of a broker (or any server) restarting, hanging or being down,
//! without touching the real server that other tests share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

pub struct FaultProxy {
    port: u16,
    upstream: SocketAddr,
    accept: Option<AbortHandle>,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
    /// While true, no byte moves in either direction (the sockets stay open).
    stalled: watch::Sender<bool>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:`port` (0: any free port) and forwards every
    /// connection to `upstream`.
    pub async fn start(upstream: SocketAddr, port: u16) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let mut proxy =
            FaultProxy { port, upstream, accept: None, pipes: Arc::default(), stalled: watch::Sender::new(false) };
        proxy.accept = Some(proxy.spawn_accept(listener));
        Ok(proxy)
    }

    fn spawn_accept(&self, listener: TcpListener) -> AbortHandle {
        let (pipes, stalled, upstream) = (self.pipes.clone(), self.stalled.clone(), self.upstream);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                let up = tokio::spawn(pipe(client_rx, server_tx, stalled.subscribe()));
                let down = tokio::spawn(pipe(server_rx, client_tx, stalled.subscribe()));
                pipes.lock().unwrap().extend([up.abort_handle(), down.abort_handle()]);
            }
        })
        .abort_handle()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `url` with its `authority` (`host:port`) replaced by this proxy's.
    pub fn url(&self, url: &str, authority: &str) -> String {
        url.replacen(authority, &format!("127.0.0.1:{}", self.port), 1)
    }

    pub fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }

    /// Drops every proxied connection (both sides see the socket close).
    pub fn cut(&self) {
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// Stops accepting (the port is closed) and cuts: the server is down.
    pub fn stop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        self.cut();
    }

    /// Accepts again on the same port after [`FaultProxy::stop`]: the server is back.
    pub async fn resume(&mut self) -> std::io::Result<()> {
        if self.accept.is_none() {
            let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
            self.accept = Some(self.spawn_accept(listener));
        }
        Ok(())
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
