//! Events the simulated clinics write: varied, clinic-like JSON of a few
//! hundred bytes, now and then a scanned form or a photo, in the mix of
//! priorities a clinic produces. Deterministic from the simulation's seed.

use ferry_proto::Priority;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const GIVEN: &[&str] = &[
    "Karma", "Pema", "Sonam", "Tshering", "Dorji", "Ugyen", "Kinley", "Jigme", "Deki",
];
const FAMILY: &[&str] = &["Wangchuk", "Dorji", "Zangmo", "Lhamo", "Gyeltshen", "Tenzin", "Norbu"];
const KINDS: &[&str] = &["registration", "vitals", "consultation", "lab_result", "prescription"];
const NOTES: &[&str] = &[
    "fever and cough for three days",
    "follow-up for hypertension",
    "antenatal visit, 28 weeks",
    "child immunisation, measles dose 2",
    "diarrhoea since yesterday, mild dehydration",
    "routine diabetes review",
];

fn pick<'a>(rng: &mut ChaCha8Rng, from: &[&'a str]) -> &'a str {
    from[rng.gen_range(0..from.len())]
}

fn small(rng: &mut ChaCha8Rng, clinic: &str) -> Vec<u8> {
    format!(
        r#"{{"type":"{}","clinic":"{clinic}","patient_id":"BT-TH-{:06}","recorded_by":"{} {}","systolic":{},"pulse":{},"note":"{}"}}"#,
        pick(rng, KINDS),
        rng.gen_range(0..1_000_000),
        pick(rng, GIVEN),
        pick(rng, FAMILY),
        rng.gen_range(90..185),
        rng.gen_range(48..130),
        pick(rng, NOTES),
    )
    .into_bytes()
}

/// A photo (incompressible) or a scanned form as base64 text.
fn large(rng: &mut ChaCha8Rng, max: usize) -> Vec<u8> {
    let len = rng.gen_range(40_000..max.max(40_001));
    let raw: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    if rng.gen_bool(0.5) {
        raw
    } else {
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        raw.iter().map(|b| B64[(*b & 63) as usize]).collect()
    }
}

/// How a node writes, drawn per seed.
#[derive(Clone, Debug)]
pub struct Mix {
    /// Mean seconds between writes.
    pub every_secs: f64,
    pub batch_max: usize,
    /// Chance that an event is large, and the largest size.
    pub large: f64,
    pub large_max: usize,
    pub urgent: f64,
    pub bulk: f64,
}

impl Mix {
    pub fn draw(rng: &mut ChaCha8Rng, large_events: bool) -> Mix {
        Mix {
            every_secs: rng.gen_range(5.0..90.0),
            batch_max: *[1, 1, 3, 20].get(rng.gen_range(0..4)).unwrap_or(&1),
            large: if large_events { rng.gen_range(0.0..0.05) } else { 0.0 },
            large_max: rng.gen_range(60_000..900_000),
            urgent: rng.gen_range(0.0..0.15),
            bulk: rng.gen_range(0.0..0.3),
        }
    }

    /// One write's events: topic, priority, payload.
    pub fn batch(&self, rng: &mut ChaCha8Rng, clinic: &str) -> Vec<(String, Priority, Vec<u8>)> {
        let n = rng.gen_range(1..=self.batch_max);
        (0..n)
            .map(|_| {
                let r: f64 = rng.gen();
                let priority = if r < self.urgent {
                    Priority::Urgent
                } else if r < self.urgent + self.bulk {
                    Priority::Bulk
                } else {
                    Priority::Normal
                };
                let payload = if rng.gen_bool(self.large) {
                    large(rng, self.large_max)
                } else {
                    small(rng, clinic)
                };
                let topic = if payload.first() == Some(&b'{') {
                    "clinic/visit"
                } else {
                    "clinic/attachment"
                };
                (topic.to_string(), priority, payload)
            })
            .collect()
    }
}
