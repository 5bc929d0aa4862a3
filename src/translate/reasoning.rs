//! Reasoning shown to a client its own way: `passthrough` (as the API carries it:
//! `reasoning_content` / `thinking` blocks), `think_tags` (as `<think>…</think>` in the text,
//! for clients that cannot show reasoning) or `strip` (not at all; it is still paid for).
//!
//! Works on the client-format answer (after any translation): streams event by event
//! ([`ReasoningFilter`]), whole answers at once ([`rewrite_whole`]).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ResponseTranslator;
use crate::error::Dialect;
use crate::sse::LineReader;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningMode {
    #[default]
    Passthrough,
    ThinkTags,
    Strip,
}

impl ReasoningMode {
    pub fn parse(s: &str) -> Option<ReasoningMode> {
        match s {
            "passthrough" => Some(ReasoningMode::Passthrough),
            "think_tags" => Some(ReasoningMode::ThinkTags),
            "strip" => Some(ReasoningMode::Strip),
            _ => None,
        }
    }
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Rewrites reasoning in a client-format event stream; wraps the translator, if any.
pub struct ReasoningFilter {
    mode: ReasoningMode,
    dialect: Dialect,
    inner: Option<Box<dyn ResponseTranslator>>,
    lines: crate::sse::Lines,
    /// OpenAI stream: inside `<think>` (reasoning seen, no text yet).
    thinking: bool,
    /// Anthropic stream: thinking block indices seen, and whether the open one is thinking.
    dropped: usize,
    open_thinking: Option<u64>,
    out: BytesMut,
}

impl ReasoningFilter {
    pub fn new(
        mode: ReasoningMode,
        dialect: Dialect,
        inner: Option<Box<dyn ResponseTranslator>>,
    ) -> Self {
        ReasoningFilter {
            mode,
            dialect,
            inner,
            lines: Default::default(),
            thinking: false,
            dropped: 0,
            open_thinking: None,
            out: BytesMut::new(),
        }
    }

    fn emit_data(&mut self, event: Option<&str>, v: &Value) {
        if let Some(e) = event {
            self.out.extend_from_slice(b"event: ");
            self.out.extend_from_slice(e.as_bytes());
            self.out.extend_from_slice(b"\n");
        }
        self.out.extend_from_slice(b"data: ");
        self.out.extend_from_slice(v.to_string().as_bytes());
        self.out.extend_from_slice(b"\n\n");
    }

    fn openai_chunk(&mut self, mut v: Value) {
        let finish = v
            .pointer("/choices/0/finish_reason")
            .is_some_and(|f| !f.is_null());
        if let Some(delta) = v
            .pointer_mut("/choices/0/delta")
            .and_then(Value::as_object_mut)
        {
            let reasoning = delta
                .remove("reasoning_content")
                .and_then(|r| r.as_str().map(str::to_string))
                .filter(|r| !r.is_empty());
            if self.mode == ReasoningMode::ThinkTags {
                let text = delta.get("content").and_then(Value::as_str).unwrap_or("");
                let mut content = String::new();
                if let Some(r) = reasoning {
                    if !self.thinking {
                        content.push_str(OPEN);
                        self.thinking = true;
                    }
                    content.push_str(&r);
                }
                if self.thinking && (!text.is_empty() || finish) {
                    content.push_str(CLOSE);
                    self.thinking = false;
                }
                content.push_str(text);
                if !content.is_empty() {
                    delta.insert("content".into(), json!(content));
                }
            }
        }
        self.emit_data(None, &v);
    }

    fn anthropic_event(&mut self, mut v: Value) {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let index = v.get("index").and_then(Value::as_u64);
        let is_thinking_start = kind == "content_block_start"
            && matches!(
                v.pointer("/content_block/type").and_then(Value::as_str),
                Some("thinking" | "redacted_thinking")
            );
        if is_thinking_start {
            self.open_thinking = index;
            if self.mode == ReasoningMode::Strip {
                self.dropped += 1;
                return;
            }
            v["content_block"] = json!({"type": "text", "text": ""});
        }
        let in_thinking = index.is_some() && index == self.open_thinking;
        if in_thinking {
            match (self.mode, kind.as_str()) {
                (ReasoningMode::Strip, _) => {
                    if kind == "content_block_stop" {
                        self.open_thinking = None;
                    }
                    return;
                }
                (_, "content_block_start") => {
                    self.emit_data(Some("content_block_start"), &v);
                    let open = json!({"type": "content_block_delta", "index": index,
                                      "delta": {"type": "text_delta", "text": OPEN}});
                    self.emit_data(Some("content_block_delta"), &open);
                    return;
                }
                (_, "content_block_delta") => {
                    let Some(t) = v.pointer("/delta/thinking").and_then(Value::as_str) else {
                        return; // signature_delta: nothing to show
                    };
                    v["delta"] = json!({"type": "text_delta", "text": t});
                }
                (_, "content_block_stop") => {
                    self.open_thinking = None;
                    let close = json!({"type": "content_block_delta", "index": index,
                                       "delta": {"type": "text_delta", "text": CLOSE}});
                    self.emit_data(Some("content_block_delta"), &close);
                }
                _ => {}
            }
        }
        if let (Some(i), true) = (index, self.dropped > 0) {
            v["index"] = json!(i.saturating_sub(self.dropped as u64));
        }
        self.emit_data(Some(&kind), &v);
    }
}

impl LineReader for ReasoningFilter {
    fn lines(&mut self) -> &mut crate::sse::Lines {
        &mut self.lines
    }

