//! A client session and the streams its messages travel on.
//!
//! Every message for the client is delivered with the client request it relates to (if any):
//! it goes on that request's SSE stream when one is open (or to its JSON waiter, for the
//! response itself), otherwise on the session's GET stream; with no stream at all, unrelated
//! messages wait in a small queue for the next GET stream. A message goes on exactly one
//! stream, never broadcast.
//!
//! Every event on a stream gets an id `<stream>_<seq>`, and the last events of each stream
//! are kept so that a client reconnecting with `Last-Event-ID` gets what it missed on that
//! stream, and only that stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::protocol::jsonrpc;
use super::protocol::sse::{SseEvent, event_id};
use crate::domain::now_millis;
use crate::metrics::METRICS;

/// Events kept per stream for replay.
const REPLAY_EVENTS: usize = 256;
/// Bytes kept per stream for replay.
const REPLAY_BYTES: usize = 4 * 1024 * 1024;
/// Finished streams kept for late resumption.
const FINISHED_STREAMS: usize = 32;
/// Unrelated messages kept while the client has no GET stream.
const WAITING_UNRELATED: usize = 256;
/// Events queued to one live connection before it is treated as stuck (it is closed; the
/// client resumes with `Last-Event-ID`).
const LIVE_QUEUE: usize = 1024;

impl Drop for Session {
    fn drop(&mut self) {
        let s = self.streams.get_mut().unwrap_or_else(|p| p.into_inner());
        for _ in s.pending.drain() {
            METRICS.mcp_request(self.front.name(), self.transport, "unanswered", None);
        }
    }
}

/// Which front the session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// Streamable HTTP (`/mcp`).
    Streamable,
    /// Legacy HTTP+SSE (`/sse`): one stream carries everything.
    Legacy,
}

impl Front {
    /// The front's name in metrics: the transport the client speaks.
    pub fn name(self) -> &'static str {
        match self {
            Front::Streamable => "streamable_http",
            Front::Legacy => "sse",
        }
    }
}

/// What an outgoing message is, as far as its delivery goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// The response to a client request; `error` when it is an error response.
    Response {
        /// An error response.
        error: bool,
    },
    /// A notification or a server request.
    Other,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// The session already has a GET stream.
    Conflict,
    /// The session has ended.
    Closed,
}

struct Stream {
    seq: u64,
    buffer: VecDeque<(u64, Arc<str>)>,
    buffered: usize,
    live: Option<mpsc::Sender<SseEvent>>,
    /// The response was sent: nothing more will come on this stream.
    finished: bool,
}

impl Stream {
    fn new() -> Self {
        Stream {
            seq: 0,
            buffer: VecDeque::new(),
            buffered: 0,
            live: None,
            finished: false,
        }
    }
}

enum Target {
    Json(oneshot::Sender<Arc<str>>),
    Stream(u64),
}

#[derive(Default)]
struct Streams {
    next_stream: u64,
    streams: HashMap<u64, Stream>,
    finished_order: VecDeque<u64>,
    by_request: HashMap<String, Target>,
    get_stream: Option<u64>,
    legacy: Option<mpsc::Sender<SseEvent>>,
    waiting: VecDeque<Arc<str>>,
    /// When each client request still waiting for its answer was sent (metrics).
    pending: HashMap<String, Instant>,
}

/// A client session of one deployment.
pub struct Session {
    /// Session id (`Mcp-Session-Id`, or the legacy `sessionId`).
    pub id: String,
    /// Deployment it belongs to.
    pub deployment_id: String,
    /// Front it came through.
    pub front: Front,
    /// The deployment's transport (`stdio`, `sse`, `streamable_http`), for metrics.
    pub transport: &'static str,
    protocol_version: Mutex<Option<String>>,
    last_active: AtomicI64,
    streams: Mutex<Streams>,
    /// Cancelled when the session ends.
    pub closed: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// A new session.
    pub fn new(
        id: String,
        deployment_id: String,
        front: Front,
        transport: &'static str,
    ) -> Arc<Session> {
        Arc::new(Session {
            id,
            deployment_id,
            front,
            transport,
            protocol_version: Mutex::new(None),
            last_active: AtomicI64::new(now_millis()),
            streams: Mutex::default(),
            closed: CancellationToken::new(),
        })
    }

