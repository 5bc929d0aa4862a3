//! Renders a [`Plan`] in Z.AI's wire formats: its OpenAI-style API (no `event:` lines, role
//! repeated in every delta, usage on the finishing chunk) and its Anthropic-style API.

use bytes::Bytes;
use serde_json::{json, Value};

use super::plan::Plan;
use crate::error::Dialect;

fn hex_id(len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        s.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    s.truncate(len);
    s
}

pub fn new_id() -> String {
    format!(
        "{}{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        hex_id(16)
    )
}

fn openai_usage(p: &Plan) -> Value {
    let completion = p.completion_tokens();
    json!({
        "prompt_tokens": p.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": p.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": p.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": p.reasoning.len()},
    })
}

fn openai_tool_calls(p: &Plan) -> Vec<Value> {
    p.tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": format!("call_{}", hex_id(24)), "index": i, "type": "function",
                   "function": {"name": t.name, "arguments": t.arguments}})
        })
        .collect()
}

pub fn openai_json(p: &Plan, id: &str, created: i64) -> String {
    let mut message = json!({"role": "assistant", "content": p.text.concat()});
    if !p.reasoning.is_empty() {
        message["reasoning_content"] = p.reasoning.concat().into();
    }
    if !p.tools.is_empty() {
        message["tool_calls"] = openai_tool_calls(p).into();
    }
    json!({
        "choices": [{"finish_reason": p.finish, "index": 0, "message": message}],
        "created": created, "id": id, "model": p.model, "object": "chat.completion",
        "request_id": id, "usage": openai_usage(p),
    })
    .to_string()
}

pub fn openai_events(p: &Plan, id: &str, created: i64) -> Vec<Bytes> {
    let chunk = |choice: Value, usage: Option<Value>| {
        let mut c = json!({"id": id, "created": created, "object": "chat.completion.chunk",
                           "model": p.model, "choices": [choice]});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut out = Vec::with_capacity(p.reasoning.len() + p.text.len() + p.tools.len() + 2);
    for r in &p.reasoning {
        out.push(chunk(
            json!({"index": 0, "delta": {"role": "assistant", "reasoning_content": r}}),
            None,
        ));
    }
    for t in &p.text {
        out.push(chunk(
            json!({"index": 0, "delta": {"role": "assistant", "content": t}}),
            None,
        ));
    }
    for call in openai_tool_calls(p) {
        out.push(chunk(
            json!({"index": 0, "delta": {"tool_calls": [call]}}),
            None,
        ));
    }
    out.push(chunk(
        json!({"index": 0, "finish_reason": p.finish, "delta": {"role": "assistant", "content": ""}}),
        Some(openai_usage(p)),
    ));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn stop_reason(p: &Plan) -> &'static str {
    match p.finish {
        "tool_calls" => "tool_use",
        "length" => "max_tokens",
        _ => "end_turn",
    }
}

fn anthropic_usage(p: &Plan, output: u64) -> Value {
    json!({"input_tokens": p.prompt_tokens - p.cached_tokens, "cache_creation_input_tokens": 0,
           "cache_read_input_tokens": p.cached_tokens, "output_tokens": output})
}

fn tool_id() -> String {
    format!("toolu_{}", hex_id(24))
}

pub fn anthropic_json(p: &Plan, id: &str) -> String {
    let mut content = Vec::new();
    if !p.reasoning.is_empty() {
        content
            .push(json!({"type": "thinking", "thinking": p.reasoning.concat(), "signature": ""}));
    }
    content.push(json!({"type": "text", "text": p.text.concat()}));
    for t in &p.tools {
        let input: Value = serde_json::from_str(&t.arguments).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": tool_id(), "name": t.name, "input": input}));
    }
    json!({
        "id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": p.model,
        "content": content, "stop_reason": stop_reason(p), "stop_sequence": null,
        "usage": anthropic_usage(p, p.completion_tokens()),
    })
    .to_string()
}

fn event(name: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// One content block: its start, its deltas, its stop.
fn block(out: &mut Vec<Bytes>, index: usize, start: Value, deltas: Vec<Value>, ping: bool) {
    out.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": index, "content_block": start}),
    ));
    if ping {
        out.push(Bytes::from_static(
            b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
        ));
    }
    for delta in deltas {
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }
    out.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ));
}

pub fn anthropic_events(p: &Plan, id: &str) -> Vec<Bytes> {
    let mut out = Vec::new();
    out.push(event("message_start", json!({"type": "message_start", "message": {
        "id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": p.model,
        "content": [], "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(p, 1)}})));
    let mut index = 0;
    if !p.reasoning.is_empty() {
        let deltas = p
            .reasoning
            .iter()
            .map(|r| json!({"type": "thinking_delta", "thinking": r}));
        let start = json!({"type": "thinking", "thinking": "", "signature": ""});
        block(&mut out, index, start, deltas.collect(), false);
        index += 1;
    }
    let deltas = p
        .text
        .iter()
        .map(|t| json!({"type": "text_delta", "text": t}));
    block(
        &mut out,
        index,
        json!({"type": "text", "text": ""}),
        deltas.collect(),
        true,
    );
    for t in &p.tools {
        index += 1;
        // Fragments split mid-token, as real upstreams send them.
        let mid = t
            .arguments
            .char_indices()
            .nth(t.arguments.chars().count() / 2)
            .map(|(i, _)| i)
            .unwrap_or(0);
        let parts = ["", &t.arguments[..mid], &t.arguments[mid..]];
        let deltas = parts
            .iter()
            .map(|part| json!({"type": "input_json_delta", "partial_json": part}));
        let start = json!({"type": "tool_use", "id": tool_id(), "name": t.name, "input": {}});
        block(&mut out, index, start, deltas.collect(), false);
    }
    out.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason(p), "stop_sequence": null},
        "usage": anthropic_usage(p, p.completion_tokens())}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

/// A Z.AI error body for `dialect`'s endpoint.
pub fn error_body(dialect: Dialect, status: u16, code: &str, request_id: &str) -> String {
    let message = super::faults::message(code);
    match dialect {
        Dialect::OpenAi => json!({"error": {"code": code, "message": message}}).to_string(),
        Dialect::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "code": code, "message": message},
                   "request_id": request_id})
            .to_string()
        }
    }
}
