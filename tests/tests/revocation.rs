//! Revocation that reaches offline sites, and certificate renewal: real
//! nodes on loopback QUIC, and the `ferry` CLI as its own process for what
//! an operator types (`ferry ca revoke`, `ferry revoke`, `ferry csr
//! --renew`, `ferry ca sign`, `ferry cert install`, `ferry cert publish`,
//! `ferry sync`).

use ferry::datadir::{DataDir, Policy};
use ferry::pki::Role;
use ferry::revocation::TOPIC;
use ferry_proto::{Origin, Priority, RangeSet};
use ferry_tests::{eventually, init_logging, start, workload, write_events, Deployment};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_field-bench");

/// Runs the `ferry` CLI (the bench binary embeds it) as its own process.
fn ferry(args: &[&str]) -> Output {
    let out = Command::new(EXE)
        .arg("__ferry")
        .args(args)
        .env("FERRY_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("could not run the ferry CLI");
    eprintln!(
        "$ ferry {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(out.status.success(), "ferry {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Starts the local API of an in-process node, so the CLI finds it.
async fn with_api(node: &ferry::node::Node) {
    let opts = ferry::api::ApiOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: ferry::api::DEFAULT_MAX_BODY,
    };
    ferry::api::start(&node.ctx, opts).await.unwrap();
}

/// Clinic A is revoked at the CA; the revocation is written at the hub and
/// reaches clinic B only by a mule (B never meets the hub, and runs no
/// policy that would bring it any other way). B then refuses A's handshake
/// and the events A wrote after the revocation, which a second mule that
/// never heard of it carries; what A wrote before stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_travels_by_mule_and_shuts_the_revoked_clinic_out() {
    init_logging();
    let dep = Deployment::new("district").unwrap();
    let hub_dir = dep.enroll("hub", Role::Hub).unwrap();
    let a_dir = dep.enroll("clinic-a", Role::Clinic).unwrap();
    let b_dir = dep.enroll("clinic-b", Role::Clinic).unwrap();
    // The hub and the mule that meets it keep to the policy `role`: a
    // clinic gets its own events and the hub's, so the revocation reaches B
    // because the hub wrote it. The second mule gives everything.
    let hub = start(&hub_dir, Some(Policy::Role)).await.unwrap();
    let mule = start(&dep.enroll("mule", Role::Mule).unwrap(), Some(Policy::Role))
        .await
        .unwrap();
    let carrier = start(&dep.enroll("carrier", Role::Mule).unwrap(), Some(Policy::All))
        .await
        .unwrap();
    let a = start(&a_dir, None).await.unwrap();
    let b = start(&b_dir, None).await.unwrap();
    let a_id = a.ctx.node_id;
    write_events(&a.ctx.wal, workload("CLA", 5, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let a_origin: Origin = a.ctx.wal.local_origin();
    carrier.sync_once(a.local_addr().unwrap()).await.unwrap();

    let file = dep.tmp.path().join("a.revocation");
    ok(&[
        "ca",
        "revoke",
        "--ca-dir",
        path(&dep.ca_dir),
        "--node",
        &a_id.to_string(),
        "--reason",
        "box sold",
        "--out",
        path(&file),
    ]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_events(&a.ctx.wal, workload("CLA", 4, 2).unwrap(), Priority::Normal)
        .await
        .unwrap();
    carrier.sync_once(a.local_addr().unwrap()).await.unwrap();
    assert_eq!(carrier.ctx.wal.have(&a_origin), RangeSet::from_range(1, 9));

    // A is connected to the hub when the revocation is written there.
    let open = a.open(hub.local_addr().unwrap(), false).await.unwrap();
    with_api(&hub).await;
    ok(&["revoke", "--data-dir", path(&hub_dir.root), "--file", path(&file)]);
    eventually("the hub to act on the revocation", Duration::from_secs(10), || {
        hub.ctx.revocations.is_revoked(&a_id)
    })
    .await
    .unwrap();
    eventually("the hub to close its connection to A", Duration::from_secs(10), || {
        open.link.conn.close_reason().is_some()
    })
    .await
    .unwrap();
    let why = open.link.conn.close_reason().unwrap().to_string();
    assert!(why.contains("revoked"), "{why}");
    a.sync_once(hub.local_addr().unwrap())
        .await
        .expect_err("the hub refuses A's handshake");

    // The mule carries the revocation from the hub to B.
    mule.sync_once(hub.local_addr().unwrap()).await.unwrap();
    eventually("the mule to hold the revocation", Duration::from_secs(10), || {
        mule.ctx.revocations.is_revoked(&a_id)
    })
    .await
    .unwrap();
    assert!(!b.ctx.revocations.is_revoked(&a_id));
    mule.sync_once(b.local_addr().unwrap()).await.unwrap();
    eventually("B to hold the revocation", Duration::from_secs(10), || {
        b.ctx.revocations.is_revoked(&a_id)
    })
    .await
    .unwrap();
    assert!(
        !b_dir.peers().contains_key(&hub.ctx.node_id.to_string()),
        "B never met the hub"
    );

    // The carrier brings what A wrote before and after: B keeps the first.
    let report = carrier.sync_once(b.local_addr().unwrap()).await.unwrap();
    println!("carrier -> B: {report:?}");
    assert_eq!(
        b.ctx.wal.have(&a_origin),
        RangeSet::from_range(1, 5),
        "what A wrote before the revocation stays; nothing after arrives"
    );
    assert_eq!(b.ctx.revocations.events_refused(), 4);
    // Asked again, B does not ask for the refused events.
    let again = carrier.sync_once(b.local_addr().unwrap()).await.unwrap();
    assert_eq!(again.events_sent, 0, "{again:?}");
    assert_eq!(b.ctx.revocations.events_refused(), 4);

    // A cannot reach B either way round.
    let refused = b.ctx.revocations.refused_handshakes();
    let err = a.sync_once(b.local_addr().unwrap()).await.expect_err("B refuses A");
    println!("A dials B: {err:#}");
    let err = b.sync_once(a.local_addr().unwrap()).await.expect_err("B refuses A");
    println!("B dials A: {err:#}");
    assert!(format!("{err:#}").to_lowercase().contains("revoked"), "{err:#}");
    assert!(b.ctx.revocations.refused_handshakes() >= refused + 2);
    assert_eq!(b.ctx.wal.have(&a_origin), RangeSet::from_range(1, 5));

    for n in [a, b, hub, mule, carrier] {
        n.shutdown().await;
    }

    // After a restart B knows the revocation from its WAL alone.
    let b = start(&b_dir, None).await.unwrap();
    assert!(b.ctx.revocations.is_revoked(&a_id));
    b.shutdown().await;
}

/// A revocation signed by another CA, and a genuine one with its reason
/// altered, enter the hub's log as a rogue node would put them there: no
/// node acts on them, each says so in its log and metrics, and sync goes
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_tampered_revocations_are_ignored_and_logged() {
    init_logging();
    let dep = Deployment::new("district").unwrap();
    let other = Deployment::new("elsewhere").unwrap();
    let hub_dir = dep.enroll("hub", Role::Hub).unwrap();
    let a_dir = dep.enroll("clinic-a", Role::Clinic).unwrap();
    let b_dir = dep.enroll("clinic-b", Role::Clinic).unwrap();
    let a_id = a_dir.identity().unwrap().node_id;
    let (forged, _) = ferry::revocation::sign(&other.ca_dir, a_id, "forged").unwrap();
    let (genuine, _) = ferry::revocation::sign(&dep.ca_dir, a_id, "lost").unwrap();
    let mut tampered = genuine.clone();
    let at = tampered.windows(4).position(|w| w == b"lost").unwrap();
    tampered[at..at + 4].copy_from_slice(b"LOST");

    // The CLI will not put either into the log.
    for (what, bytes) in [("forged", &forged), ("tampered", &tampered)] {
        let f = dep.tmp.path().join(what);
        std::fs::write(&f, bytes).unwrap();
        let out = ferry(&["revoke", "--data-dir", path(&hub_dir.root), "--file", path(&f)]);
        assert!(!out.status.success(), "{what} revocation accepted by the CLI");
    }

    let hub = start(&hub_dir, None).await.unwrap();
    let a = start(&a_dir, None).await.unwrap();
    let items = [&forged, &tampered]
        .iter()
        .map(|p| ferry_wal::NewEvent {
            topic: TOPIC.into(),
            priority: Priority::Urgent,
            payload: (*p).clone(),
        })
        .collect();
    hub.ctx.wal.append_local(items).await.unwrap();
    write_events(&hub.ctx.wal, workload("HUB", 10, 3).unwrap(), Priority::Normal)
        .await
        .unwrap();
    eventually("the hub to see both are invalid", Duration::from_secs(10), || {
        hub.ctx.revocations.invalid() == 2
    })
    .await
    .unwrap();
    assert!(!hub.ctx.revocations.is_revoked(&a_id));

    // B syncs as its own process: the warnings are in its log, and it
    // holds everything, the invalid revocations too (they are events of
    // the hub's log), acting on none.
    let out = ferry(&[
        "sync",
        "--data-dir",
        path(&b_dir.root),
        "--peer",
        &hub.local_addr().unwrap().to_string(),
    ]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("ignoring an invalid revocation").count(),
        2,
        "one warning per invalid revocation:\n{log}"
    );
    assert!(log.contains("not by this deployment's CA"), "{log}");
    assert!(log.contains("altered or forged"), "{log}");
    assert_eq!(ferry_tests::held(&b_dir).len(), 12);

    // A is not revoked anywhere: it still syncs with the hub and with B.
    a.sync_once(hub.local_addr().unwrap()).await.unwrap();
    let b = start(&b_dir, None).await.unwrap();
    assert!(!b.ctx.revocations.is_revoked(&a_id));
    assert_eq!(b.ctx.revocations.invalid(), 2, "read again from the WAL at start");
    a.sync_once(b.local_addr().unwrap()).await.unwrap();
    for n in [a, b, hub] {
        n.shutdown().await;
    }
}

/// A clinic whose certificate is near its end is warned, renews it with
/// the same key (so the same node id), and still syncs. The CA will not
/// sign again for a node it revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_keeps_the_node_id_and_syncs() {
    init_logging();
    let dep = Deployment::new("district").unwrap();
    let hub = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    let dir = DataDir::new(dep.tmp.path().join("clinic"));
    dir.init("clinic", true).unwrap();
    dir.enroll_locally_for(&dep.ca_dir, Role::Clinic, 30).unwrap();
    let id = dir.identity().unwrap().node_id;
    let status_of = |dir: &DataDir| -> serde_json::Value {
        serde_json::from_str(&ok(&["status", "--json", "--data-dir", path(&dir.root)])).unwrap()
    };
    let status = status_of(&dir);
    assert_eq!(status["certificate"]["expiring"], true, "{status}");
    let text = ok(&["status", "--data-dir", path(&dir.root)]);
    assert!(
        text.contains("expires in 29 days") || text.contains("expires in 30 days"),
        "{text}"
    );

    let root = path(&dir.root);
    let csr = dep.tmp.path().join("renew.csr");
    let bundle = dep.tmp.path().join("renew.pem");
    ok(&["csr", "--data-dir", root, "--renew", "--out", path(&csr)]);
    ok(&[
        "ca",
        "sign",
        "--ca-dir",
        path(&dep.ca_dir),
        "--csr",
        path(&csr),
        "--role",
        "clinic",
        "--out",
        path(&bundle),
    ]);
    ok(&["cert", "install", "--data-dir", root, "--cert", path(&bundle)]);
    let renewed = dir.identity().unwrap();
    assert_eq!(renewed.node_id, id, "the same key keeps the node id");
    assert_eq!(renewed.cert.as_ref().unwrap().name, "clinic");
    let status = status_of(&dir);
    assert_eq!(status["certificate"]["expiring"], false, "{status}");
    let days = status["certificate"]["expires_in_seconds"].as_i64().unwrap() / 86_400;
    assert!((1824..=1826).contains(&days), "{days} days");

    let clinic = start(&dir, None).await.unwrap();
    write_events(&clinic.ctx.wal, workload("CL", 3, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    with_api(&clinic).await;
    let addr = std::fs::read_to_string(dir.path(ferry::api::ADDR_FILE)).unwrap();
    let metrics = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let gauge: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_certificate_expiry_seconds "))
        .expect("expiry gauge in /metrics")
        .parse()
        .unwrap();
    assert!(gauge > 1824.0 * 86_400.0, "{gauge}");
    let report = clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    assert_eq!(report.events_sent, 3);
    assert_eq!(report.peer, hub.ctx.node_id.to_string());
    clinic.shutdown().await;
    hub.shutdown().await;

    let file = dep.tmp.path().join("clinic.revocation");
    ok(&[
        "ca",
        "revoke",
        "--ca-dir",
        path(&dep.ca_dir),
        "--node",
        &id.to_string(),
        "--out",
        path(&file),
    ]);
    let out = ferry(&[
        "ca",
        "sign",
        "--ca-dir",
        path(&dep.ca_dir),
        "--csr",
        path(&csr),
        "--role",
        "clinic",
    ]);
    assert!(!out.status.success(), "the CA signed a revoked node again");
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
}

/// A revocation written at a clinic reaches the hub (hubs receive
/// everything), which writes it again into its own log; so under the
/// policy `role`, where clinics receive only their own and hubs' events,
/// it still reaches every clinic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_written_at_a_clinic_reaches_other_clinics_through_the_hub() {
    init_logging();
    let dep = Deployment::new("district").unwrap();
    let hub = start(&dep.enroll("hub", Role::Hub).unwrap(), Some(Policy::Role))
        .await
        .unwrap();
    let c_dir = dep.enroll("clinic-c", Role::Clinic).unwrap();
    let victim = dep
        .enroll("clinic-v", Role::Clinic)
        .unwrap()
        .identity()
        .unwrap()
        .node_id;
    let (bytes, _) = ferry::revocation::sign(&dep.ca_dir, victim, "lost").unwrap();
    let file = dep.tmp.path().join("v.revocation");
    std::fs::write(&file, &bytes).unwrap();
    // No daemon at C: straight into its WAL, read at the next start.
    ok(&["revoke", "--data-dir", path(&c_dir.root), "--file", path(&file)]);
    let c = start(&c_dir, Some(Policy::Role)).await.unwrap();
    assert!(c.ctx.revocations.is_revoked(&victim), "read from the WAL at start");
    let b = start(&dep.enroll("clinic-b", Role::Clinic).unwrap(), Some(Policy::Role))
        .await
        .unwrap();
    c.sync_once(hub.local_addr().unwrap()).await.unwrap();
    // The hub's first write of this start begins its log: read it each time.
    eventually("the hub to write it into its own log", Duration::from_secs(10), || {
        hub.ctx.wal.have(&hub.ctx.wal.local_origin()).count() == 1
    })
    .await
    .unwrap();
    b.sync_once(hub.local_addr().unwrap()).await.unwrap();
    eventually("B to hold the revocation", Duration::from_secs(10), || {
        b.ctx.revocations.is_revoked(&victim)
    })
    .await
    .unwrap();
    assert_eq!(
        b.ctx.wal.have(&c.ctx.wal.local_origin()).count(),
        0,
        "B got it from the hub's log, not C's"
    );
    for n in [b, c, hub] {
        n.shutdown().await;
    }
}

/// A renewed certificate travels back by the log: signed at the CA,
/// published at the hub, installed by the clinic when the event reaches it
/// in an ordinary sync; the clinic presents it after a restart. A bundle
/// for the clinic from another CA is refused by `ferry cert publish`, and
/// when a relay writes one into the log anyway the clinic keeps its own
/// certificate and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_travels_to_its_node_by_the_log() {
    init_logging();
    let dep = Deployment::new("district").unwrap();
    let hub_dir = dep.enroll("hub", Role::Hub).unwrap();
    let hub = start(&hub_dir, None).await.unwrap();
    with_api(&hub).await;
    let dir = DataDir::new(dep.tmp.path().join("clinic"));
    dir.init("clinic", true).unwrap();
    dir.enroll_locally_for(&dep.ca_dir, Role::Clinic, 30).unwrap();
    let expires_in_days = |dir: &DataDir| -> i64 {
        let status: serde_json::Value =
            serde_json::from_str(&ok(&["status", "--json", "--data-dir", path(&dir.root)])).unwrap();
        status["certificate"]["expires_in_seconds"].as_i64().unwrap() / 86_400
    };
    assert!((29..=30).contains(&expires_in_days(&dir)));

    let csr = dep.tmp.path().join("renew.csr");
    ok(&["csr", "--data-dir", path(&dir.root), "--renew", "--out", path(&csr)]);
    let sign = |ca: &Path, days: &str, out: &Path| {
        ok(&[
            "ca",
            "sign",
            "--ca-dir",
            path(ca),
            "--csr",
            path(&csr),
            "--role",
            "clinic",
            "--days",
            days,
            "--out",
            path(out),
        ]);
    };
    // A certificate for the clinic's key from a CA outside the deployment.
    let other = Deployment::new("elsewhere").unwrap();
    let foreign = dep.tmp.path().join("foreign.pem");
    sign(&other.ca_dir, "3000", &foreign);
    let out = ferry(&[
        "cert",
        "publish",
        "--data-dir",
        path(&hub_dir.root),
        "--file",
        path(&foreign),
    ]);
    assert!(!out.status.success(), "published a certificate of another CA");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed by this deployment's CA"));
    // A relay puts it in the log all the same.
    hub.ctx
        .wal
        .append_local(vec![ferry_wal::NewEvent {
            topic: ferry::renewal::TOPIC.into(),
            priority: Priority::Urgent,
            payload: std::fs::read(&foreign).unwrap(),
        }])
        .await
        .unwrap();
    let renewed = dep.tmp.path().join("renewed.pem");
    sign(&dep.ca_dir, "1826", &renewed);
    let id = ok(&[
        "cert",
        "publish",
        "--data-dir",
        path(&hub_dir.root),
        "--file",
        path(&renewed),
    ]);
    assert!(id.trim().starts_with(&hub.ctx.wal.local_origin().to_string()), "{id}");

    let clinic = start(&dir, None).await.unwrap();
    clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    eventually("the renewed certificate installed", Duration::from_secs(10), || {
        expires_in_days(&dir) > 30
    })
    .await
    .unwrap();
    let days = expires_in_days(&dir);
    assert!(
        (1824..=1826).contains(&days),
        "installed the deployment's 5-year certificate, not the foreign one: {days} days"
    );
    assert_eq!(dir.identity().unwrap().node_id, clinic.ctx.node_id);
    let held = ferry_tests::held(&dir);
    assert!(held.len() >= 2, "both certificate events were carried: {held:?}");

    // Restarted, the clinic presents the renewed certificate and syncs.
    clinic.shutdown().await;
    drop(clinic);
    let clinic = start(&dir, None).await.unwrap();
    write_events(&clinic.ctx.wal, workload("CL", 2, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let report = clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    assert_eq!(report.events_sent, 2);
    clinic.shutdown().await;
    hub.shutdown().await;
}
