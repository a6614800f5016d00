//! Who gets in, and what bad input does: nothing but a clear error.

use ferry::pki::{Role, SERVER_NAME};
use ferry::tls::TlsIdentity;
use ferry::transport::TransportProfile;
use ferry_proto::{ErrorCode, Frame, Hello, Priority, Want, PROTOCOL_VERSION};
use ferry_tests::{all_events, init_logging, start, workload, write_events, Deployment};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Replaces a node's certificate with a self-signed one for the same key.
fn make_self_signed(dir: &ferry::datadir::DataDir) {
    let id = dir.identity().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "impostor");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "hub");
    let cert = params.self_signed(&id.key).unwrap();
    std::fs::write(dir.path("node.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path("ca.crt"), cert.pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_self_signed_nodes_cannot_sync_and_change_nothing() {
    init_logging();
    let dep = Deployment::new("ours").unwrap();
    let target = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    write_events(&target.ctx.wal, workload("HUB", 50, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let before = all_events(&target.ctx.wal).unwrap();

    let other = Deployment::new("theirs").unwrap();
    let foreign_dir = other.enroll("foreign", Role::Hub).unwrap();
    let impostor_dir = dep.enroll("impostor", Role::Clinic).unwrap();
    make_self_signed(&impostor_dir);

    for (what, dir) in [("other CA", &foreign_dir), ("self-signed", &impostor_dir)] {
        let intruder = start(dir, None).await.unwrap();
        write_events(&intruder.ctx.wal, workload("EVIL", 20, 2).unwrap(), Priority::Normal)
            .await
            .unwrap();
        // Intruder dials us: our server refuses its client certificate.
        let err = intruder.sync_once(target.local_addr().unwrap()).await.expect_err(what);
        println!("{what} dialing: {err:#}");
        // We dial the intruder: our client refuses its server certificate.
        let err = target.sync_once(intruder.local_addr().unwrap()).await.expect_err(what);
        println!("{what} dialed: {err:#}");
        assert!(
            matches!(err, ferry::sync_error::SyncError::Connection { .. }),
            "{what}: refused in the handshake, not {err:?}"
        );
        assert!(
            format!("{err:#}").to_lowercase().contains("certificate"),
            "{what}: {err:#}"
        );
        assert_eq!(
            intruder.ctx.wal.summary().total_events(),
            20,
            "{what}: intruder got our events"
        );
        intruder.shutdown().await;
    }
    assert_eq!(all_events(&target.ctx.wal).unwrap(), before, "target changed");
    assert_eq!(target.ctx.totals.events_sent.load(Relaxed), 0);
    assert!(
        target.ctx.data_dir.as_ref().unwrap().peers().is_empty(),
        "an intruder was recorded as a peer"
    );
    target.shutdown().await;
}

/// A connection with a genuine certificate that then speaks garbage.
async fn raw_connection(
    dir: &ferry::datadir::DataDir,
    to: std::net::SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let tls = TlsIdentity::from_identity(&dir.identity().unwrap()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(tls.quinn_client(&TransportProfile::lan()).unwrap());
    let conn = ep.connect(to, SERVER_NAME).unwrap().await.unwrap();
    (ep, conn)
}

/// Opens a new connection, sends `bytes` as the start of its control
/// stream (after `prefix` frames), and returns the code the node closed the
/// connection with.
async fn close_code(dir: &ferry::datadir::DataDir, to: std::net::SocketAddr, prefix: &[Frame], bytes: &[u8]) -> u64 {
    let (_ep, conn) = raw_connection(dir, to).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    for f in prefix {
        send.write_all(&f.encode()).await.unwrap();
    }
    send.write_all(bytes).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the node kept a connection that sent garbage")
    {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("unexpected close: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_connection_and_the_node_keeps_serving() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let node = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    write_events(&node.ctx.wal, workload("HUB", 300, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let before = all_events(&node.ctx.wal).unwrap();
    let addr = node.local_addr().unwrap();
    let rogue_dir = dep.enroll("rogue", Role::Clinic).unwrap();
    let hello = Frame::Hello(Hello {
        node: rogue_dir.identity().unwrap().node_id,
        role: ferry_proto::Role::Clinic,
        name: "rogue".into(),
        version: PROTOCOL_VERSION,
        live: false,
        gives_own: true,
    });

    let mut rng_bytes = vec![0u8; 64];
    rand::Rng::fill(&mut rand::thread_rng(), &mut rng_bytes[..]);
    rng_bytes[0] = 60; // a plausible length so the body is parsed, not just refused
                       // A type whose body is CBOR, so the random bytes reach the decoder: a
                       // random type byte was an `Events`, `Proof` or `Credential` frame (raw
                       // bodies that decode) one time in 85, which the node closes with
                       // `Protocol` before a Hello, not `Malformed`.
    rng_bytes[1] = 2;
    let first_summary = Frame::Summary {
        id: 1,
        ask: false,
        summary: Default::default(),
        classes: Default::default(),
    };
    // Changes that each fit a frame but together name more ranges than the
    // node keeps of a peer's summary (4,194,304).
    let holey = |node: u8| {
        let set = ferry_proto::RangeSet::from_ranges((0..450_000u64).map(|i| (3 * i + 1, 3 * i + 1)));
        Frame::SummaryChange {
            id: 2 + u32::from(node),
            ask: false,
            changed: ferry_proto::Summary(
                [(
                    ferry_proto::Origin {
                        node: ferry_proto::NodeId([node; 16]),
                        epoch: 1,
                    },
                    set,
                )]
                .into_iter()
                .collect(),
            ),
            classes: Default::default(),
        }
    };
    let cases: Vec<(&str, Vec<Frame>, Vec<u8>, ErrorCode)> = vec![
        ("random body", vec![], rng_bytes, ErrorCode::Malformed),
        (
            "huge length",
            vec![],
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            ErrorCode::TooLarge,
        ),
        ("unknown frame type", vec![], vec![3, 99, 0, 0], ErrorCode::Malformed),
        (
            "events before Hello",
            vec![],
            Frame::Events(vec![]).encode(),
            ErrorCode::Protocol,
        ),
        (
            "want with bad CBOR after Hello",
            vec![hello.clone()],
            vec![4, 3, 0xa1, 0xff, 0x00],
            ErrorCode::Malformed,
        ),
        (
            "summary garbage after Hello",
            vec![hello.clone()],
            vec![5, 2, 0xff, 0xff, 0xff, 0xff],
            ErrorCode::Malformed,
        ),
        (
            "a summary change with no summary before it",
            vec![hello.clone()],
            Frame::SummaryChange {
                id: 1,
                ask: false,
                changed: Default::default(),
                classes: Default::default(),
            }
            .encode(),
            ErrorCode::Protocol,
        ),
        (
            "a summary change that skips a summary",
            vec![hello.clone(), first_summary.clone()],
            Frame::SummaryChange {
                id: 3,
                ask: false,
                changed: Default::default(),
                classes: Default::default(),
            }
            .encode(),
            ErrorCode::Protocol,
        ),
        (
            "summary changes that pile up more ranges than a summary frame holds",
            vec![hello.clone(), first_summary.clone()]
                .into_iter()
                .chain((0..9).map(holey))
                .collect(),
            holey(9).encode(),
            ErrorCode::TooLarge,
        ),
        (
            "data frames on the control stream",
            vec![hello.clone()],
            Frame::Open {
                class: Priority::Normal,
            }
            .encode(),
            ErrorCode::Protocol,
        ),
    ];
    for (what, prefix, bytes, code) in cases {
        assert_eq!(
            close_code(&rogue_dir, addr, &prefix, &bytes).await,
            code as u64,
            "{what}"
        );
    }

    // A Hello that names another node than the certificate is refused.
    let (_ep, conn) = raw_connection(&rogue_dir, addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let liar = Frame::Hello(Hello {
        node: node.ctx.node_id,
        role: ferry_proto::Role::Hub,
        name: "liar".into(),
        version: PROTOCOL_VERSION,
        live: false,
        gives_own: true,
    });
    send.write_all(&liar.encode()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("liar kept")
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), ErrorCode::Protocol as u64)
        }
        other => panic!("unexpected close: {other}"),
    }

    // A well-behaved peer is served as usual, and a valid Want on a raw
    // connection gets its events on a data stream.
    let good = start(&dep.enroll("clinic", Role::Clinic).unwrap(), None).await.unwrap();
    assert_eq!(good.sync_once(addr).await.unwrap().events_received, 300);
    let (_ep, conn) = raw_connection(&rogue_dir, addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let origin = node.ctx.wal.local_origin();
    send.write_all(&hello.encode()).await.unwrap();
    let want = Want {
        origin,
        first: 1,
        last: 10,
        priority: Priority::Normal,
    };
    send.write_all(&Frame::Want(want).encode()).await.unwrap();
    let mut data = tokio::time::timeout(Duration::from_secs(10), conn.accept_uni())
        .await
        .expect("no data stream")
        .unwrap();
    let mut reader = ferry_sync::FrameReader::default();
    let mut dec = ferry_proto::batch::StreamDecompressor::new();
    let mut got = 0;
    let mut proofs = 0;
    let mut ended = false;
    while !ended {
        let chunk = tokio::time::timeout(Duration::from_secs(10), data.read_chunk(1 << 16, true))
            .await
            .expect("data stalled")
            .unwrap()
            .expect("data stream ended early");
        for f in reader.push(&chunk.bytes).unwrap() {
            match f {
                Frame::Open { .. } => {}
                Frame::Events(c) => got += dec.decompress(&c).unwrap().len(),
                // Logs are authenticated: the writer's signed head and a
                // proof come with the events (its certificate came with
                // the TLS handshake, so no Credential frame is needed).
                Frame::Credential(_) | Frame::Head(_) | Frame::Proof(_) => proofs += 1,
                Frame::End(w) => {
                    assert_eq!(w, want);
                    ended = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(got, 10);
    assert!(proofs >= 2, "a head and a proof: {proofs} frames");
    assert_eq!(all_events(&node.ctx.wal).unwrap(), before, "bad input changed the WAL");

    // And the node still serves after all of that.
    let late = start(&dep.enroll("late", Role::Clinic).unwrap(), None).await.unwrap();
    assert_eq!(late.sync_once(addr).await.unwrap().events_received, 300);
    for n in [&node, &good, &late] {
        n.shutdown().await;
    }
}

/// A node of another release (another ALPN, another protocol version) is
/// named as such, with what to do, whichever end dials; not a bare TLS
/// alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_protocol_version_is_named_as_such() {
    use ferry::sync_error::{is_version_mismatch, SyncError};
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    use std::sync::Arc;
    init_logging();
    let dep = Deployment::new("ours").unwrap();
    let node = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    let old_dir = dep.enroll("old", Role::Clinic).unwrap();
    let tls = TlsIdentity::from_identity(&old_dir.identity().unwrap()).unwrap();
    let old_alpn = b"ferry/3".to_vec();
    assert_ne!(old_alpn, ferry_proto::ALPN);

    // An older release listening: the same deployment, another ALPN.
    let mut server = tls.server_config().unwrap();
    server.alpn_protocols = vec![old_alpn.clone()];
    let server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server).unwrap()));
    let old = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let accepting = old.clone();
    let handshakes = tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            if let Ok(connecting) = incoming.accept() {
                let _ = connecting.await;
            }
        }
    });
    let err = node
        .sync_once(old.local_addr().unwrap())
        .await
        .expect_err("no version in common");
    assert!(matches!(err, SyncError::Version { .. }), "{err:?}");
    assert!(format!("{err}").contains("run the same ferry release"), "{err}");

    // The older release dialing this node.
    let mut client = tls.client_config().unwrap();
    client.alpn_protocols = vec![old_alpn];
    let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).unwrap()));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let err = ep
        .connect_with(client, node.local_addr().unwrap(), SERVER_NAME)
        .unwrap()
        .await
        .expect_err("no version in common");
    assert!(is_version_mismatch(&err), "{err}");

    old.close(0u32.into(), b"done");
    handshakes.abort();
    node.shutdown().await;
}
