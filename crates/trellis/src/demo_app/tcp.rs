//! `--mode tcp`: an opaque TCP echo server.
//!
//! The protocol is client-first: nothing is written until the client sends. Every chunk read is
//! written back unchanged, except that the first reply of each connection is prefixed with
//! `<name>/<version>: ` so a test can see which instance the mesh picked; each reply waits
//! `--latency` first. On end of input the write side is shut down too. The server never buffers
//! more than one read.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{stopping, App};

const READ_BUF: usize = 16 * 1024;

/// Serves one connection until the peer is done or `stop` turns true.
pub(super) async fn serve_connection(
    stream: TcpStream,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        result = echo(stream, &app) => {
            if let Err(error) = result {
                tracing::debug!(%error, "demo-app: tcp connection ended with an error");
            }
        }
        () = stopping(&mut stop) => {}
    }
}

async fn echo(mut stream: TcpStream, app: &App) -> std::io::Result<()> {
    let mut prefix = Some(format!("{}/{}: ", app.cfg.name, app.cfg.version).into_bytes());
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        app.delay().await;
        match prefix.take() {
            Some(mut first) => {
                first.extend_from_slice(&buf[..n]);
                stream.write_all(&first).await?;
            }
            None => stream.write_all(&buf[..n]).await?,
        }
    }
}
