//! OpenAI Chat Completions client ⇄ Anthropic Messages upstream (GLM's `/api/anthropic`).
//!
//! Mapping rules: docs/translation.md.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::ResponseTranslator;
use crate::error::ApiError;
use crate::sse::LineReader;

/// Anthropic requires `max_tokens`; OpenAI clients often leave it out.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

#[derive(Clone, Debug, Default)]
pub struct Context {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `choices: []` and the usage.
    pub include_usage: bool,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param.to_string()))
}

/// Text of an OpenAI `content` (string or parts).
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((media, data)) = rest.split_once(";base64,") {
            return json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}});
        }
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// User content as Anthropic blocks.
fn user_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|t| json!({"type": "text", "text": t})),
                Some("image_url") => p
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .map(image_block),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Appends `blocks` as a turn of `role`, merged into the previous turn of the same role.
fn push_turn(turns: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(content) = last["content"].as_array_mut() {
                content.extend(blocks);
                return;
            }
        }
    }
    turns.push(json!({"role": role, "content": blocks}));
}

/// Translates an OpenAI Chat Completions request body into an Anthropic Messages one.
pub fn request(body: &[u8]) -> Result<(Bytes, Context), ApiError> {
    let req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}"), None))?;
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(bad("`n` above 1 is not supported on this upstream", "n"));
    }
    let ctx = Context {
        model: req
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        stream: req.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: req
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let mut out = Map::new();
    out.insert("model".into(), json!(ctx.model));
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max_tokens));
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array", "messages"))?;
    for (i, m) in messages.iter().enumerate() {
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => system.push(text_of(content)),
            Some("user") => push_turn(&mut turns, "user", user_blocks(content)),
            Some("assistant") => {
                let mut blocks = Vec::new();
                let text = text_of(content);
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "input": super::tool_call_input(call),
                    }));
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            Some("tool") => push_turn(
                &mut turns,
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": text_of(content),
                })],
            ),
            _ => return Err(bad(format!("messages[{i}]: unknown role"), "messages")),
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n")));
    }
    out.insert("messages".into(), Value::Array(turns));
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.get("top_p") {
        out.insert("top_p".into(), p.clone());
    }
    let stops: Vec<Value> = match req.get("stop") {
        Some(Value::String(s)) => vec![json!(s)],
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let stops: Vec<Value> = stops
        .into_iter()
        .filter(|s| s.as_str().is_some_and(|s| !s.trim().is_empty()))
        .collect();
    if !stops.is_empty() {
        out.insert("stop_sequences".into(), Value::Array(stops));
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut tool = json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "input_schema": f.get("parameters").cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = f.get("description") {
                    tool["description"] = d.clone();
                }
                tool
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    let parallel_off = req.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let choice = match req.get("tool_choice") {
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(v @ Value::Object(_)) => v
            .pointer("/function/name")
            .map(|n| json!({"type": "tool", "name": n})),
        _ => parallel_off.then(|| json!({"type": "auto"})),
    };
    if let Some(mut c) = choice {
        if parallel_off && c["type"] != "none" {
            c["disable_parallel_tool_use"] = json!(true);
        }
        out.insert("tool_choice".into(), c);
    }
    // Reasoning: GLM's own switch, or OpenAI's effort as a budget Anthropic accepts
    // (at least 1024 and below max_tokens).
    let effort = req.get("reasoning_effort").and_then(Value::as_str);
    let glm = req
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str);
    let budget = match effort {
        Some("low") => Some(1024),
        Some("medium") => Some(4096),
        Some("high") => Some(16384),
        _ => None,
    };
    let thinking = match (glm, effort, budget) {
        (Some("disabled"), _, _) | (_, Some("none" | "minimal"), _) => {
            Some(json!({"type": "disabled"}))
        }
        (_, _, Some(b)) => {
            let b = b.min(max_tokens.saturating_sub(1));
            Some(if b >= 1024 {
                json!({"type": "enabled", "budget_tokens": b})
            } else {
                json!({"type": "disabled"})
            })
        }
        (Some("enabled"), _, None) => {
            let b = 4096.min(max_tokens.saturating_sub(1));
            Some(if b >= 1024 {
                json!({"type": "enabled", "budget_tokens": b})
            } else {
                json!({"type": "disabled"})
            })
        }
        _ => None,
    };
    if let Some(t) = thinking {
        out.insert("thinking".into(), t);
    }
    if ctx.stream {
        out.insert("stream".into(), json!(true));
    }
    let bytes = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| ApiError::Internal(format!("serialise translated request: {e}")))?;
    Ok((Bytes::from(bytes), ctx))
}

fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("tool_use") => "tool_calls",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

