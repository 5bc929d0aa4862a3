//! `POST /v1/messages/count_tokens`: from the upstream when a provider is configured to be
//! asked (`count_tokens_upstream`), else counted locally with a real BPE tokenizer
//! (tiktoken's `cl100k_base`). GLM's own tokenizer differs, so a local count is an estimate,
//! and is marked as one with `x-glmgate-token-count: estimate`.

use serde_json::Value;

/// Tokens added per message for role and framing (the figure OpenAI documents for chat).
const PER_MESSAGE: u64 = 3;
/// An image whose size is unknown: Anthropic's figure for a ~1.15 megapixel image.
const PER_IMAGE: u64 = 1600;

/// Estimates the input tokens of an Anthropic Messages request.
pub fn estimate(req: &Value) -> u64 {
    let mut text = String::new();
    let mut extra = 0u64;
    let mut push = |s: &str| {
        text.push_str(s);
        text.push('\n');
    };
    match req.get("system") {
        Some(Value::String(s)) => push(s),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .for_each(&mut push),
        _ => {}
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        extra += PER_MESSAGE;
        match m.get("content") {
            Some(Value::String(s)) => push(s),
            Some(Value::Array(blocks)) => {
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => push(b["text"].as_str().unwrap_or_default()),
                        Some("thinking") => push(b["thinking"].as_str().unwrap_or_default()),
                        Some("tool_use") => {
                            push(b["name"].as_str().unwrap_or_default());
                            push(&b["input"].to_string());
                        }
                        Some("tool_result") => match &b["content"] {
                            Value::String(s) => push(s),
                            Value::Array(parts) => {
                                for p in parts {
                                    match p.get("text").and_then(Value::as_str) {
                                        Some(t) => push(t),
                                        None => extra += PER_IMAGE,
                                    }
                                }
                            }
                            _ => {}
                        },
                        Some("image" | "document") => extra += PER_IMAGE,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    for t in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        push(&t.to_string());
    }
    let bpe = tiktoken_rs::cl100k_base_singleton();
    bpe.encode_ordinary(&text).len() as u64 + extra
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_grow_with_content_and_tools() {
        let small = json!({"messages": [{"role": "user", "content": "Hello"}]});
        let n = estimate(&small);
        assert!((2..=10).contains(&n), "{n}");
        let big = json!({
            "system": "You are a careful assistant.",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Hello ".repeat(100)},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]
        });
        let m = estimate(&big);
        assert!(m > n + 100 + PER_IMAGE, "{m}");
    }
}
