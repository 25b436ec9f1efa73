//! The hub against a fake process: id and token mapping, batching, backlog, capabilities,
//! subscriptions.

use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use super::initialize::answer_initialize;
use super::stdin::Stdin;
use super::*;
use crate::bridge::protocol::sse::SseEvent;
use crate::bridge::session::Front;

/// A fake stdio server: what the hub writes to stdin, and a way to write its stdout.
struct Fake {
    stdin: tokio::io::Lines<BufReader<tokio::io::DuplexStream>>,
    stdout: mpsc::UnboundedSender<Bytes>,
}

impl Fake {
    async fn read(&mut self) -> Value {
        let line = tokio::time::timeout(std::time::Duration::from_secs(5), self.stdin.next_line())
            .await
            .expect("the hub wrote in time")
            .expect("read")
            .expect("a line");
        serde_json::from_str(&line).expect("JSON")
    }

    /// Writes a message in two chunks, split mid-line, as Docker's frames may come.
    fn write(&self, message: Value) {
        let mut bytes = message.to_string().into_bytes();
        bytes.push(b'\n');
        let tail = bytes.split_off(bytes.len() / 2);
        let _ = self.stdout.send(Bytes::from(bytes));
        let _ = self.stdout.send(Bytes::from(tail));
    }
}

fn hub() -> (Arc<StdioHub>, Fake) {
    let (hub_side, fake_side) = tokio::io::duplex(1 << 16);
    let (hub, stdout) = hub_on(Box::pin(hub_side));
    let fake = Fake {
        stdin: BufReader::new(fake_side).lines(),
        stdout,
    };
    (hub, fake)
}

/// A hub writing to `stdin`, and the sender of its process's stdout.
fn hub_on(
    stdin: std::pin::Pin<Box<dyn AsyncWrite + Send>>,
) -> (Arc<StdioHub>, mpsc::UnboundedSender<Bytes>) {
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Bytes>();
    let stdout = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok(b), rx))
    })
    .boxed();
    let attached = Attached {
        stdout,
        stdin,
        stderr: futures_util::stream::empty().boxed(),
    };
    let hub = StdioHub::spawn("dp".into(), attached, 1 << 20, CancellationToken::new());
    (hub, out_tx)
}

fn session(id: &str) -> (Arc<Session>, mpsc::Receiver<SseEvent>) {
    let s = Session::new(id.into(), "dp".into(), Front::Streamable, "stdio");
    let get = s.open_get_stream(false).expect("get stream");
    (s, get)
}

async fn next(rx: &mut mpsc::Receiver<SseEvent>) -> Value {
    let e = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("delivered in time")
        .expect("stream open");
    serde_json::from_str(&e.data).expect("JSON")
}

fn init(id: Value, version: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{"protocolVersion":version,"capabilities":{"sampling":{}},"clientInfo":{"name":"t","version":"0"}}})
}