fn usage(u: Option<&Value>) -> Value {
    let n = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn completion_id(upstream: Option<&str>) -> String {
    match upstream {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{:024x}", rand::random::<u128>()),
    }
}

/// Translates a whole Anthropic message into an OpenAI chat completion.
pub fn response(body: &[u8], ctx: &Context) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let blocks = v.get("content")?.as_array()?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""));
            }
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() { Value::Null } else { json!(text) },
    });
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Some(json!({
        "id": completion_id(v.get("id").and_then(Value::as_str)),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": ctx.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(v.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage(v.get("usage")),
    }))
}

/// An Anthropic-style error body as an OpenAI error body.
pub fn error(status: u16, body: &[u8]) -> Value {
    let (code, message) = crate::upstream::classify::business_code(body);
    let message =
        message.unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    let kind = match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null,
                     "code": code.map(|c| c.to_string())}})
}

/// Anthropic events → OpenAI chunks, as they arrive.
pub struct StreamTranslator {
    ctx: Context,
    lines: crate::sse::Lines,
    id: String,
    created: i64,
    /// Anthropic block index → OpenAI tool-call index.
    tools: Vec<(u64, usize)>,
    finish: Option<&'static str>,
    usage: Map<String, Value>,
    done: bool,
    out: BytesMut,
}

impl StreamTranslator {
    pub fn new(ctx: Context) -> Self {
        StreamTranslator {
            ctx,
            lines: Default::default(),
            id: completion_id(None),
            created: chrono::Utc::now().timestamp(),
            tools: Vec::new(),
            finish: None,
            usage: Map::new(),
            done: false,
            out: BytesMut::new(),
        }
    }

    /// One `chat.completion.chunk` event, serialised from borrowed parts (building a
    /// `Value` for it cost more than all the rest of the event's translation).
    fn chunk(&mut self, delta: impl Serialize, finish: Option<&str>) {
        let chunk = ChunkOut {
            choices: [ChoiceOut {
                delta,
                finish_reason: finish,
                index: 0,
            }],
            created: self.created,
            id: &self.id,
            model: &self.ctx.model,
            object: "chat.completion.chunk",
        };
        data(&mut self.out, &chunk);
    }

    fn merge_usage(&mut self, u: Option<&Value>) {
        if let Some(Value::Object(u)) = u {
            for (k, v) in u {
                if !v.is_null() {
                    self.usage.insert(k.clone(), v.clone());
                }
            }
        }
    }

    fn on_event(&mut self, v: &Value) {
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(id) = v.pointer("/message/id").and_then(Value::as_str) {
                    self.id = completion_id(Some(id));
                }
                self.merge_usage(v.pointer("/message/usage"));
                self.chunk(json!({"role": "assistant", "content": ""}), None);
            }
            Some("content_block_start") => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let n = self.tools.len();
                    let at = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                    self.tools.push((at, n));
                    self.chunk(
                        json!({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function",
                                "function": {"name": block.get("name"), "arguments": ""}}]}),
                        None,
                    );
                }
            }
            Some("content_block_delta") => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        self.chunk(One("content", d.get("text")), None);
                    }
                    Some("thinking_delta") => {
                        self.chunk(One("reasoning_content", d.get("thinking")), None);
                    }
                    Some("input_json_delta") => {
                        let at = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        if let Some(&(_, n)) = self.tools.iter().find(|(i, _)| *i == at) {
                            self.chunk(
                                json!({"tool_calls": [{"index": n,
                                        "function": {"arguments": d.get("partial_json")}}]}),
                                None,
                            );
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                self.finish = Some(finish_reason(
                    v.pointer("/delta/stop_reason").and_then(Value::as_str),
                ));
                self.merge_usage(v.get("usage"));
            }
            Some("message_stop") => self.end(),
            Some("error") => {
                let e = v.get("error").unwrap_or(&Value::Null);
                data(
                    &mut self.out,
                    &json!({"error": {
                        "message": e.get("message").and_then(Value::as_str).unwrap_or("upstream error"),
                        "type": e.get("type").and_then(Value::as_str).unwrap_or("server_error"),
                    }}),
                );
                self.done = true;
            }
            _ => {}
        }
    }

    fn end(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let finish = self.finish.unwrap_or("stop");
        self.chunk(json!({}), Some(finish));
        if self.ctx.include_usage {
            let v = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.ctx.model, "choices": [],
                "usage": usage(Some(&Value::Object(self.usage.clone()))),
            });
            data(&mut self.out, &v);
        }
        self.out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// Appends `v` as one `data:` event.
fn data(out: &mut BytesMut, v: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    super::put_json(out, v);
    out.extend_from_slice(b"\n\n");
}

/// A `chat.completion.chunk`. Fields in alphabetical order: the order the `Value`s of the
/// other events are written in, so every event reads alike.
#[derive(Serialize)]
struct ChunkOut<'a, D> {
    choices: [ChoiceOut<'a, D>; 1],
    created: i64,
    id: &'a str,
    model: &'a str,
    object: &'static str,
}

