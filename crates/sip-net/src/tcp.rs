//! TCP connections: a reader that frames messages by Content-Length and a writer fed by a
//! channel, both reported to the driver by peer address (connection reuse, RFC 3261 §18).

use crate::{Inbox, NetEvent};
use bytes::Bytes;
use std::net::SocketAddr;
use switchboard_sip::framing::StreamFramer;
use switchboard_sip::{Peer, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub(crate) async fn accept_loop(listener: TcpListener, events: Inbox, max: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                serve(stream, addr, events.clone(), max).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

pub(crate) async fn connect(addr: SocketAddr, events: Inbox, max: usize) {
    match TcpStream::connect(addr).await {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            serve(stream, addr, events, max).await;
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "TCP connect failed");
            events.send(NetEvent::ConnectFailed(addr)).await;
        }
    }
}

/// Registers the connection with the driver and starts its reader and writer tasks.
async fn serve(stream: TcpStream, addr: SocketAddr, events: Inbox, max: usize) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    if !events.send(NetEvent::Connected(addr, tx)).await {
        return;
    }
    tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut framer = StreamFramer::new(max);
        let mut buf = vec![0u8; 16 * 1024];
        let peer = Peer {
            addr,
            transport: Transport::Tcp,
        };
        'read: loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            loop {
                match framer.next_message() {
                    Ok(Some(msg)) => {
                        if !events.send(NetEvent::Message(msg, peer)).await {
                            break 'read;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        metrics::counter!("sip_malformed_total").increment(1);
                        tracing::info!(%addr, error = %e, "closing TCP connection that cannot be framed");
                        break 'read;
                    }
                }
            }
        }
        events.send(NetEvent::Closed(addr)).await;
    });
}