    /// The negotiated protocol version, once initialized.
    pub fn protocol_version(&self) -> Option<String> {
        lock(&self.protocol_version).clone()
    }

    /// Records the negotiated protocol version.
    pub fn set_protocol_version(&self, v: &str) {
        *lock(&self.protocol_version) = Some(v.to_owned());
    }

    /// Marks activity now.
    pub fn touch(&self) {
        self.last_active.store(now_millis(), Ordering::Relaxed);
    }

    /// Last activity (Unix ms).
    pub fn last_active(&self) -> i64 {
        self.last_active.load(Ordering::Relaxed)
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Ends the session: every open stream ends, waiting requests are dropped.
    pub fn close(&self) {
        self.closed.cancel();
        let mut s = lock(&self.streams);
        s.by_request.clear();
        s.legacy = None;
        for stream in s.streams.values_mut() {
            stream.live = None;
        }
    }

    /// The legacy front's single stream; it starts with the `endpoint` event.
    pub fn open_legacy(&self, endpoint: String) -> mpsc::Receiver<SseEvent> {
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        let _ = tx.try_send(SseEvent {
            id: None,
            event: "endpoint",
            data: endpoint.into(),
        });
        lock(&self.streams).legacy = Some(tx);
        rx
    }

    /// Notes that client request `key` went upstream: its answer's latency is measured.
    pub fn request_sent(&self, key: String) {
        lock(&self.streams).pending.insert(key, Instant::now());
    }

    /// Notes that the client cancelled request `key`: no answer is waited for any more.
    pub fn request_cancelled(&self, key: &str) {
        if lock(&self.streams).pending.remove(key).is_some() {
            METRICS.mcp_request(self.front.name(), self.transport, "cancelled", None);
        }
    }

    /// Waits for the response to request `key` as a JSON body.
    pub fn expect_json(&self, key: String) -> oneshot::Receiver<Arc<str>> {
        let (tx, rx) = oneshot::channel();
        lock(&self.streams).by_request.insert(key, Target::Json(tx));
        rx
    }

    /// Opens the SSE stream of request `key`; it ends after the response. With `prime`, a
    /// first event with an id and no data lets the client resume even before any message.
    pub fn open_request_stream(&self, key: String, prime: bool) -> mpsc::Receiver<SseEvent> {
        let mut s = lock(&self.streams);
        let (stream_id, rx) = s.new_stream(prime);
        s.by_request.insert(key, Target::Stream(stream_id));
        rx
    }

    /// Opens the session's GET stream (one at a time); queued unrelated messages come first.
    pub fn open_get_stream(&self, prime: bool) -> Result<mpsc::Receiver<SseEvent>, StreamError> {
        if self.is_closed() {
            return Err(StreamError::Closed);
        }
        let mut s = lock(&self.streams);
        if let Some(id) = s.get_stream
            && s.streams
                .get(&id)
                .is_some_and(|st| st.live.as_ref().is_some_and(|l| !l.is_closed()))
        {
            return Err(StreamError::Conflict);
        }
        let (stream_id, rx) = s.new_stream(prime);
        s.get_stream = Some(stream_id);
        while let Some(data) = s.waiting.pop_front() {
            s.push(stream_id, data);
        }
        Ok(rx)
    }

    /// Resumes stream `stream_id` after event `seq`: replays what followed on that stream and
    /// goes on live if the stream has not finished. `None` when the stream is unknown.
    pub fn resume(&self, stream_id: u64, seq: u64) -> Option<mpsc::Receiver<SseEvent>> {
        let mut s = lock(&self.streams);
        let stream = s.streams.get_mut(&stream_id)?;
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        for (n, data) in stream.buffer.iter().filter(|(n, _)| *n > seq) {
            let _ = tx.try_send(SseEvent {
                id: Some(event_id(stream_id, *n)),
                event: "message",
                data: data.clone(),
            });
        }
        if !stream.finished {
            stream.live = Some(tx);
        }
        Some(rx)
    }

    /// Delivers a message for the client. `related` is the key of the client request it
    /// belongs to. Returns false when the session has ended.
    pub fn deliver(&self, message: &Value, related: Option<&str>) -> bool {
        if self.is_closed() {
            return false;
        }
        let kind = match jsonrpc::classify(message) {
            Ok(jsonrpc::Kind::Response) => Outgoing::Response {
                error: message.get("error").is_some(),
            },
            _ => Outgoing::Other,
        };
        self.deliver_text(message.to_string().into(), kind, related)
    }

    /// Delivers a message already serialized (`data`, one line of JSON) of kind `kind`; see
    /// `deliver`.
    pub fn deliver_text(&self, data: Arc<str>, kind: Outgoing, related: Option<&str>) -> bool {
        if self.is_closed() {
            return false;
        }
        let is_response = matches!(kind, Outgoing::Response { .. });
        let mut s = lock(&self.streams);
        if let Outgoing::Response { error } = kind
            && let Some(sent) = related.and_then(|k| s.pending.remove(k))
        {
            let outcome = if error { "error" } else { "result" };
            METRICS.mcp_request(
                self.front.name(),
                self.transport,
                outcome,
                Some(sent.elapsed()),
            );
        }
        if self.front == Front::Legacy {
            if let Some(tx) = &s.legacy {
                let ok = tx
                    .try_send(SseEvent {
                        id: None,
                        event: "message",
                        data,
                    })
                    .is_ok();
                if !ok {
                    s.legacy = None;
                }
            }
            return true;
        }
        let target = related.and_then(|k| {
            if is_response {
                s.by_request.remove(k)
            } else {
                match s.by_request.get(k) {
                    Some(Target::Stream(id)) => Some(Target::Stream(*id)),
                    _ => None,
                }
            }
        });
        match target {
            Some(Target::Json(tx)) => {
                let _ = tx.send(data);
            }
            Some(Target::Stream(id)) => {
                s.push(id, data);
                if is_response {
                    s.finish(id);
                }
            }
            None if is_response => {
                // A response nobody waits for any more (the client cancelled or left).
            }
            None => match s.get_stream {
                Some(id) if s.streams.get(&id).is_some_and(|st| st.live.is_some()) => {
                    s.push(id, data)
                }
                _ => {
                    if s.waiting.len() == WAITING_UNRELATED {
                        s.waiting.pop_front();
                    }
                    s.waiting.push_back(data);
                }
            },
        }
        true
    }
}

impl Streams {
    fn new_stream(&mut self, prime: bool) -> (u64, mpsc::Receiver<SseEvent>) {
        self.next_stream += 1;
        let id = self.next_stream;
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        if prime {
            let _ = tx.try_send(SseEvent {
                id: Some(event_id(id, 0)),
                event: "message",
                data: Arc::from(""),
            });
        }
        let mut stream = Stream::new();
        stream.live = Some(tx);
        self.streams.insert(id, stream);
        (id, rx)
    }

