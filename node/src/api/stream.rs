//! `GET /v1/stream`: events as they become durable here, written locally or
//! received from peers, as Server-Sent Events.
//!
//! Order: each origin's events come in sequence order with no gaps. An
//! event that arrived from a peer ahead of earlier ones of its origin waits
//! until those arrive (replication fills such holes).
//!
//! Position: a cursor holds, per origin, the last sequence number delivered.
//! Each event's SSE id is `ORIGIN:SEQ`; after each batch, and before the
//! stream goes quiet, a `cursor` event carries the whole cursor as its id
//! (`ORIGIN:SEQ,ORIGIN:SEQ,...`). A client resumes by sending either back
//! as `Last-Event-ID` (browsers do this on their own) or as `after=`: the
//! origins it names continue after the given numbers, the rest from where
//! `from` says (`start`, the default, or `now`).

use super::error::{bad_request, ApiError};
use super::events::{parse_origin, EventJson};
use super::Api;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use ferry_proto::Origin;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Events read from the WAL at a time while catching up.
const PAGE: usize = 256;

#[derive(Deserialize)]
pub struct StreamQuery {
    /// `start` (everything held) or `now` (only what arrives from now on).
    from: Option<String>,
    /// A cursor, `ORIGIN:SEQ[,ORIGIN:SEQ...]`.
    after: Option<String>,
    /// Only these topics (comma-separated).
    topic: Option<String>,
    /// Only these origins (comma-separated).
    origin: Option<String>,
    /// Also send `peers` events: each peer's state when it changes.
    peers: Option<bool>,
}

/// Per origin, the last sequence number delivered.
pub type Cursor = BTreeMap<Origin, u64>;

pub fn parse_cursor(s: &str) -> Result<Cursor, ApiError> {
    let mut out = Cursor::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (o, seq) = part
            .rsplit_once(':')
            .ok_or_else(|| bad_request(format!("cursor entry '{part}' is not ORIGIN:SEQ")))?;
        let seq: u64 = seq
            .parse()
            .map_err(|_| bad_request(format!("cursor entry '{part}': '{seq}' is not a whole number")))?;
        out.insert(parse_origin(o)?, seq);
    }
    Ok(out)
}

pub fn format_cursor(c: &Cursor) -> String {
    c.iter().map(|(o, s)| format!("{o}:{s}")).collect::<Vec<_>>().join(",")
}

struct Filter {
    topics: Option<BTreeSet<String>>,
    origins: Option<BTreeSet<Origin>>,
}

impl Filter {
    fn origin(&self, o: &Origin) -> bool {
        self.origins.as_ref().is_none_or(|set| set.contains(o))
    }
    fn topic(&self, t: &str) -> bool {
        self.topics.as_ref().is_none_or(|set| set.contains(t))
    }
}

pub async fn stream(
    State(api): State<Arc<Api>>,
    q: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let from_now = match q.from.as_deref() {
        None | Some("start") => false,
        Some("now") => true,
        Some(other) => return Err(bad_request(format!("from '{other}': use start or now"))),
    };
    let mut cursor = q.after.as_deref().map(parse_cursor).transpose()?.unwrap_or_default();
    if let Some(last) = headers.get("last-event-id") {
        let last = last.to_str().map_err(|_| bad_request("Last-Event-ID is not text"))?;
        cursor.extend(parse_cursor(last)?);
    }
    let filter = Filter {
        topics: q.topic.map(|t| t.split(',').map(str::to_string).collect()),
        origins: q
            .origin
            .map(|o| o.split(',').map(parse_origin).collect::<Result<_, _>>())
            .transpose()?,
    };
    if from_now {
        for (o, have) in &api.wal.summary().0 {
            cursor.entry(*o).or_insert(have.last().unwrap_or(0));
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Out>(64);
    let feed = Feed {
        api: api.clone(),
        cursor,
        filter,
        peers: q.peers.unwrap_or(false),
        tx,
    };
    tokio::spawn(feed.run());
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|out| (Ok::<_, Infallible>(out.into_sse()), rx))
    });
    Ok(axum::response::Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// What the feed sends, before it becomes Server-Sent Event text.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    /// An event: its `ORIGIN:SEQ` and its JSON.
    Event(String, String),
    /// A record write (`event: record`): its `ORIGIN:SEQ` and its JSON.
    Record(String, String),
    /// The whole cursor after a batch.
    Cursor(String, String),
    Peers(String),
    Error(String),
}

impl Out {
    fn into_sse(self) -> Sse {
        match self {
            Out::Event(id, data) => Sse::default().id(id).data(data),
            Out::Record(id, data) => Sse::default().event("record").id(id).data(data),
            Out::Cursor(id, data) => Sse::default().event("cursor").id(id).data(data),
            Out::Peers(data) => Sse::default().event("peers").data(data),
            Out::Error(data) => Sse::default().event("error").data(data),
        }
    }
}

struct Feed {
    api: Arc<Api>,
    cursor: Cursor,
    filter: Filter,
    peers: bool,
    tx: tokio::sync::mpsc::Sender<Out>,
}

