//! The JSON-RPC 2.0 envelope as the bridge needs it: classify a message, read and rewrite ids,
//! progress tokens and cancellation targets, build error objects. Payloads stay untouched
//! `serde_json::Value`s: the bridge never needs to understand them. A successful response,
//! the bulk of what a server writes, is not even built as a `Value`: `RawResult` finds its id
//! in the text and the new id is spliced in, so a large result is scanned once and copied once.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// JSON-RPC error codes the bridge produces.
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON, not a valid JSON-RPC message.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Method not found.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid params (also: unsupported protocol version).
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error (the upstream failed).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined: the upstream server is unavailable.
    pub const SERVER_UNAVAILABLE: i64 = -32000;
    /// Implementation-defined: the session does not exist.
    pub const SESSION_NOT_FOUND: i64 = -32001;
}

/// What a JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result` or `error`, no `method`.
    Response,
}

/// Checks the shape of a single message: `jsonrpc: "2.0"`, and exactly one of the three
/// kinds. Ids must be strings or integers (never null).
pub fn classify(msg: &Value) -> Result<Kind, &'static str> {
    let obj = msg
        .as_object()
        .ok_or("a JSON-RPC message must be an object")?;
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("`jsonrpc` must be \"2.0\"");
    }
    let id_ok = |id: &Value| id.is_string() || id.is_i64() || id.is_u64();
    match (obj.get("method"), obj.get("id")) {
        (Some(m), id) => {
            if !m.is_string() {
                return Err("`method` must be a string");
            }
            if let Some(p) = obj.get("params")
                && !(p.is_object() || p.is_array())
            {
                return Err("`params` must be an object or an array");
            }
            match id {
                None => Ok(Kind::Notification),
                Some(id) if id_ok(id) => Ok(Kind::Request),
                Some(_) => Err("`id` must be a string or an integer"),
            }
        }
        (None, Some(id)) => {
            if !id_ok(id) {
                return Err("`id` must be a string or an integer");
            }
            match (obj.get("result"), obj.get("error")) {
                (Some(_), None) => Ok(Kind::Response),
                (None, Some(e)) if e.get("code").is_some_and(Value::is_i64) => Ok(Kind::Response),
                _ => Err("a response needs exactly one of `result` and a well-formed `error`"),
            }
        }
        (None, None) => Err("neither a request, a notification nor a response"),
    }
}

/// The `method` of a request or notification.
pub fn method(msg: &Value) -> Option<&str> {
    msg.get("method").and_then(Value::as_str)
}

/// The `id` of a request or response.
pub fn id(msg: &Value) -> Option<&Value> {
    msg.get("id")
}

/// Replaces the `id` of a message.
pub fn set_id(msg: &mut Value, id: Value) {
    if let Some(obj) = msg.as_object_mut() {
        obj.insert("id".to_owned(), id);
    }
}

/// `params._meta.progressToken` of a request.
pub fn progress_token(msg: &Value) -> Option<&Value> {
    msg.get("params")?.get("_meta")?.get("progressToken")
}

/// Replaces `params._meta.progressToken` of a request (it must have one).
pub fn set_progress_token(msg: &mut Value, token: Value) {
    if let Some(meta) = msg
        .get_mut("params")
        .and_then(|p| p.get_mut("_meta"))
        .and_then(Value::as_object_mut)
    {
        meta.insert("progressToken".to_owned(), token);
    }
}

/// `params.progressToken` of a `notifications/progress`.
pub fn notified_progress_token(msg: &Value) -> Option<&Value> {
    msg.get("params")?.get("progressToken")
}

/// Replaces `params.progressToken` of a `notifications/progress`.
pub fn set_notified_progress_token(msg: &mut Value, token: Value) {
    if let Some(p) = msg.get_mut("params").and_then(Value::as_object_mut) {
        p.insert("progressToken".to_owned(), token);
    }
}

/// `params.requestId` of a `notifications/cancelled`.
pub fn cancelled_request_id(msg: &Value) -> Option<&Value> {
    msg.get("params")?.get("requestId")
}

/// Replaces `params.requestId` of a `notifications/cancelled`.
pub fn set_cancelled_request_id(msg: &mut Value, id: Value) {
    if let Some(p) = msg.get_mut("params").and_then(Value::as_object_mut) {
        p.insert("requestId".to_owned(), id);
    }
}

/// A string key for an id or token (`"5"` and `5` differ, as JSON-RPC says).
pub fn key(v: &Value) -> String {
    v.to_string()
}

/// An error response to `id`.
pub fn error_response(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".to_owned(), json!(code));
    error.insert("message".to_owned(), json!(message));
    if let Some(d) = data {
        error.insert("data".to_owned(), d);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// An error without an id (for HTTP error bodies, where the spec allows one).
pub fn error_body(code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}})
}