    fn push(&mut self, stream_id: u64, data: Arc<str>) {
        let Some(st) = self.streams.get_mut(&stream_id) else {
            return;
        };
        st.seq += 1;
        st.buffered += data.len();
        st.buffer.push_back((st.seq, data.clone()));
        while st.buffer.len() > REPLAY_EVENTS || st.buffered > REPLAY_BYTES {
            match st.buffer.pop_front() {
                Some((_, old)) => st.buffered -= old.len(),
                None => break,
            }
        }
        if let Some(live) = &st.live {
            let sent = live.try_send(SseEvent {
                id: Some(event_id(stream_id, st.seq)),
                event: "message",
                data,
            });
            if sent.is_err() {
                // Gone or stuck: the events stay in the buffer for a resumption.
                st.live = None;
            }
        }
    }

    fn finish(&mut self, stream_id: u64) {
        if let Some(st) = self.streams.get_mut(&stream_id) {
            st.finished = true;
            st.live = None;
        }
        self.finished_order.push_back(stream_id);
        while self.finished_order.len() > FINISHED_STREAMS {
            if let Some(old) = self.finished_order.pop_front() {
                self.streams.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(id: i64) -> Value {
        json!({"jsonrpc":"2.0","id":id,"result":{}})
    }

    fn note(n: i64) -> Value {
        json!({"jsonrpc":"2.0","method":"notifications/message","params":{"n":n}})
    }

    fn drain(rx: &mut mpsc::Receiver<SseEvent>) -> Vec<String> {
        let mut out = vec![];
        while let Ok(e) = rx.try_recv() {
            out.push(format!("{}|{}", e.id.unwrap_or_default(), e.data));
        }
        out
    }

    #[test]
    fn a_cancelled_request_is_no_longer_waited_for() {
        let s = Session::new("s".into(), "d".into(), Front::Streamable, "stdio");
        s.request_sent("1".into());
        s.request_sent("2".into());
        s.request_cancelled("1");
        s.request_cancelled("7"); // never sent: nothing to forget
        let pending: Vec<String> = lock(&s.streams).pending.keys().cloned().collect();
        assert_eq!(pending, vec!["2".to_owned()]);
    }

    #[test]
    fn a_request_stream_carries_related_messages_then_the_response_and_ends() {
        let s = Session::new("s".into(), "d".into(), Front::Streamable, "stdio");
        let mut rx = s.open_request_stream("1".into(), false);
        assert!(s.deliver(&note(1), Some("1")));
        assert!(s.deliver(&response(1), Some("1")));
        let got = drain(&mut rx);
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with("1_1|"));
        assert!(got[1].starts_with("1_2|"));
        // The sender is gone: the stream has ended.
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn unrelated_messages_wait_for_the_get_stream_and_are_never_duplicated() {
        let s = Session::new("s".into(), "d".into(), Front::Streamable, "stdio");
        let mut req = s.open_request_stream("1".into(), false);
        s.deliver(&note(7), None);
        assert!(
            drain(&mut req).is_empty(),
            "not on an unrelated request's stream"
        );
        let mut get = s.open_get_stream(false).expect("get stream");
        assert_eq!(drain(&mut get).len(), 1);
        assert_eq!(s.open_get_stream(false).err(), Some(StreamError::Conflict));
    }

    #[test]
    fn json_waiters_get_the_response_only() {
        let s = Session::new("s".into(), "d".into(), Front::Streamable, "stdio");
        let mut waiter = s.expect_json("5".into());
        s.deliver(&note(1), Some("5"));
        assert!(waiter.try_recv().is_err());
        s.deliver(&response(5), Some("5"));
        assert_eq!(
            &*waiter.try_recv().expect("response"),
            response(5).to_string()
        );
    }

    #[test]
    fn a_dropped_stream_is_resumed_from_its_last_event_id() {
        let s = Session::new("s".into(), "d".into(), Front::Streamable, "stdio");
        let rx = s.open_request_stream("1".into(), true);
        drop(rx); // the client's connection broke
        s.deliver(&note(1), Some("1"));
        s.deliver(&note(2), Some("1"));
        let mut resumed = s.resume(1, 1).expect("known stream");
        s.deliver(&response(1), Some("1"));
        let got = drain(&mut resumed);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("1_2|"));
        assert!(got[1].starts_with("1_3|"));
        assert!(s.resume(99, 0).is_none());
        assert_eq!(
            crate::bridge::protocol::sse::parse_event_id("1_3"),
            Some((1, 3))
        );
        assert_eq!(crate::bridge::protocol::sse::parse_event_id("x"), None);
    }

    #[test]
    fn the_legacy_front_has_one_stream_starting_with_the_endpoint() {
        let s = Session::new("s".into(), "d".into(), Front::Legacy, "stdio");
        let mut rx = s.open_legacy("/mcp-server/d/sse/messages?sessionId=s".into());
        s.deliver(&response(1), Some("1"));
        let first = rx.try_recv().expect("endpoint");
        assert_eq!(first.event, "endpoint");
        let second = rx.try_recv().expect("message");
        assert_eq!(second.event, "message");
        s.close();
        assert!(!s.deliver(&response(2), None));
    }
}