impl Feed {
    async fn run(mut self) {
        let mut appended = self.api.wal.subscribe();
        let mut last_peers = String::new();
        let mut peer_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            match self.catch_up().await {
                Ok(true) => {
                    let id = format_cursor(&self.cursor);
                    let data = serde_json::json!({ "cursor": self.cursor.iter().map(|(o, s)| (o.to_string(), *s)).collect::<BTreeMap<_, _>>() });
                    if self.send(Out::Cursor(id, data.to_string())).await.is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("event stream stopped: {e}");
                    let data = serde_json::json!({ "error": { "code": "storage_error", "message": e.to_string() } });
                    let _ = self.send(Out::Error(data.to_string())).await;
                    return;
                }
            }
            tokio::select! {
                changed = appended.changed() => if changed.is_err() { return },
                _ = peer_tick.tick(), if self.peers => {
                    let peers = serde_json::json!({ "peers": super::peer_list(&self.api) }).to_string();
                    if peers != last_peers {
                        if self.send(Out::Peers(peers.clone())).await.is_err() {
                            return;
                        }
                        last_peers = peers;
                    }
                }
                _ = self.api.stopping.cancelled() => return,
                _ = self.tx.closed() => return,
            }
        }
    }

    async fn send(&self, e: Out) -> Result<(), ()> {
        self.tx.send(e).await.map_err(|_| ())
    }

    /// Sends every event held that follows the cursor without a gap.
    /// Returns whether the cursor moved.
    async fn catch_up(&mut self) -> Result<bool, ferry_wal::WalError> {
        let mut moved = false;
        for (origin, have) in &self.api.wal.summary().0 {
            if !self.filter.origin(origin) {
                continue;
            }
            let mut at = self.cursor.get(origin).copied().unwrap_or(0);
            // The held range that continues the cursor, if any.
            let Some(&(_, end)) = have.ranges().iter().find(|(a, b)| *a <= at + 1 && at < *b) else {
                continue;
            };
            while at < end {
                let page = self.api.wal.read_range(origin, at + 1, end, PAGE)?;
                let Some(last) = page.last().map(|e| e.seq) else { break };
                for e in page.iter().filter(|e| self.filter.topic(&e.topic)) {
                    let id = format!("{}:{}", e.origin, e.seq);
                    // Record writes come as `record` events, decoded; other
                    // events as they always have.
                    let out = match super::records::stream_json(e) {
                        Some(data) => Out::Record(id, data),
                        None => Out::Event(id, serde_json::to_string(&EventJson::of(e)).unwrap_or_default()),
                    };
                    if self.send(out).await.is_err() {
                        return Ok(moved);
                    }
                }
                at = last;
                self.cursor.insert(*origin, at);
                moved = true;
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{Event, Hlc, NodeId, Priority};
    use ferry_wal::{Keyring, Wal, WalOptions};

    fn event(origin: Origin, seq: u64) -> Event {
        Event {
            origin,
            seq,
            hlc: Hlc(seq << 16),
            topic: "t".into(),
            priority: Priority::Normal,
            payload: format!("{seq}").into_bytes(),
        }
    }

    /// Events of one origin that arrive with a hole wait for it: the stream
    /// never shows seq 5 before seq 3.
    #[tokio::test]
    async fn an_origin_with_a_hole_waits_for_it() {
        let tmp = tempfile::tempdir().unwrap();
        let local = Origin {
            node: NodeId([1; 16]),
            epoch: 1,
        };
        let other = Origin {
            node: NodeId([2; 16]),
            epoch: 7,
        };
        let wal = Arc::new(Wal::open(WalOptions::new(tmp.path(), Keyring::plaintext(), local)).unwrap());
        wal.append_replicated(vec![event(other, 1), event(other, 2), event(other, 5), event(other, 6)])
            .await
            .unwrap();
        let api = Arc::new(Api {
            wal: wal.clone(),
            dir: None,
            node_id: String::new(),
            name: String::new(),
            role: String::new(),
            opts: super::super::ApiOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                max_body_bytes: 1,
            },
            token: None,
            stopping: Default::default(),
            append_seconds: Default::default(),
            records: None,
            revocations: Arc::new(crate::revocation::Revocations::new(Vec::new())),
            writer_keys: Arc::new(crate::logauth::WriterKeys::open(&[], None)),
            silent_peers: Default::default(),
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let feed = Feed {
            api: api.clone(),
            cursor: Cursor::new(),
            filter: Filter {
                topics: None,
                origins: None,
            },
            peers: false,
            tx,
        };
        tokio::spawn(feed.run());
        let mut ids = Vec::new();
        let mut next_id = async || loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Out::Event(id, _) => return id,
                Out::Cursor(..) => {}
                other => panic!("{other:?}"),
            }
        };
        ids.push(next_id().await);
        ids.push(next_id().await);
        assert_eq!(ids, [format!("{other}:1"), format!("{other}:2")]);
        // Nothing more while 3 and 4 are missing.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), next_id())
                .await
                .is_err(),
            "an event after the hole was sent"
        );
        wal.append_replicated(vec![event(other, 3), event(other, 4)])
            .await
            .unwrap();
        for want in 3..=6 {
            assert_eq!(next_id().await, format!("{other}:{want}"));
        }
    }
}