/// A successful response.
pub fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// The top level of a message, borrowed from its text. Parsing it checks that the whole text is
/// JSON, without building the payload; a key given twice fails it.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

/// A successful response with an unsigned integer id (the ids the bridge gives requests),
/// read from its text without parsing its result.
#[derive(Debug, PartialEq, Eq)]
pub struct RawResult<'a> {
    text: &'a str,
    /// The response's id.
    pub id: u64,
    /// Where the id's JSON stands in `text`.
    id_at: Range<usize>,
}

impl<'a> RawResult<'a> {
    /// The response in `line`, when it is a well-formed JSON-RPC success response with an
    /// unsigned integer id; `None` for anything else (which the caller handles as a `Value`).
    pub fn parse(line: &'a [u8]) -> Option<RawResult<'a>> {
        let text = std::str::from_utf8(line).ok()?;
        let envelope: Envelope<'a> = serde_json::from_str(text).ok()?;
        if envelope.jsonrpc.map(RawValue::get) != Some("\"2.0\"")
            || envelope.method.is_some()
            || envelope.error.is_some()
        {
            return None;
        }
        // `"result": null` reads as no result here; the `Value` path takes it.
        envelope.result?;
        let raw = envelope.id?.get();
        let id = raw.parse::<u64>().ok()?;
        // The raw id borrows from `text`: its place is where its bytes are.
        let start = (raw.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
        let id_at = start..start + raw.len();
        (text.get(id_at.clone()) == Some(raw)).then_some(RawResult { text, id, id_at })
    }

    /// The response's text with `id` in place of its own.
    pub fn with_id(&self, id: &Value) -> String {
        let id = id.to_string();
        let mut out = String::with_capacity(self.text.len() + id.len());
        out.push_str(&self.text[..self.id_at.start]);
        out.push_str(&id);
        out.push_str(&self.text[self.id_at.end..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_responses_are_read_and_rewritten_from_their_text() {
        let line = br#"{"result":{"content":[{"type":"text","text":"id: 7"}]},"jsonrpc":"2.0", "id" : 7 ,"x":[1]}"#;
        let raw = RawResult::parse(line).expect("a success response");
        assert_eq!(raw.id, 7);
        let rewritten: Value = serde_json::from_str(&raw.with_id(&json!("abc"))).expect("JSON");
        let mut want: Value = serde_json::from_slice(line).expect("JSON");
        set_id(&mut want, json!("abc"));
        assert_eq!(rewritten, want, "only the id changed");
        assert_eq!(
            RawResult::parse(br#"{"jsonrpc":"2.0","id":0,"result":[]}"#)
                .expect("parsed")
                .with_id(&json!(-3)),
            r#"{"jsonrpc":"2.0","id":-3,"result":[]}"#
        );
    }

    #[test]
    fn anything_but_a_plain_success_response_is_left_to_the_value_path() {
        for other in [
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":null}"#,
            r#"{"jsonrpc":"2.0","id":"1","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":-1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1.0,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            r#"{"jsonrpc":"1.0","id":1,"result":{}}"#,
            r#"{"id":1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}} x"#,
            r#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#,
        ] {
            assert_eq!(RawResult::parse(other.as_bytes()), None, "{other}");
        }
        assert_eq!(
            RawResult::parse(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"\xff\"}"),
            None
        );
    }

    #[test]
    fn classifies_the_three_kinds() {
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":1,"method":"ping"})),
            Ok(Kind::Request)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
            Ok(Kind::Notification)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":"a","result":{}})),
            Ok(Kind::Response)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":"a","error":{"code":-1,"message":"x"}})),
            Ok(Kind::Response)
        );
    }

    #[test]
    fn rejects_wrong_shapes() {
        for bad in [
            json!([]),
            json!({"id":1,"method":"ping"}),
            json!({"jsonrpc":"1.0","id":1,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":null,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":1.5,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":1,"method":7}),
            json!({"jsonrpc":"2.0","id":1,"method":"x","params":"s"}),
            json!({"jsonrpc":"2.0","id":1}),
            json!({"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}),
            json!({"jsonrpc":"2.0"}),
        ] {
            assert!(classify(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rewrites_ids_tokens_and_cancellations() {
        let mut req = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"t"}}});
        set_id(&mut req, json!(99));
        set_progress_token(&mut req, json!("u"));
        assert_eq!(id(&req), Some(&json!(99)));
        assert_eq!(progress_token(&req), Some(&json!("u")));

        let mut note = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"u","progress":1}});
        set_notified_progress_token(&mut note, json!("t"));
        assert_eq!(notified_progress_token(&note), Some(&json!("t")));

        let mut cancel =
            json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}});
        set_cancelled_request_id(&mut cancel, json!(99));
        assert_eq!(cancelled_request_id(&cancel), Some(&json!(99)));
        assert_ne!(key(&json!(5)), key(&json!("5")));
    }
}
