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

/// Sends `bytes` on a new stream and returns the code the node reset it with.
async fn reset_code(conn: &quinn::Connection, bytes: &[u8]) -> Option<u64> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    match tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("node never answered")
    {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => Some(code.into_inner()),
        other => panic!("stream was not reset: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_end_the_stream_and_the_node_keeps_serving() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let node = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    write_events(&node.ctx.wal, workload("HUB", 300, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let before = all_events(&node.ctx.wal).unwrap();
    let addr = node.local_addr().unwrap();
    let rogue_dir = dep.enroll("rogue", Role::Clinic).unwrap();
    let (_ep, conn) = raw_connection(&rogue_dir, addr).await;

    let malformed = ErrorCode::Malformed as u64;
    let mut rng_bytes = vec![0u8; 64];
    rand::Rng::fill(&mut rand::thread_rng(), &mut rng_bytes[..]);
    rng_bytes[0] = 0; // a plausible length so the body is parsed, not just refused
    rng_bytes[1] = 0;
    rng_bytes[2] = 0;
    rng_bytes[3] = 60;
    assert_eq!(reset_code(&conn, &rng_bytes).await, Some(malformed), "random body");
    assert_eq!(
        reset_code(&conn, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await,
        Some(ErrorCode::TooLarge as u64),
        "huge length"
    );
    assert_eq!(
        reset_code(&conn, &[0, 0, 0, 100, 3, 1, 2]).await,
        Some(malformed),
        "truncated frame"
    );
    assert_eq!(
        reset_code(&conn, &[0, 0, 0, 3, 99, 0, 0]).await,
        Some(malformed),
        "unknown frame type"
    );
    assert_eq!(
        reset_code(&conn, &[0, 0, 0, 4, 3, 0xa1, 0xff, 0x00]).await,
        Some(malformed),
        "want with bad CBOR"
    );
    let events_first = Frame::EventChunk(vec![]).encode();
    assert_eq!(
        reset_code(&conn, &events_first).await,
        Some(ErrorCode::Protocol as u64),
        "events as first frame"
    );

    // Meanwhile a well-behaved peer is served as usual.
    let good = start(&dep.enroll("clinic", Role::Clinic).unwrap(), None).await.unwrap();
    let report = good.sync_once(addr).await.unwrap();
    assert_eq!(report.events_received, 300);

    // A valid Want on the same rogue connection still works: only the bad streams died.
    let origin = node.ctx.wal.local_origin();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(
        &Frame::Want(Want {
            origin,
            first: 1,
            last: 10,
            priority: Priority::Normal,
        })
        .encode(),
    )
    .await
    .unwrap();
    send.finish().unwrap();
    let bytes = recv.read_to_end(1 << 20).await.unwrap();
    match Frame::decode(&bytes).unwrap() {
        Some((Frame::EventChunk(chunk), _)) => {
            let events = ferry_proto::batch::StreamDecompressor::new()
                .decompress(&chunk)
                .unwrap();
            assert_eq!(events.len(), 10);
        }
        other => panic!("expected events, got {other:?}"),
    }

    // Garbage after a valid Hello on a control stream closes the connection.
    let (_ep2, conn2) = raw_connection(&rogue_dir, addr).await;
    let (mut send, _recv) = conn2.open_bi().await.unwrap();
    let hello = Hello {
        node: rogue_dir.identity().unwrap().node_id,
        role: "clinic".into(),
        name: "rogue".into(),
        version: PROTOCOL_VERSION,
    };
    send.write_all(&Frame::Hello(hello).encode()).await.unwrap();
    send.write_all(&[0, 0, 0, 5, 2, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), conn2.closed())
        .await
        .expect("connection stayed open")
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), malformed)
        }
        other => panic!("unexpected close: {other}"),
    }

    // Enough bad streams and the node gives up on the connection.
    for _ in 0..8 {
        if conn.close_reason().is_some() {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if let Ok((mut s, mut r)) = conn.open_bi().await {
                let _ = s.write_all(&[0, 0, 0, 3, 99, 0, 0]).await;
                let _ = s.finish();
                let _ = r.read_to_end(1024).await;
            }
        })
        .await;
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .is_ok(),
        "abusive connection stayed open"
    );
    assert_eq!(all_events(&node.ctx.wal).unwrap(), before, "bad input changed the WAL");

    // And the node still serves after all of that.
    let late = start(&dep.enroll("late", Role::Clinic).unwrap(), None).await.unwrap();
    assert_eq!(late.sync_once(addr).await.unwrap().events_received, 300);
    for n in [&node, &good, &late] {
        n.shutdown().await;
    }
}
