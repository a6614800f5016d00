//! The TCP relay: each accepted client is connected to the target, and both
//! byte streams cross the simulated link in chunks.

use crate::Link;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const CHUNK: usize = 1400;

pub(crate) async fn start(
    listen: SocketAddr,
    target: SocketAddr,
    link: Arc<Link>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tasks.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let link = link.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, link.clone(), true), pump(sr, cw, link, false));
            });
        }
    });
    Ok(addr)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    up: bool,
) {
    // A small channel: when the link is slower than the sender, the sender
    // waits, as TCP flow control would make it.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(16);
    let writer_link = link.clone();
    let writer = tokio::spawn(async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
            writer_link.counters(up).delivered(data.len());
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A cut stalls the stream until the link is back.
        while link.pipe(up).cut {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let at = link.pipe(up).offer_reliable(Instant::now(), n);
        link.counters(up).record(n, &crate::pipe::Verdict::Deliver(at));
        if tx.send((at, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