#[derive(Serialize)]
struct ChoiceOut<'a, D> {
    delta: D,
    finish_reason: Option<&'a str>,
    index: u32,
}

/// A delta of one field, as `{"content": "Hel"}` (`null` when the upstream left it out).
struct One<'a>(&'static str, Option<&'a Value>);

impl Serialize for One<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map([(self.0, self.1)])
    }
}

impl LineReader for StreamTranslator {
    fn lines(&mut self) -> &mut crate::sse::Lines {
        &mut self.lines
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = crate::sse::data(line).filter(|_| !self.done) else {
            return;
        };
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            self.on_event(&v);
        }
    }
}

impl ResponseTranslator for StreamTranslator {
    fn feed(&mut self, chunk: &[u8]) -> Bytes {
        self.read_lines(chunk);
        self.out.split().freeze()
    }

    fn finish(&mut self) -> Bytes {
        self.end();
        self.out.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_maps_system_tools_results_and_effort() {
        let body = json!({
            "model": "glm-4.7", "max_tokens": 8000, "stream": true,
            "stream_options": {"include_usage": true},
            "reasoning_effort": "medium", "stop": "END", "user": "u-123456", "temperature": 1.6,
            "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                       "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}],
            "tool_choice": "required", "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":\"x\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "tool", "tool_call_id": "c2", "content": "two"},
                {"role": "user", "content": "thanks"}
            ]
        });
        let (out, ctx) = request(body.to_string().as_bytes()).expect("ok");
        let out: Value = serde_json::from_slice(&out).expect("json");
        assert!(ctx.stream && ctx.include_usage);
        assert_eq!(out["system"], "Be brief.");
        assert_eq!(
            out["messages"][0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(out["messages"][1]["content"][0]["input"], json!({"a": "x"}));
        // Both results and the next user text form one user turn.
        assert_eq!(
            out["messages"][2]["content"].as_array().map(Vec::len),
            Some(3)
        );
        assert_eq!(out["messages"][2]["content"][1]["tool_use_id"], "c2");
        assert_eq!(out["messages"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            out["tools"][0]["input_schema"]["properties"]["a"]["type"],
            "string"
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["metadata"]["user_id"], "u-123456");
        assert_eq!(out["temperature"], 1.0);
        assert_eq!(
            out["thinking"],
            json!({"type": "enabled", "budget_tokens": 4096})
        );
        assert_eq!(out["max_tokens"], 8000);
    }

    #[test]
    fn max_tokens_defaults_and_small_budgets_disable_thinking() {
        let (out, _) =
            request(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).expect("ok");
        let out: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
        assert!(out.get("thinking").is_none());
        let (out, _) = request(
            br#"{"model":"m","max_tokens":500,"reasoning_effort":"high","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .expect("ok");
        let out: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(out["thinking"]["type"], "disabled");
        assert!(request(br#"{"model":"m","n":2,"messages":[]}"#).is_err());
    }

    #[test]
    fn response_and_stream_map_back() {
        let ctx = Context {
            model: "glm-4.7".into(),
            stream: true,
            include_usage: true,
        };
        let msg = json!({"id": "msg_1", "type": "message", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": ""},
                {"type": "text", "text": "Hi"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 60, "output_tokens": 7, "cache_read_input_tokens": 40}});
        let r = response(msg.to_string().as_bytes(), &ctx).expect("completion");
        assert_eq!(r["choices"][0]["message"]["content"], "Hi");
        assert_eq!(r["choices"][0]["message"]["reasoning_content"], "hmm");
        assert_eq!(
            r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(r["usage"]["prompt_tokens"], 100);
        assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 40);

        let events = [
            json!({"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 10, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ":1}"}}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "t2", "name": "g", "input": {}}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ];
        let text: String = events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
            .collect();
        let mut t = StreamTranslator::new(ctx);
        let mut out = Vec::new();
        for piece in text.as_bytes().chunks(5) {
            out.extend_from_slice(&t.feed(piece));
        }
        out.extend_from_slice(&t.finish());
        let out = String::from_utf8(out).expect("utf8");
        assert!(out.ends_with("data: [DONE]\n\n"));
        let chunks: Vec<Value> = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "t1"
        );
        assert_eq!(
            chunks[4]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            ":1}"
        );
        assert_eq!(
            chunks[5]["choices"][0]["delta"]["tool_calls"][0]["index"],
            1
        );
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[7]["choices"], json!([]));
        assert_eq!(chunks[7]["usage"]["completion_tokens"], 9);
        assert_eq!(chunks[7]["usage"]["prompt_tokens"], 10);
    }
}