#[tokio::test]
async fn one_process_many_sessions_ids_tokens_and_cancellation_are_mapped() {
    let (hub, mut fake) = hub();
    let (s1, _g1) = session("s1");
    let (s2, _g2) = session("s2");
    hub.join(s1.clone());
    hub.join(s2.clone());

    // The first initialize reaches the process with the hub's own id.
    let mut r1 = s1.open_request_stream(jsonrpc::key(&json!("a")), false);
    hub.forward(s1.clone(), init(json!("a"), "2025-06-18"));
    let sent = fake.read().await;
    assert_eq!(sent["method"], "initialize");
    assert_ne!(sent["id"], "a");
    fake.write(json!({"jsonrpc":"2.0","id":sent["id"],"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"x","version":"1"}}}));
    assert_eq!(next(&mut r1).await["id"], "a");
    assert_eq!(s1.protocol_version().as_deref(), Some("2025-06-18"));

    // A later session is answered from the cache; its initialized is not forwarded.
    let mut r2 = s2.open_request_stream(jsonrpc::key(&json!(7)), false);
    hub.forward(s2.clone(), init(json!(7), "2025-11-25"));
    let cached = next(&mut r2).await;
    assert_eq!(cached["id"], 7);
    assert_eq!(cached["result"]["protocolVersion"], "2025-06-18");
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    hub.forward(s1.clone(), initialized.clone());
    hub.forward(s2.clone(), initialized);
    assert_eq!(fake.read().await["method"], "notifications/initialized");

    // The same client id from two sessions becomes two upstream ids.
    let mut c1 = s1.open_request_stream(jsonrpc::key(&json!(5)), false);
    let mut c2 = s2.open_request_stream(jsonrpc::key(&json!(5)), false);
    hub.forward(s1.clone(), json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"slow","_meta":{"progressToken":"t"}}}));
    hub.forward(
        s2.clone(),
        json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo"}}),
    );
    let u1 = fake.read().await;
    let u2 = fake.read().await;
    assert_ne!(u1["id"], u2["id"]);
    let token = u1["params"]["_meta"]["progressToken"].clone();
    assert_ne!(token, "t");

    // Progress goes to s1's request stream only, with s1's own token.
    fake.write(json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":token,"progress":1}}));
    let p = next(&mut c1).await;
    assert_eq!(p["params"]["progressToken"], "t");

    // A server request goes to the session with the oldest request in flight (s1) and
    // only s1 may answer it.
    fake.write(json!({"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}));
    assert_eq!(next(&mut c1).await["method"], "sampling/createMessage");
    hub.forward(
        s2.clone(),
        json!({"jsonrpc":"2.0","id":0,"result":{"from":"s2"}}),
    );
    hub.forward(
        s1.clone(),
        json!({"jsonrpc":"2.0","id":0,"result":{"from":"s1"}}),
    );
    assert_eq!(fake.read().await["result"]["from"], "s1");

    // Cancellation names the upstream id.
    hub.forward(
        s1.clone(),
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}),
    );
    let cancel = fake.read().await;
    assert_eq!(cancel["params"]["requestId"], u1["id"]);

    // s2's answer comes back with s2's id.
    fake.write(json!({"jsonrpc":"2.0","id":u2["id"],"result":{"ok":2}}));
    let answer = next(&mut c2).await;
    assert_eq!(
        (answer["id"].clone(), answer["result"]["ok"].clone()),
        (json!(5), json!(2))
    );

    // The process exits: s1's request still in flight gets an error; sessions end.
    drop(fake);
    let error = next(&mut c1).await;
    assert_eq!(error["id"], 5);
    assert_eq!(error["error"]["code"], code::SERVER_UNAVAILABLE);
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        hub.shared.ended.cancelled(),
    )
    .await
    .expect("hub ended");
    assert!(s1.is_closed() && s2.is_closed());
}

/// A process's stdin for tests: records every write it takes; while shut it takes
/// nothing (a server that does not read), until opened.
#[derive(Default)]
struct Pipe {
    broken: AtomicBool,
    shut: AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
    writes: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Pipe {
    fn shut() -> Arc<Pipe> {
        let pipe = Pipe::default();
        pipe.shut.store(true, Ordering::SeqCst);
        Arc::new(pipe)
    }

    fn open(&self) {
        self.shut.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().expect("lock").take() {
            w.wake();
        }
    }

    fn writes(&self) -> Vec<Vec<u8>> {
        self.writes.lock().expect("lock").clone()
    }

    fn taken(&self) -> usize {
        self.writes.lock().expect("lock").iter().map(Vec::len).sum()
    }

    fn stdin(self: &Arc<Self>) -> std::pin::Pin<Box<dyn AsyncWrite + Send>> {
        Box::pin(PipeStdin(self.clone()))
    }
}

struct PipeStdin(Arc<Pipe>);

impl AsyncWrite for PipeStdin {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.0.broken.load(Ordering::SeqCst) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        if self.0.shut.load(Ordering::SeqCst) {
            *self.0.waker.lock().expect("lock") = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.0.writes.lock().expect("lock").push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn an_idle_hub_writes_at_once_and_a_busy_one_batches_in_order() {
    let pipe = Arc::new(Pipe::default());
    let stdin = Stdin::new(pipe.stdin());
    let drain = tokio::spawn(stdin.clone().drain());
    stdin.send(Bytes::from_static(b"a\n"), false);
    assert_eq!(pipe.writes(), vec![b"a\n".to_vec()]);
    stdin.send(Bytes::from_static(b"b\n"), true);
    stdin.send(Bytes::from_static(b"c\n"), true);
    // Not busy, but lines wait before it: it must not overtake them.
    stdin.send(Bytes::from_static(b"d\n"), false);
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !stdin.queue.lock().expect("lock").is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the queue drained");
    assert_eq!(pipe.writes(), vec![b"a\n".to_vec(), b"b\nc\nd\n".to_vec()]);
    drain.abort();
}

/// The hub calls itself busy while another request is in flight: the first request goes
/// out at once, the ones sent while it waits go out together.
#[tokio::test]
async fn requests_sent_while_another_is_in_flight_share_a_write() {
    let pipe = Arc::new(Pipe::default());
    let (hub, _stdout) = hub_on(pipe.stdin());
    let (s1, _g1) = session("s1");
    hub.join(s1.clone());
    let call = |id: u64| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{}});
    hub.forward(s1.clone(), call(1));
    assert_eq!(pipe.writes().len(), 1, "an idle hub writes at once");
    hub.forward(s1.clone(), call(2));
    hub.forward(s1.clone(), call(3));
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while pipe.writes().len() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the batch was written");
    let writes = pipe.writes();
    assert_eq!(writes.len(), 2, "two writes in all");
    let ids: Vec<Value> = String::from_utf8(writes[1].clone())
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON")["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(2), json!(3)], "both lines, in order");
}

