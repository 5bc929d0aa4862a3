//! Property tests: random valid requests survive Anthropic → OpenAI → Anthropic and
//! OpenAI → Anthropic → OpenAI without losing meaning; random bytes fed to every stream
//! translator never panic and always end in a final or error event.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{a2o, o2a, ResponseTranslator};

fn text() -> impl Strategy<Value = String> {
    // Printable text with quotes, backslashes, newlines and non-ASCII.
    proptest::string::string_regex("[a-zA-Z0-9 .,!?\"\\\\\n\u{e9}\u{4e2d}]{1,24}").expect("regex")
}

fn tool_name() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z][a-z0-9_]{0,10}").expect("regex")
}

fn input() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        "[a-z]{1,6}",
        prop_oneof![
            any::<i32>().prop_map(|n| json!(n)),
            text().prop_map(|s| json!(s)),
            any::<bool>().prop_map(|b| json!(b)),
        ],
        0..4,
    )
    .prop_map(|m| json!(m))
}

/// One exchange: a user turn (tool results first, then text), then an assistant turn
/// (text, then tool calls).
#[derive(Clone, Debug)]
struct Exchange {
    user_text: String,
    results: Vec<String>,
    assistant_text: Option<String>,
    calls: Vec<(String, Value)>,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (
        text(),
        prop::collection::vec(text(), 0..3),
        prop::option::of(text()),
        prop::collection::vec((tool_name(), input()), 0..3),
    )
        .prop_map(|(user_text, results, assistant_text, calls)| Exchange {
            user_text,
            results,
            assistant_text,
            calls,
        })
}

#[derive(Clone, Debug)]
struct Req {
    system: Option<String>,
    exchanges: Vec<Exchange>,
    last_user: String,
    tools: Vec<String>,
    stops: Vec<String>,
    max_tokens: u64,
    temperature: Option<f64>,
    thinking: bool,
    stream: bool,
}

fn req() -> impl Strategy<Value = Req> {
    (
        prop::option::of(text()),
        prop::collection::vec(exchange(), 0..3),
        text(),
        prop::collection::btree_set(tool_name(), 0..3),
        prop::collection::vec("[A-Z]{1,5}", 0..2),
        2048u64..32000,
        prop::option::of((0u32..=10).prop_map(|t| f64::from(t) / 10.0)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                system,
                exchanges,
                last_user,
                tools,
                stops,
                max_tokens,
                temperature,
                thinking,
                stream,
            )| Req {
                system,
                exchanges,
                last_user,
                tools: tools.into_iter().collect(),
                stops,
                max_tokens,
                temperature,
                thinking,
                stream,
            },
        )
}

