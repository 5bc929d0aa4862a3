//! What the mock will answer to a request, independent of wire format: reasoning pieces,
//! text pieces, tool calls, usage. Deterministic, so tests can assert exact results.

use serde_json::Value;

use crate::error::Dialect;

#[derive(Debug, Clone)]
pub struct ToolCall {
    pub name: String,
    /// Arguments as a JSON text.
    pub arguments: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub model: String,
    pub reasoning: Vec<String>,
    pub text: Vec<String>,
    pub tools: Vec<ToolCall>,
    /// Why generation ended: `stop`, `tool_calls` or `length` (OpenAI words).
    pub finish: &'static str,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
}

impl Plan {
    pub fn completion_tokens(&self) -> u64 {
        let tool_tokens: usize = self
            .tools
            .iter()
            .map(|t| t.arguments.len().div_ceil(4))
            .sum();
        (self.reasoning.len() + self.text.len() + tool_tokens) as u64
    }
}

const REASONING: &[&str] = &["Let", " me", " think", " about", " this", "."];
const FILLER: &[&str] = &[
    " The", " gateway", " passes", " every", " chunk", " on", " as", " it", " arrives", ".",
];

/// The text of the last user turn, for echoing.
fn last_user_text(req: &Value) -> String {
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(user) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &user["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Did the last message carry tool results (so the model should answer in text)?
fn after_tool_result(req: &Value) -> bool {
    let Some(last) = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
    else {
        return false;
    };
    last["role"] == "tool"
        || last["content"]
            .as_array()
            .map(|b| b.iter().any(|b| b["type"] == "tool_result"))
            .unwrap_or(false)
}

/// A sample value for a JSON-schema property type.
fn sample(schema: &Value) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("number") | Some("integer") => Value::from(1),
        Some("boolean") => Value::from(true),
        Some("array") => Value::Array(Vec::new()),
        Some("object") => Value::Object(Default::default()),
        _ => Value::from("mock"),
    }
}

/// Arguments for a tool: every required property with a sample value.
fn arguments_for(schema: &Value) -> String {
    let mut args = serde_json::Map::new();
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            let prop = &schema["properties"][name];
            args.insert(name.to_string(), sample(prop));
        }
    }
    Value::Object(args).to_string()
}

/// Builds the plan. `chunks` is how many text pieces a full answer has.
pub fn build(dialect: Dialect, req: &Value, body_len: usize, chunks: usize) -> Plan {
    let model = req["model"].as_str().unwrap_or("glm-4.7").to_string();
    // GLM thinks unless told not to; Anthropic clients ask for thinking explicitly.
    let thinking = match dialect {
        Dialect::OpenAi => req["thinking"]["type"] != "disabled",
        Dialect::Anthropic => req["thinking"]["type"] == "enabled",
    };
    let reasoning: Vec<String> = if thinking {
        REASONING.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    };
    let mut tools = Vec::new();
    if !after_tool_result(req) {
        if let Some(defs) = req.get("tools").and_then(Value::as_array) {
            // One call per declared tool, at most two: enough to exercise parallel calls.
            for def in defs.iter().take(2) {
                let (name, schema) = match dialect {
                    Dialect::OpenAi => (&def["function"]["name"], &def["function"]["parameters"]),
                    Dialect::Anthropic => (&def["name"], &def["input_schema"]),
                };
                if let Some(name) = name.as_str() {
                    tools.push(ToolCall {
                        name: name.to_string(),
                        arguments: arguments_for(schema),
                    });
                }
            }
        }
    }
    let echo: String = last_user_text(req).chars().take(60).collect();
    let mut text: Vec<String> = format!("Hello from the glmgate mock of {model}. You said: {echo}")
        .split_inclusive(' ')
        .map(str::to_string)
        .collect();
    let target = if tools.is_empty() {
        chunks.max(1)
    } else {
        text.len().min(chunks.max(1))
    };
    let mut i = 0;
    while text.len() < target {
        text.push(FILLER[i % FILLER.len()].to_string());
        i += 1;
    }
    text.truncate(target);
    let max_tokens = req["max_tokens"]
        .as_u64()
        .or_else(|| req["max_completion_tokens"].as_u64())
        .unwrap_or(u64::MAX) as usize;
    let mut finish = if tools.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    if reasoning.len() + text.len() > max_tokens {
        let room = max_tokens.saturating_sub(reasoning.len()).max(1);
        text.truncate(room);
        tools.clear();
        finish = "length";
    }
    let prompt_tokens = (body_len as u64).div_ceil(4).max(1);
    Plan {
        model,
        reasoning,
        text,
        tools,
        finish,
        prompt_tokens,
        // A fixed share, so accounting of cached tokens is exercised on every request.
        cached_tokens: prompt_tokens / 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_has_exactly_the_requested_chunks() {
        let req = json!({"model":"glm-4.7","messages":[{"role":"user","content":"hi"}]});
        let p = build(Dialect::OpenAi, &req, 100, 25);
        assert_eq!(p.text.len(), 25);
        assert_eq!(p.reasoning.len(), REASONING.len());
        assert_eq!(p.finish, "stop");
        assert_eq!(p.prompt_tokens, 25);
        assert_eq!(p.cached_tokens, 6);
    }

    #[test]
    fn tools_are_called_with_required_arguments() {
        let req = json!({"model":"glm-4.7","messages":[{"role":"user","content":"weather?"}],
            "tools":[{"type":"function","function":{"name":"weather","parameters":{
                "type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},
                "required":["city","days"]}}}]});
        let p = build(Dialect::OpenAi, &req, 10, 20);
        assert_eq!(p.tools.len(), 1);
        assert_eq!(p.tools[0].arguments, r#"{"city":"mock","days":1}"#);
        assert_eq!(p.finish, "tool_calls");
    }

    #[test]
    fn anthropic_thinks_only_when_asked_and_max_tokens_cuts() {
        let req =
            json!({"model":"glm-4.7","max_tokens":1,"messages":[{"role":"user","content":"hi"}]});
        let p = build(Dialect::Anthropic, &req, 10, 20);
        assert!(p.reasoning.is_empty());
        assert_eq!(p.text.len(), 1);
        assert_eq!(p.finish, "length");
    }
}
