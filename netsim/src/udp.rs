//! The UDP relay. Each client address gets its own outward socket toward
//! the target, as behind a NAT; `rebind` replaces those sockets.

use crate::pipe::Verdict;
use crate::Link;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

type Delivery = (std::time::Instant, Vec<u8>, Arc<Session>);

struct Session {
    client: SocketAddr,
    outward: Mutex<Arc<UdpSocket>>,
    reader: Mutex<Option<AbortHandle>>,
}

impl Session {
    fn outward(&self) -> Arc<UdpSocket> {
        self.outward.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub(crate) struct UdpRelay {
    listen: Arc<UdpSocket>,
    target: SocketAddr,
    link: Arc<Link>,
    sessions: Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>,
    down_tx: mpsc::UnboundedSender<Delivery>,
    bind_ip: Mutex<IpAddr>,
}

async fn sleep_until(at: std::time::Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}

impl UdpRelay {
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        link: Arc<Link>,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let (up_tx, mut up_rx) = mpsc::unbounded_channel::<Delivery>();
        let (down_tx, mut down_rx) = mpsc::unbounded_channel::<Delivery>();
        let bind_ip = if target.ip().is_loopback() {
            target.ip()
        } else {
            listen.ip()
        };
        let relay = UdpRelay {
            listen: socket.clone(),
            target,
            link: link.clone(),
            sessions: Arc::default(),
            down_tx,
            bind_ip: Mutex::new(bind_ip),
        };

        // Delivery: packets leave in order at their delivery time.
        let up_link = link.clone();
        tasks.spawn(async move {
            while let Some((at, data, session)) = up_rx.recv().await {
                sleep_until(at).await;
                if session.outward().send_to(&data, target).await.is_ok() {
                    up_link.up_counters.delivered(data.len());
                }
            }
        });
        let down_link = link.clone();
        let listen_sock = socket.clone();
        tasks.spawn(async move {
            while let Some((at, data, session)) = down_rx.recv().await {
                sleep_until(at).await;
                if listen_sock.send_to(&data, session.client).await.is_ok() {
                    down_link.down_counters.delivered(data.len());
                }
            }
        });

        // Client to target.
        let sessions = relay.sessions.clone();
        let ctx = relay.clone_parts();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, client)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let existing = sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&client).cloned();
                let session = match existing {
                    Some(s) => s,
                    None => match ctx.new_session(client).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(%client, "cannot open an outward socket: {e}");
                            continue;
                        }
                    },
                };
                let verdict = link.pipe(true).offer(std::time::Instant::now(), n);
                link.up_counters.record(n, &verdict);
                if let Verdict::Deliver(at) = verdict {
                    let _ = up_tx.send((at, buf[..n].to_vec(), session));
                }
            }
        });
        Ok(relay)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listen.local_addr()
    }

    fn clone_parts(&self) -> SessionFactory {
        SessionFactory {
            target: self.target,
            link: self.link.clone(),
            sessions: self.sessions.clone(),
            down_tx: self.down_tx.clone(),
            bind_ip: *self.bind_ip.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    pub async fn rebind(&self, ip: Option<IpAddr>) -> anyhow::Result<()> {
        if let Some(ip) = ip {
            *self.bind_ip.lock().unwrap_or_else(|p| p.into_inner()) = ip;
        }
        let factory = self.clone_parts();
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for s in sessions {
            let socket = Arc::new(UdpSocket::bind((factory.bind_ip, 0)).await?);
            *s.outward.lock().unwrap_or_else(|p| p.into_inner()) = socket.clone();
            let reader = factory.spawn_reader(s.clone(), socket);
            if let Some(old) = s.reader.lock().unwrap_or_else(|p| p.into_inner()).replace(reader) {
                old.abort();
            }
        }
        self.link.rebinds.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// What it takes to open an outward socket for a client.
struct SessionFactory {
    target: SocketAddr,
    link: Arc<Link>,
    sessions: Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>,
    down_tx: mpsc::UnboundedSender<Delivery>,
    bind_ip: IpAddr,
}

impl SessionFactory {
    async fn new_session(&self, client: SocketAddr) -> std::io::Result<Arc<Session>> {
        let socket = Arc::new(UdpSocket::bind((self.bind_ip, 0)).await?);
        let session = Arc::new(Session {
            client,
            outward: Mutex::new(socket.clone()),
            reader: Mutex::new(None),
        });
        let reader = self.spawn_reader(session.clone(), socket);
        *session.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client, session.clone());
        Ok(session)
    }

    /// Target to client, for one outward socket.
    fn spawn_reader(&self, session: Arc<Session>, socket: Arc<UdpSocket>) -> AbortHandle {
        let (link, target, tx) = (self.link.clone(), self.target, self.down_tx.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if from != target {
                    continue;
                }
                let verdict = link.pipe(false).offer(std::time::Instant::now(), n);
                link.down_counters.record(n, &verdict);
                if let Verdict::Deliver(at) = verdict {
                    let _ = tx.send((at, buf[..n].to_vec(), session.clone()));
                }
            }
        })
        .abort_handle()
    }
}