/// The request as an Anthropic client sends it. Tool-use ids tie results to calls.
fn anthropic(r: &Req) -> Value {
    let mut messages = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for (i, x) in r.exchanges.iter().enumerate() {
        let mut user = Vec::new();
        for (j, id) in pending.drain(..).enumerate() {
            let content = x.results.get(j).cloned().unwrap_or_else(|| "ok".into());
            user.push(json!({"type": "tool_result", "tool_use_id": id, "content": content}));
        }
        user.push(json!({"type": "text", "text": x.user_text}));
        messages.push(json!({"role": "user", "content": user}));
        let mut assistant = Vec::new();
        if let Some(t) = &x.assistant_text {
            assistant.push(json!({"type": "text", "text": t}));
        }
        for (k, (name, input)) in x.calls.iter().enumerate() {
            let id = format!("toolu_{i}_{k}");
            assistant.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
            pending.push(id);
        }
        if assistant.is_empty() {
            assistant.push(json!({"type": "text", "text": "…"}));
        }
        messages.push(json!({"role": "assistant", "content": assistant}));
    }
    let mut last = Vec::new();
    for id in pending {
        last.push(json!({"type": "tool_result", "tool_use_id": id, "content": "done"}));
    }
    last.push(json!({"type": "text", "text": r.last_user}));
    messages.push(json!({"role": "user", "content": last}));
    let mut v = json!({"model": "glm-4.7", "max_tokens": r.max_tokens, "messages": messages,
                       "stream": r.stream});
    if let Some(s) = &r.system {
        v["system"] = json!(s);
    }
    if !r.tools.is_empty() {
        v["tools"] = json!(r
            .tools
            .iter()
            .map(|n| json!({"name": n, "description": "d",
            "input_schema": {"type": "object", "properties": {}}}))
            .collect::<Vec<_>>());
    }
    if !r.stops.is_empty() {
        v["stop_sequences"] = json!(r.stops);
    }
    if let Some(t) = r.temperature {
        v["temperature"] = json!(t);
    }
    if r.thinking {
        v["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    }
    v
}

/// What a request means, independent of its format: system text, then per turn the role,
/// its text, its tool calls (name, input) and its tool results (id, content).
fn meaning_of_anthropic(v: &Value) -> Value {
    let turns: Vec<Value> = v["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let blocks: Vec<Value> = match &m["content"] {
                Value::String(s) => vec![json!({"type": "text", "text": s})],
                Value::Array(b) => b.clone(),
                _ => Vec::new(),
            };
            let texts: Vec<&str> = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            json!({
                "role": m["role"],
                "text": texts.join("\n"),
                "calls": blocks.iter().filter(|b| b["type"] == "tool_use")
                    .map(|b| json!([b["id"], b["name"], b["input"]])).collect::<Vec<_>>(),
                "results": blocks.iter().filter(|b| b["type"] == "tool_result")
                    .map(|b| json!([b["tool_use_id"], b["content"]])).collect::<Vec<_>>(),
            })
        })
        .collect();
    let thinking = v["thinking"]["type"] == "enabled";
    json!({
        "system": v["system"].as_str().unwrap_or_default(),
        "turns": turns,
        "tools": v["tools"].as_array().map(|t| t.iter().map(|t| t["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "stops": v["stop_sequences"].as_array().cloned().unwrap_or_default(),
        "max_tokens": v["max_tokens"],
        "temperature": v["temperature"],
        "thinking": thinking,
        "stream": v["stream"].as_bool().unwrap_or(false),
    })
}

fn events_of(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("event: ").map(str::to_string))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn anthropic_requests_survive_a_round_trip(r in req()) {
        let original = anthropic(&r);
        let (openai, _) = a2o::request(original.to_string().as_bytes()).expect("to openai");
        let (back, ctx) = o2a::request(&openai).expect("back to anthropic");
        let back: Value = serde_json::from_slice(&back).expect("json");
        prop_assert_eq!(meaning_of_anthropic(&original), meaning_of_anthropic(&back));
        prop_assert_eq!(ctx.stream, r.stream);
    }

    #[test]
    fn openai_requests_survive_a_round_trip(r in req()) {
        // Build the OpenAI form from the Anthropic one, then go around the other way.
        let (openai, _) = a2o::request(anthropic(&r).to_string().as_bytes()).expect("to openai");
        let (anth, _) = o2a::request(&openai).expect("to anthropic");
        let (again, _) = a2o::request(&anth).expect("to openai again");
        let first: Value = serde_json::from_slice(&openai).expect("json");
        let second: Value = serde_json::from_slice(&again).expect("json");
        for key in ["messages", "tools", "stop", "max_tokens", "temperature", "thinking", "stream"] {
            prop_assert_eq!(&first[key], &second[key], "{}", key);
        }
    }

    #[test]
    fn arbitrary_upstream_bytes_never_break_the_client_stream(
        chunks in prop::collection::vec(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "(data: \\{\"choices\":\\[\\{\"index\":0,\"delta\":\\{\"content\":\"[a-z]{0,5}\"\\}\\}\\]\\}\n\n|data: \\[DONE\\]\n\n|event: [a-z_]{1,10}\n|data: \\{\"type\":\"[a-z_]{1,20}\"\\}\n\n|\n|data: \\{\"error\":\\{\\}\\}\n\n)"
                .prop_map(String::into_bytes),
        ], 0..20)
    ) {
        let mut a = a2o::StreamTranslator::new(a2o::Context::default());
        let mut out = Vec::new();
        for c in &chunks {
            out.extend_from_slice(&a.feed(c));
        }
        out.extend_from_slice(&a.finish());
        let events = events_of(&out);
        prop_assert!(matches!(events.last().map(String::as_str), Some("message_stop" | "error")), "{:?}", events);
        prop_assert_eq!(events.first().map(String::as_str), Some("message_start"));

        let mut o = o2a::StreamTranslator::new(o2a::Context { include_usage: true, ..o2a::Context::default() });
        let mut out = Vec::new();
        for c in &chunks {
            out.extend_from_slice(&o.feed(c));
        }
        out.extend_from_slice(&o.finish());
        let text = String::from_utf8_lossy(&out).to_string();
        let last = text.lines().rfind(|l| !l.is_empty()).unwrap_or_default().to_string();
        prop_assert!(last == "data: [DONE]" || last.starts_with("data: {\"error\""), "{}", text);
        for line in text.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
            prop_assert!(serde_json::from_str::<Value>(line).is_ok(), "{}", line);
        }
    }
}
