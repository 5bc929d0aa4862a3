//! Anthropic Messages client ⇄ OpenAI Chat Completions upstream (GLM's paas/v4 API).
//!
//! Mapping rules: `../shared`'s protocol digest §4, summarised in docs/translation.md.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::ResponseTranslator;
use crate::error::ApiError;
use crate::sse::LineReader;

/// OpenAI and GLM accept tool names up to this length.
const MAX_TOOL_NAME: usize = 64;

/// What the answer's translation needs to know about the request.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The model the client asked for (echoed back).
    pub model: String,
    pub stream: bool,
    /// Whether the client asked for thinking blocks.
    pub thinking: bool,
    /// Shortened tool name → the client's name.
    pub tool_names: HashMap<String, String>,
}

impl Context {
    fn tool_name(&self, upstream: &str) -> String {
        self.tool_names
            .get(upstream)
            .cloned()
            .unwrap_or_else(|| upstream.to_string())
    }
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param.to_string()))
}

/// A tool name the upstream accepts: long names are cut to 55 characters plus a hash.
fn short_name(name: &str, names: &mut HashMap<String, String>) -> String {
    if name.len() <= MAX_TOOL_NAME {
        return name.to_string();
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let mut cut = 55;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let short = format!("{}_{}", &name[..cut], &digest[..8]);
    names.insert(short.clone(), name.to_string());
    short
}

/// The text of a `system` value or a `tool_result` content: a string, or text blocks joined.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn image_part(block: &Value) -> Option<Value> {
    let source = block.get("source")?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            source.get("media_type")?.as_str()?,
            source.get("data")?.as_str()?
        ),
        Some("url") => source.get("url")?.as_str()?.to_string(),
        _ => return None,
    };
    Some(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Translates an Anthropic Messages request body into an OpenAI Chat Completions one.
pub fn request(body: &[u8]) -> Result<(Bytes, Context), ApiError> {
    let req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}"), None))?;
    let mut ctx = Context {
        model: req
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        stream: req.get("stream").and_then(Value::as_bool).unwrap_or(false),
        ..Context::default()
    };
    let mut out = Map::new();
    out.insert("model".into(), json!(ctx.model));
    let mut messages = Vec::new();
    if let Some(system) = req.get("system") {
        let text = text_of(system);
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let turns = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array", "messages"))?;
    for (i, turn) in turns.iter().enumerate() {
        let role = turn.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = turn.get("content").unwrap_or(&Value::Null);
        match (role, content) {
            ("user" | "assistant", Value::String(s)) => {
                messages.push(json!({"role": role, "content": s}));
            }
            ("user", Value::Array(blocks)) => user_turn(blocks, &mut messages),
            ("assistant", Value::Array(blocks)) => {
                messages.push(assistant_turn(blocks, &mut ctx.tool_names));
            }
            _ => {
                return Err(bad(
                    format!(
                    "messages[{i}]: role must be user or assistant with string or block content"
                ),
                    "messages",
                ))
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    for key in ["max_tokens", "temperature", "top_p"] {
        if let Some(v) = req.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stops) = req.get("stop_sequences").and_then(Value::as_array) {
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        if (6..=128).contains(&user.len()) {
            out.insert("user".into(), json!(user));
        }
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            // Server tools (web search and the like) have no schema: nothing to map to.
            .filter(|t| t.get("input_schema").is_some())
            .map(|t| {
                let name = t.get("name").and_then(Value::as_str).unwrap_or("tool");
                let mut f = json!({
                    "name": short_name(name, &mut ctx.tool_names),
                    "parameters": t["input_schema"],
                });
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = req.get("tool_choice") {
        let mapped = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => Some(json!("auto")),
            Some("any") => Some(json!("required")),
            Some("none") => Some(json!("none")),
            Some("tool") => choice.get("name").and_then(Value::as_str).map(|n| {
                json!({"type": "function", "function": {"name": short_name(n, &mut ctx.tool_names)}})
            }),
            _ => None,
        };
        if let Some(m) = mapped {
            out.insert("tool_choice".into(), m);
        }
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    // Anthropic semantics: no `thinking` means no thinking; GLM thinks unless told not to.
    let thinking = req
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("disabled");
    ctx.thinking = matches!(thinking, "enabled" | "adaptive");
    out.insert(
        "thinking".into(),
        json!({"type": if ctx.thinking { "enabled" } else { "disabled" }}),
    );
    if ctx.stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let bytes = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| ApiError::Internal(format!("serialise translated request: {e}")))?;
    Ok((Bytes::from(bytes), ctx))
}

/// A user turn: tool results become `tool` messages first, the rest one user message.
fn user_turn(blocks: &[Value], messages: &mut Vec<Value>) {
    let mut parts = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("tool_result") => {
                let mut text = text_of(b.get("content").unwrap_or(&Value::Null));
                if b.get("is_error") == Some(&Value::Bool(true)) {
                    text = format!("Error: {text}");
                }
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                    "content": text,
                }));
            }
            Some("text") => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    parts.push(json!({"type": "text", "text": t}));
                }
            }
            Some("image") => parts.extend(image_part(b)),
            _ => {}
        }
    }
    if parts.is_empty() {
        return;
    }
    let all_text = parts.iter().all(|p| p["type"] == "text");
    let content = if all_text {
        json!(parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"))
    } else {
        Value::Array(parts)
    };
    messages.push(json!({"role": "user", "content": content}));
}

