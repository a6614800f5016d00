//! The relay over real sockets on loopback.

use ferry_netsim::{Config, Direction, Netsim, Profile};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A UDP echo server that remembers where each packet came from.
async fn echo() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            seen2.lock().unwrap().push(from);
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    (addr, seen)
}

fn link(delay_ms: u64, kbps: u64, loss: f64) -> Profile {
    let mut d = Direction::ideal();
    d.delay = Duration::from_millis(delay_ms);
    d.rate_bps = kbps * 1000;
    d.queue_bytes = 1 << 20;
    d.loss = loss;
    Profile {
        name: "test".into(),
        up: d.clone(),
        down: d,
    }
}

#[tokio::test]
async fn round_trips_take_the_configured_delay() {
    let (target, _) = echo().await;
    let sim = Netsim::udp(Config::new("127.0.0.1:0".parse().unwrap(), target, link(50, 0, 0.0)))
        .await
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..30u8 {
        let t = Instant::now();
        client.send_to(&[i; 32], sim.local_addr()).await.unwrap();
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &[i; 32]);
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    // Propagation is a floor the simulator must never undercut; the ceiling
    // allows for timer granularity on a busy machine.
    assert!(rtts[0] >= Duration::from_millis(100), "min RTT {:?}", rtts[0]);
    assert!(median < Duration::from_millis(160), "median RTT {median:?}");
    let s = sim.stats();
    assert_eq!(
        (s.up.offered_packets, s.up.delivered_packets, s.down.delivered_packets),
        (30, 30, 30)
    );
    assert_eq!(s.up.offered_bytes, 30 * 32);
}

#[tokio::test]
async fn rebind_changes_the_source_port_and_address_seen_by_the_target() {
    let (target, seen) = echo().await;
    let sim = Netsim::udp(Config::new("127.0.0.1:0".parse().unwrap(), target, Profile::ideal()))
        .await
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    async fn ping(client: &UdpSocket, to: SocketAddr) {
        let mut buf = [0u8; 16];
        client.send_to(b"ping", to).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("no echo")
            .unwrap();
    }
    ping(&client, sim.local_addr()).await;
    sim.rebind(None).await.unwrap();
    ping(&client, sim.local_addr()).await;
    sim.rebind(Some("127.0.0.2".parse().unwrap())).await.unwrap();
    ping(&client, sim.local_addr()).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].ip(), seen[1].ip());
    assert_ne!(seen[0].port(), seen[1].port(), "rebind kept the port");
    assert_eq!(seen[2].ip().to_string(), "127.0.0.2", "rebind kept the address");
    assert_eq!(sim.stats().rebinds, 2);
}

#[tokio::test]
async fn a_cut_drops_and_counts_until_restored() {
    let (target, _) = echo().await;
    let sim = Netsim::udp(Config::new("127.0.0.1:0".parse().unwrap(), target, Profile::ideal()))
        .await
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sim.cut();
    for _ in 0..10 {
        client.send_to(&[7; 100], sim.local_addr()).await.unwrap();
    }
    let mut buf = [0u8; 128];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf))
            .await
            .is_err(),
        "a cut link delivered"
    );
    sim.restore();
    client.send_to(&[8; 100], sim.local_addr()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("restored link is dead")
        .unwrap();
    let s = sim.stats();
    assert_eq!(
        (s.up.dropped_cut, s.up.dropped_cut_bytes, s.up.delivered_packets),
        (10, 1000, 1)
    );
}

#[tokio::test]
async fn tcp_stream_is_intact_and_no_faster_than_the_link() {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = server.local_addr().unwrap();
    let data: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let expected = data.clone();
    let receiver = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got).await.unwrap();
        got
    });
    let sim = Netsim::tcp(Config::new("127.0.0.1:0".parse().unwrap(), target, link(20, 1000, 0.3)))
        .await
        .unwrap();
    let t = Instant::now();
    let mut c = tokio::net::TcpStream::connect(sim.local_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut c, &data).await.unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut c).await.unwrap();
    let got = receiver.await.unwrap();
    let elapsed = t.elapsed();
    assert_eq!(got, expected, "loss must never corrupt a byte stream");
    // 60 kB plus headers at 1 Mbps is at least 0.48 s on the wire, plus delay.
    assert!(
        elapsed >= Duration::from_millis(480 + 20),
        "faster than the link: {elapsed:?}"
    );
    assert_eq!(sim.stats().up.delivered_bytes, 60_000);
}

/// The `netsim` binary relaying to an echo server, with its control socket.
struct Controlled {
    child: std::process::Child,
    writer: std::net::TcpStream,
    reader: std::io::BufReader<std::net::TcpStream>,
    _rt: tokio::runtime::Runtime,
}

impl Controlled {
    fn spawn(extra: &[&str]) -> Controlled {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (target, _) = rt.block_on(echo());
        let control = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_netsim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--target",
                &target.to_string(),
                "--control",
                &control.to_string(),
            ])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stream = (0..100)
            .find_map(|_| {
                std::net::TcpStream::connect(control).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(50));
                    None
                })
            })
            .expect("control socket never opened");
        let writer = stream.try_clone().unwrap();
        Controlled {
            child,
            writer,
            reader: std::io::BufReader::new(stream),
            _rt: rt,
        }
    }

    fn ask(&mut self, cmd: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        self.writer.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// SIGTERM; returns the stats it prints on exit.
    fn stop(self) -> serde_json::Value {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let out = self.child.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).expect("stats JSON on exit")
    }
}

#[test]
fn the_binary_is_controlled_from_another_process() {
    let mut sim = Controlled::spawn(&["--profile", "urban_3g"]);
    assert_eq!(sim.ask("stats")["profile"], "urban_3g");
    assert_eq!(sim.ask("cut")["cut"], true);
    assert_eq!(sim.ask("restore")["cut"], false);
    assert_eq!(sim.ask("profile edge_lossy")["profile"], "edge_lossy");
    assert!(sim.ask("bogus")["error"].as_str().unwrap().contains("unknown command"));
    assert_eq!(sim.stop()["profile"], "edge_lossy");
}

#[test]
fn the_binary_cuts_on_schedule() {
    let mut sim = Controlled::spawn(&[
        "--cut-at",
        "2",
        "--cut-for",
        "3",
        "--burst-enter",
        "0.01",
        "--burst-exit",
        "0.2",
    ]);
    // The binary's clock started before it answered on the control port, so
    // at most a startup time before `start`: the samples leave it 2 s.
    let start = Instant::now();
    let mut cut_at = |secs: f64| -> bool {
        std::thread::sleep(Duration::from_secs_f64(secs).saturating_sub(start.elapsed()));
        sim.ask("stats")["cut"].as_bool().unwrap()
    };
    // Sampled inside each phase: before, during and after the cut.
    assert!(!cut_at(0.0));
    assert!(cut_at(3.0));
    assert!(!cut_at(5.5));
    sim.stop();
}
