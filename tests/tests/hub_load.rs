//! A hub with many clinic daemons connected converges with all of them,
//! still answers its local API and gives a new clinic its first sync: the
//! hub benchmark, run small (15 clinics, 20 events each, a 3G link) so it
//! takes seconds in the test suite; `hub-bench --clinics 100` is the
//! benchmark itself. Every node is its own process.
//!
//! hub-bench fails unless every clinic's events reach the hub and the hub's
//! reach every clinic, and unless the newcomer and the hub hold each other's
//! events after its sync; this test checks that it succeeded and what it
//! reports about the hub under that load.

use serde_json::Value;
use std::process::Command;

const CLINICS: u64 = 15;
const EVENTS: u64 = 20;

#[test]
fn a_hub_with_many_clinics_converges_and_serves_its_api_and_a_new_clinic() {
    let out = Command::new(env!("CARGO_BIN_EXE_hub-bench"))
        .args(["--clinics", &CLINICS.to_string(), "--events", &EVENTS.to_string()])
        .args(["--profile", "urban_3g", "--idle-secs", "1", "--timeout-secs", "120"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hub-bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hub-bench printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("{report}");

    // Each clinic held the hub's events and the hub each clinic's.
    assert_eq!(report["clinics_converged"], CLINICS, "{report}");
    assert!(report["slowest_clinic_seconds"].as_f64().is_some(), "{report}");
    // All of them connected at once when the hub was asked.
    assert_eq!(report["clinics_connected_to_hub"], CLINICS, "{report}");
    // The newcomer synced while they stayed connected, and received the
    // hub's events.
    assert_eq!(report["new_clinic_events_received"], EVENTS, "{report}");
    // Twenty `GET /v1/status` answers from the hub under that load.
    assert_eq!(report["hub_api_status_answers"], 20, "{report}");
    // The hub was alive to be measured.
    assert!(report["hub_rss_peak_kib"].as_u64().is_some_and(|k| k > 0), "{report}");
}