fn assistant_turn(blocks: &[Value], names: &mut HashMap<String, String>) -> Value {
    let mut text = Vec::new();
    let mut reasoning = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.extend(b.get("text").and_then(Value::as_str)),
            Some("thinking") => reasoning.extend(b.get("thinking").and_then(Value::as_str)),
            Some("tool_use") => {
                let name = b.get("name").and_then(Value::as_str).unwrap_or("tool");
                calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": short_name(name, names),
                        "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                    },
                }));
            }
            _ => {}
        }
    }
    let mut m = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text.concat()) }});
    if !reasoning.is_empty() {
        m["reasoning_content"] = json!(reasoning.concat());
    }
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    m
}

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") => "tool_use",
        Some("sensitive" | "content_filter") => "refusal",
        Some("model_context_window_exceeded") => "model_context_window_exceeded",
        _ => "end_turn",
    }
}

/// Anthropic usage from OpenAI usage (whose prompt count includes cached tokens).
fn usage(u: Option<&Value>) -> Value {
    let n = |p: &str| {
        u.and_then(|u| u.pointer(p))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = n("/prompt_tokens_details/cached_tokens");
    json!({
        "input_tokens": n("/prompt_tokens").saturating_sub(cached),
        "output_tokens": n("/completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

fn message_id(upstream: Option<&str>) -> String {
    match upstream {
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => format!("msg_{:024x}", rand::random::<u128>()),
    }
}

/// Translates a whole OpenAI Chat Completions answer into an Anthropic message.
pub fn response(body: &[u8], ctx: &Context) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choice = v.pointer("/choices/0")?;
    let msg = choice.get("message")?;
    let mut content = Vec::new();
    if ctx.thinking {
        if let Some(r) = msg.get("reasoning_content").and_then(Value::as_str) {
            if !r.is_empty() {
                content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
            }
        }
    }
    if let Some(t) = msg.get("content").and_then(Value::as_str) {
        if !t.is_empty() {
            content.push(json!({"type": "text", "text": t}));
        }
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or_else(|| json!(format!("toolu_{:016x}", rand::random::<u64>()))),
            "name": ctx.tool_name(call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default()),
            "input": super::tool_call_input(call),
        }));
    }
    Some(json!({
        "id": message_id(v.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage(v.get("usage")),
    }))
}

/// An OpenAI-style error body (any of Z.AI's shapes) as an Anthropic error body.
pub fn error(status: u16, body: &[u8], request_id: &str) -> Value {
    let (code, message) = crate::upstream::classify::business_code(body);
    let message =
        message.unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    let kind = match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let mut error = json!({"type": kind, "message": message});
    if let Some(c) = code {
        error["code"] = json!(c.to_string());
    }
    json!({"type": "error", "error": error, "request_id": request_id})
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    Tool,
}

/// OpenAI chunks → Anthropic events, as they arrive.
pub struct StreamTranslator {
    ctx: Context,
    lines: crate::sse::Lines,
    started: bool,
    /// The open block and its index.
    open: Option<(Block, usize)>,
    next_index: usize,
    /// OpenAI tool-call index → Anthropic block index.
    tools: HashMap<u64, usize>,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
    out: BytesMut,
}

impl StreamTranslator {
    pub fn new(ctx: Context) -> Self {
        StreamTranslator {
            ctx,
            lines: Default::default(),
            started: false,
            open: None,
            next_index: 0,
            tools: HashMap::new(),
            finish: None,
            usage: None,
            done: false,
            out: BytesMut::new(),
        }
    }

    fn emit(&mut self, event: &str, data: impl serde::Serialize) {
        self.out.extend_from_slice(b"event: ");
        self.out.extend_from_slice(event.as_bytes());
        self.out.extend_from_slice(b"\ndata: ");
        super::put_json(&mut self.out, &data);
        self.out.extend_from_slice(b"\n\n");
    }

    /// A `content_block_delta` event carrying text.
    fn delta(&mut self, index: usize, field: &'static str, text: &str, kind: &'static str) {
        self.emit(
            "content_block_delta",
            BlockDelta {
                delta: super::TextDelta { field, text, kind },
                index,
                kind: "content_block_delta",
            },
        );
    }

    fn start(&mut self, id: Option<&str>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": message_id(id), "type": "message", "role": "assistant", "model": self.ctx.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        });
        self.emit(
            "message_start",
            json!({"type": "message_start", "message": message}),
        );
        self.emit("ping", json!({"type": "ping"}));
    }

    fn close(&mut self) {
        if let Some((_, index)) = self.open.take() {
            self.emit(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// Makes sure a block of `kind` is open (a tool block is opened by its caller).
    fn ensure(&mut self, kind: Block) -> usize {
        if let Some((k, i)) = self.open {
            if k == kind {
                return i;
            }
        }
        self.close();
        let index = self.next_index;
        self.next_index += 1;
        let block = match kind {
            Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            _ => json!({"type": "text", "text": ""}),
        };
        self.emit(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        self.open = Some((kind, index));
        index
    }

    fn on_chunk(&mut self, v: &Value) {
        if let Some(err) = v.get("error") {
            self.start(None);
            self.close();
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error");
            self.emit(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            );
            self.done = true;
            return;
        }
        self.start(v.get("id").and_then(Value::as_str));
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(r) = delta.get("reasoning_content").and_then(Value::as_str) {
            if !r.is_empty() && self.ctx.thinking {
                let index = self.ensure(Block::Thinking);
                self.delta(index, "thinking", r, "thinking_delta");
            }
        }
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            if !t.is_empty() {
                let index = self.ensure(Block::Text);
                self.delta(index, "text", t, "text_delta");
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let k = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let index = match self.tools.get(&k) {
                Some(i) => *i,
                None => {
                    self.close();
                    let index = self.next_index;
                    self.next_index += 1;
                    self.tools.insert(k, index);
                    let name = self.ctx.tool_name(
                        call.pointer("/function/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    );
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("toolu_{:016x}", rand::random::<u64>()));
                    self.emit("content_block_start", json!({"type": "content_block_start", "index": index,
                        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}));
                    self.open = Some((Block::Tool, index));
                    index
                }
            };
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                if !args.is_empty() {
                    if self.open.map(|(_, i)| i) != Some(index) {
                        // A fragment for an earlier call: Anthropic blocks do not interleave.
                        // (Z.AI sends each call whole; OpenAI sends calls one after another.)
                        tracing::warn!("interleaved tool-call fragment dropped");
                        continue;
                    }
                    self.delta(index, "partial_json", args, "input_json_delta");
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
    }

    /// Ends the message: close the block, the held stop reason with the usage, stop.
    fn end(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.start(None);
        self.close();
        let mut u = usage(self.usage.as_ref());
        // message_delta usage is cumulative output; input is given here too.
        if let Some(obj) = u.as_object_mut() {
            obj.remove("cache_creation_input_tokens");
        }
        self.emit(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
                   "usage": u}),
        );
        self.emit("message_stop", json!({"type": "message_stop"}));
    }
}

/// A `content_block_delta` event (fields in the alphabetical order of the other events).
#[derive(serde::Serialize)]
struct BlockDelta<'a> {
    delta: super::TextDelta<'a>,
    index: usize,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl LineReader for StreamTranslator {
    fn lines(&mut self) -> &mut crate::sse::Lines {
        &mut self.lines
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = crate::sse::data(line).filter(|_| !self.done) else {
            return;
        };
        if data == b"[DONE]" {
            self.end();
        } else if let Ok(v) = serde_json::from_slice::<Value>(data) {
            self.on_chunk(&v);
        }
    }
}

impl ResponseTranslator for StreamTranslator {
    fn feed(&mut self, chunk: &[u8]) -> Bytes {
        self.read_lines(chunk);
        self.out.split().freeze()
    }

    fn finish(&mut self) -> Bytes {
        // The upstream ended without [DONE]: end the message properly anyway.
        self.end();
        self.out.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_events(bytes: &[u8]) -> Vec<(String, Value)> {
        let text = String::from_utf8_lossy(bytes).to_string();
        text.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut lines = e.lines();
                let event = lines
                    .next()
                    .and_then(|l| l.strip_prefix("event: "))
                    .expect("event")
                    .to_string();
                let data = lines
                    .next()
                    .and_then(|l| l.strip_prefix("data: "))
                    .expect("data");
                (event, serde_json::from_str(data).expect("json"))
            })
            .collect()
    }

    #[test]
    fn request_maps_system_tools_results_and_thinking() {
        let body = json!({
            "model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
            "metadata": {"user_id": "user-1234"},
            "stop_sequences": ["END"], "top_k": 5, "temperature": 0.2,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                      {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Need the tool.", "signature": "x"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And tomorrow?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}
            ]
        });
        let (out, ctx) = request(body.to_string().as_bytes()).expect("translates");
        let out: Value = serde_json::from_slice(&out).expect("json");
        assert!(ctx.stream && ctx.thinking);
        assert_eq!(
            out["messages"][0],
            json!({"role": "system", "content": "Be brief.\nUse tools."})
        );
        assert_eq!(
            out["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(out["messages"][2]["reasoning_content"], "Need the tool.");
        assert_eq!(
            out["messages"][3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "18C"})
        );
        assert_eq!(
            out["messages"][4]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(
            out["tools"].as_array().map(Vec::len),
            Some(1),
            "server tool dropped"
        );
        assert_eq!(
            out["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["parallel_tool_calls"], false);
        assert_eq!(out["stop"], json!(["END"]));
        assert_eq!(out["user"], "user-1234");
        assert!(out.get("top_k").is_none());
        assert_eq!(out["thinking"]["type"], "enabled");
        assert_eq!(out["stream_options"]["include_usage"], true);
    }

    #[test]
    fn no_thinking_asked_means_thinking_disabled_and_long_tool_names_round_trip() {
        let long = "x".repeat(80);
        let body = json!({"model": "glm-4.7", "max_tokens": 10,
            "tools": [{"name": long, "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "hi"}]});
        let (out, ctx) = request(body.to_string().as_bytes()).expect("ok");
        let out: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(out["thinking"]["type"], "disabled");
        let short = out["tools"][0]["function"]["name"].as_str().expect("name");
        assert_eq!(short.len(), 64);
        let answer = json!({"id": "c1", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": short, "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 40}}});
        let msg = response(answer.to_string().as_bytes(), &ctx).expect("message");
        assert_eq!(
            msg["content"].as_array().map(Vec::len),
            Some(1),
            "empty text block omitted"
        );
        assert_eq!(msg["content"][0]["name"], long.as_str());
        assert_eq!(msg["content"][0]["input"], json!({"a": 1}));
        assert_eq!(msg["stop_reason"], "tool_use");
        assert_eq!(msg["usage"]["input_tokens"], 60);
        assert_eq!(msg["usage"]["cache_read_input_tokens"], 40);
        assert_eq!(msg["id"], "msg_c1");
    }

    #[test]
    fn stream_thinking_then_text_then_parallel_tools_with_fragments() {
        let ctx = Context {
            model: "claude-x".into(),
            stream: true,
            thinking: true,
            ..Context::default()
        };
        let mut t = StreamTranslator::new(ctx);
        let chunks = [
            r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"Hmm"}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":"{\"x\""}}]}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":"{}"}}]}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"finish_reason":"tool_calls","delta":{}}],"usage":{"prompt_tokens":10,"completion_tokens":5}}"#,
        ];
        let mut all = Vec::new();
        // Split the byte stream awkwardly to prove lines are reassembled.
        let text: String = chunks
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .collect::<String>()
            + "data: [DONE]\n\n";
        for piece in text.as_bytes().chunks(7) {
            all.extend_from_slice(&t.feed(piece));
        }
        all.extend_from_slice(&t.finish());
        let events = sse_events(&all);
        let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[2].1["content_block"]["type"], "thinking");
        assert_eq!(events[5].1["content_block"]["type"], "text");
        assert_eq!(events[8].1["content_block"]["id"], "call_a");
        assert_eq!(events[9].1["delta"]["partial_json"], "{\"x\"");
        assert_eq!(events[10].1["delta"]["partial_json"], ":1}");
        assert_eq!(events[12].1["index"], 3);
        assert_eq!(events[15].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[15].1["usage"]["output_tokens"], 5);
        assert_eq!(events[15].1["usage"]["input_tokens"], 10);
    }

    #[test]
    fn a_stream_cut_before_done_still_ends_properly_and_errors_become_error_events() {
        let mut t = StreamTranslator::new(Context::default());
        let mut out = t.feed(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n").to_vec();
        out.extend_from_slice(&t.finish());
        let names: Vec<String> = sse_events(&out).into_iter().map(|(e, _)| e).collect();
        assert_eq!(names.last().map(String::as_str), Some("message_stop"));
        let mut t = StreamTranslator::new(Context::default());
        let out = t.feed(b"data: {\"error\":{\"message\":\"boom\"}}\n\n");
        let events = sse_events(&out);
        assert_eq!(events.last().map(|(e, _)| e.as_str()), Some("error"));
        assert!(t.finish().is_empty(), "nothing after the error");
    }

    #[test]
    fn error_bodies_take_the_anthropic_shape() {
        let e = error(
            429,
            br#"{"error":{"code":"1302","message":"High concurrency"}}"#,
            "r1",
        );
        assert_eq!(e["type"], "error");
        assert_eq!(e["error"]["type"], "rate_limit_error");
        assert_eq!(e["error"]["code"], "1302");
        assert_eq!(e["error"]["message"], "High concurrency");
    }
}
