//! Server-Sent Events on the wire. Outgoing: the events the bridge writes on its clients'
//! streams, their framing and their ids (`<stream>_<seq>`, for `Last-Event-ID`). Incoming: a
//! parser for the streams of HTTP upstreams, bytes in any chunking, events out (`event`,
//! `data`, `id`); comments and `retry` are consumed, and events with no data (priming events)
//! are reported too, so callers can track ids.

use std::sync::Arc;

use bytes::Bytes;

/// One SSE event for a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Event id (`None` on the legacy front, which has no resumption).
    pub id: Option<String>,
    /// Event name (`message`, or `endpoint` on the legacy front).
    pub event: &'static str,
    /// The data (a JSON-RPC message; empty for a priming event).
    pub data: Arc<str>,
}

/// The bytes of one event. An event without data is a priming event: its id lets the client
/// resume before any message came, and `retry` tells it how soon to reconnect.
pub fn frame(e: &SseEvent) -> Bytes {
    let mut out = String::with_capacity(e.data.len() + 48);
    if let Some(id) = &e.id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    if e.data.is_empty() {
        out.push_str("retry: 3000\ndata: \n\n");
    } else {
        out.push_str("event: ");
        out.push_str(e.event);
        out.push('\n');
        for line in e.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    Bytes::from(out)
}

/// The SSE event id of event `seq` on stream `stream`.
pub fn event_id(stream: u64, seq: u64) -> String {
    format!("{stream}_{seq}")
}

/// Parses a `Last-Event-ID` made by [`event_id`].
pub fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.trim().split_once('_')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// One event parsed from an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// `event:` field (`message` when absent).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `id:` field, if any.
    pub id: Option<String>,
}

/// Incremental parser of an upstream's stream.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    max_event: usize,
    oversized: bool,
    retry: Option<u64>,
}

impl Parser {
    /// A parser refusing events larger than `max_event` bytes (they are skipped).
    pub fn new(max_event: usize) -> Self {
        Parser {
            max_event,
            ..Parser::default()
        }
    }

    /// The last `retry` the stream asked for, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// The last event id seen (also of events without data).
    pub fn last_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(e) = self.field(&line) {
                    out.push(e);
                }
            } else if self.line.len() <= self.max_event {
                self.line.push(b);
            } else {
                self.oversized = true;
            }
        }
        out
    }

    fn field(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let event = Event {
                event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                data: self.data.take().unwrap_or_default(),
                id: self.id.clone(),
            };
            if std::mem::take(&mut self.oversized) {
                return None;
            }
            return Some(event);
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (name, value) = match text.split_once(':') {
            Some((n, v)) => (n.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
            None => (text.into_owned(), String::new()),
        };
        match name.as_str() {
            "event" => self.event = Some(value),
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                if !data.is_empty() || self.oversized {
                    data.push('\n');
                }
                if data.len() + value.len() > self.max_event {
                    self.oversized = true;
                } else {
                    data.push_str(&value);
                }
            }
            "id" if !value.contains('\0') => self.id = Some(value),
            "retry" => self.retry = value.parse().ok().or(self.retry),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_any_chunking() {
        let input = b": keep-alive\n\nid: 0\nretry: 3000\ndata:\n\nevent: endpoint\r\ndata: /msg?s=1\r\n\r\nid: 1/2\ndata: {\"a\":\ndata: 1}\n\n";
        let whole = Parser::new(1 << 20).push(input);
        for size in 1..input.len() {
            let mut p = Parser::new(1 << 20);
            let got: Vec<Event> = input.chunks(size).flat_map(|c| p.push(c)).collect();
            assert_eq!(got, whole, "chunk size {size}");
        }
        let real: Vec<&Event> = whole.iter().filter(|e| !e.data.is_empty()).collect();
        assert_eq!(real.len(), 2);
        assert_eq!(real[0].event, "endpoint");
        assert_eq!(real[0].data, "/msg?s=1");
        assert_eq!(real[1].data, "{\"a\":\n1}");
        assert_eq!(real[1].id.as_deref(), Some("1/2"));
        let mut p = Parser::new(1 << 20);
        p.push(input);
        assert_eq!(p.retry(), Some(3000));
        assert_eq!(p.last_id(), Some("1/2"));
    }

    #[test]
    fn sse_frames() {
        let msg = SseEvent {
            id: Some("2_5".into()),
            event: "message",
            data: Arc::from("{\"a\":1}"),
        };
        assert_eq!(
            &frame(&msg)[..],
            b"id: 2_5\nevent: message\ndata: {\"a\":1}\n\n"
        );
        let prime = SseEvent {
            id: Some("2_0".into()),
            event: "message",
            data: Arc::from(""),
        };
        assert_eq!(&frame(&prime)[..], b"id: 2_0\nretry: 3000\ndata: \n\n");
    }

    #[test]
    fn oversized_events_are_skipped() {
        let mut p = Parser::new(8);
        let got = p.push(b"data: 0123456789abcdef\n\ndata: ok\n\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, "ok");
    }
}