#[tokio::test]
async fn a_closed_stdin_ends_the_hub_and_its_sessions() {
    let pipe = Arc::new(Pipe::default());
    pipe.broken.store(true, Ordering::SeqCst);
    let (hub, _stdout) = hub_on(pipe.stdin());
    let (s1, _g1) = session("s1");
    hub.join(s1.clone());
    hub.forward(
        s1.clone(),
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}),
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), s1.closed.cancelled())
        .await
        .expect("the session ended");
    assert!(!hub.is_alive());
}

#[tokio::test]
async fn a_server_that_does_not_read_stdin_holds_at_most_the_backlog_limit() {
    let pipe = Pipe::shut();
    let (hub, _stdout) = hub_on(pipe.stdin());
    let (s1, _g1) = session("s1");
    hub.join(s1.clone());
    let text = "x".repeat(1 << 20);
    let mut sent = 0;
    while hub.backlog_full().is_none() {
        assert!(sent < 64, "the backlog never counted as full");
        let call = json!({"jsonrpc":"2.0","id":sent,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":text}}});
        hub.forward(s1.clone(), call);
        sent += 1;
    }
    // Eight lines of a little over 1 MiB reach the 8 MiB limit; not one fewer.
    assert_eq!(sent, STDIN_BACKLOG_LIMIT >> 20);
    let waiting = hub.backlog_full().expect("full");
    assert!((STDIN_BACKLOG_LIMIT..STDIN_BACKLOG_LIMIT + 4096).contains(&waiting));

    // Once the server reads again, everything goes out and new messages are taken.
    pipe.open();
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while pipe.taken() < waiting || hub.backlog_full().is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the backlog drained");
    assert_eq!(pipe.taken(), waiting);
    assert_eq!(hub.shared.lock().stdin.backlog.load(Ordering::SeqCst), 0);
}

#[test]
fn later_sessions_get_the_cached_result_or_a_clear_error() {
    let result = json!({"protocolVersion": "2025-06-18", "capabilities": {}});
    let same = answer_initialize(json!(1), "2025-06-18", &result, "2025-06-18");
    assert_eq!(same["result"], result);
    let newer = answer_initialize(json!(2), "2025-11-25", &result, "2025-06-18");
    assert_eq!(newer["result"]["protocolVersion"], "2025-06-18");
    let older = answer_initialize(json!(3), "2024-11-05", &result, "2025-06-18");
    assert_eq!(older["result"]["protocolVersion"], "2025-06-18");
    let bogus = answer_initialize(json!(4), "1.0.0", &result, "2025-06-18");
    assert_eq!(bogus["error"]["code"], code::INVALID_PARAMS);
    assert_eq!(bogus["error"]["data"]["supported"], json!(["2025-06-18"]));
    assert_eq!(bogus["id"], 4);
}

#[tokio::test]
async fn server_requests_need_the_chosen_sessions_capability() {
    let (hub, mut fake) = hub();
    let (s1, _g1) = session("s1");
    hub.join(s1.clone());
    let mut r = s1.open_request_stream(jsonrpc::key(&json!(1)), false);
    let mut bare = init(json!(1), "2025-06-18");
    bare["params"]["capabilities"] = json!({});
    hub.forward(s1.clone(), bare);
    let sent = fake.read().await;
    // The process hears every capability the bridge can route.
    assert!(sent["params"]["capabilities"]["sampling"].is_object());
    assert!(sent["params"]["capabilities"]["roots"].is_object());
    fake.write(json!({"jsonrpc":"2.0","id":sent["id"],"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"x","version":"1"}}}));
    next(&mut r).await;
    hub.forward(
        s1.clone(),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}),
    );
    fake.read().await;
    // s1 declared no sampling: the hub refuses on its behalf.
    fake.write(json!({"jsonrpc":"2.0","id":"q","method":"sampling/createMessage","params":{}}));
    let refusal = fake.read().await;
    assert_eq!(refusal["id"], "q");
    assert_eq!(refusal["error"]["code"], code::METHOD_NOT_FOUND);
}

#[tokio::test]
async fn resource_updates_reach_subscribers_and_list_changes_everyone() {
    let (hub, mut fake) = hub();
    let (s1, mut g1) = session("s1");
    let (s2, mut g2) = session("s2");
    hub.join(s1.clone());
    hub.join(s2.clone());
    hub.forward(
        s1.clone(),
        json!({"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"test://x"}}),
    );
    let sub = fake.read().await;
    fake.write(json!({"jsonrpc":"2.0","id":sub["id"],"result":{}}));
    fake.write(json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"test://x"}}));
    fake.write(json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}));
    assert_eq!(
        next(&mut g1).await["method"],
        "notifications/resources/updated"
    );
    assert_eq!(
        next(&mut g1).await["method"],
        "notifications/tools/list_changed"
    );
    assert_eq!(
        next(&mut g2).await["method"],
        "notifications/tools/list_changed"
    );
    assert!(g2.try_recv().is_err(), "s2 did not subscribe");
}