    /// `event:` lines are re-emitted with their data; blank lines end events.
    fn line(&mut self, line: &[u8]) {
        let Some(data) = crate::sse::data(line) else {
            return;
        };
        match serde_json::from_slice::<Value>(data) {
            Ok(v) if v.get("error").is_none() => match self.dialect {
                Dialect::OpenAi => self.openai_chunk(v),
                Dialect::Anthropic => self.anthropic_event(v),
            },
            // [DONE], errors and anything unparsed pass as they came.
            _ => {
                if self.dialect == Dialect::Anthropic && data.starts_with(b"{\"type\":\"error\"") {
                    self.out.extend_from_slice(b"event: error\n");
                }
                self.out.extend_from_slice(line);
                self.out.extend_from_slice(b"\n\n");
            }
        }
    }
}

/// Reasoning rewritten in a whole client-format answer; `None` if it does not parse.
pub fn rewrite_whole(mode: ReasoningMode, dialect: Dialect, body: &[u8]) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    match dialect {
        Dialect::OpenAi => {
            for choice in v.get_mut("choices")?.as_array_mut()? {
                let Some(m) = choice.get_mut("message").and_then(Value::as_object_mut) else {
                    continue;
                };
                let r = m.remove("reasoning_content");
                if mode == ReasoningMode::ThinkTags {
                    if let Some(r) = r.as_ref().and_then(Value::as_str).filter(|r| !r.is_empty()) {
                        let text = m.get("content").and_then(Value::as_str).unwrap_or("");
                        m.insert("content".into(), json!(format!("{OPEN}{r}{CLOSE}{text}")));
                    }
                }
            }
        }
        Dialect::Anthropic => {
            let blocks = v.get_mut("content")?.as_array_mut()?;
            let kept: Vec<Value> = blocks
                .drain(..)
                .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                    Some("thinking" | "redacted_thinking") => match mode {
                        ReasoningMode::Strip => None,
                        _ => b
                            .get("thinking")
                            .and_then(Value::as_str)
                            .map(|t| json!({"type": "text", "text": format!("{OPEN}{t}{CLOSE}")})),
                    },
                    _ => Some(b),
                })
                .collect();
            *blocks = kept;
        }
    }
    Some(Bytes::from(v.to_string()))
}

impl ResponseTranslator for ReasoningFilter {
    fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let bytes = match self.inner.as_mut() {
            Some(t) => t.feed(chunk),
            None => Bytes::copy_from_slice(chunk),
        };
        self.read_lines(&bytes);
        self.out.split().freeze()
    }

    fn finish(&mut self) -> Bytes {
        if let Some(t) = self.inner.as_mut() {
            let tail = t.finish();
            self.read_lines(&tail);
        }
        self.out.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: ReasoningMode, dialect: Dialect, input: &str) -> String {
        let mut f = ReasoningFilter::new(mode, dialect, None);
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(9) {
            out.extend_from_slice(&f.feed(piece));
        }
        out.extend_from_slice(&f.finish());
        String::from_utf8(out).expect("utf8")
    }

    const OPENAI_STREAM: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"Let me\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\" think\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

    fn openai_text(out: &str) -> (String, bool) {
        let mut text = String::new();
        let mut reasoning = false;
        for d in out.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if let Ok(v) = serde_json::from_str::<Value>(d) {
                text.push_str(
                    v.pointer("/choices/0/delta/content")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
                reasoning |= v.pointer("/choices/0/delta/reasoning_content").is_some();
            }
        }
        (text, reasoning)
    }

    #[test]
    fn openai_streams_get_think_tags_or_lose_reasoning() {
        let out = run(ReasoningMode::ThinkTags, Dialect::OpenAi, OPENAI_STREAM);
        assert_eq!(
            openai_text(&out),
            ("<think>Let me think</think>Hi".into(), false)
        );
        assert!(out.ends_with("data: [DONE]\n\n"));
        let out = run(ReasoningMode::Strip, Dialect::OpenAi, OPENAI_STREAM);
        assert_eq!(openai_text(&out), ("Hi".into(), false));
    }

    #[test]
    fn anthropic_streams_lose_thinking_blocks_with_indices_renumbered() {
        let events = [
            json!({"type": "message_start", "message": {}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_stop"}),
        ];
        let input: String = events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
            .collect();
        let out = run(ReasoningMode::Strip, Dialect::Anthropic, &input);
        assert!(!out.contains("thinking"), "{out}");
        let starts: Vec<Value> = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["type"] == "content_block_start")
            .collect();
        assert_eq!(starts.len(), 1);
        assert_eq!(starts[0]["index"], 0, "renumbered");
        let out = run(ReasoningMode::ThinkTags, Dialect::Anthropic, &input);
        let text: String = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v.pointer("/delta/text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, "<think>Hmm</think>Hi");
        assert!(!out.contains("signature"));
    }

    #[test]
    fn whole_answers_are_rewritten() {
        let o = rewrite_whole(
            ReasoningMode::ThinkTags,
            Dialect::OpenAi,
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi","reasoning_content":"Hmm"}}]}"#,
        )
        .expect("rewritten");
        let v: Value = serde_json::from_slice(&o).expect("json");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "<think>Hmm</think>Hi"
        );
        assert!(v["choices"][0]["message"]
            .get("reasoning_content")
            .is_none());
        let a = rewrite_whole(
            ReasoningMode::Strip,
            Dialect::Anthropic,
            br#"{"type":"message","content":[{"type":"thinking","thinking":"Hmm","signature":""},{"type":"text","text":"Hi"}]}"#,
        )
        .expect("rewritten");
        let v: Value = serde_json::from_slice(&a).expect("json");
        assert_eq!(v["content"], json!([{"type": "text", "text": "Hi"}]));
    }
}
