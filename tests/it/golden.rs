//! Golden tests: upstream answers made by the team (tests/fixtures/translate/*.sse|json: a
//! stream with thinking, text and parallel tool calls with fragmented arguments, in each
//! format; whole answers likewise) go through each translator, and the client-format
//! output must equal the reviewed `.golden` file byte for byte (with `created` timestamps
//! zeroed). `UPDATE_GOLDEN=1` rewrites the golden files; review the diff before committing.

use std::path::PathBuf;

use glmgate::translate::{a2o, o2a, ResponseTranslator, Translation};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

/// Feeds `input` in uneven pieces, as a network would deliver it.
fn run(t: &mut dyn ResponseTranslator, input: &[u8]) -> String {
    let mut out = Vec::new();
    let mut rest = input;
    let mut size = 1;
    while !rest.is_empty() {
        let n = size.min(rest.len());
        out.extend_from_slice(&t.feed(&rest[..n]));
        rest = &rest[n..];
        size = size % 97 + 13;
    }
    out.extend_from_slice(&t.finish());
    zero_created(&String::from_utf8(out).expect("utf8"))
}

/// `"created"` is the only value that depends on the clock.
fn zero_created(s: &str) -> String {
    let mut o = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("\"created\":") {
        let (head, tail) = rest.split_at(i + "\"created\":".len());
        o.push_str(head);
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        o.push('0');
        rest = &tail[digits..];
    }
    o.push_str(rest);
    o
}

fn check(input: &str, golden: &str, t: &mut dyn ResponseTranslator) {
    let bytes = std::fs::read(dir().join(input)).expect("fixture");
    compare(golden, run(t, &bytes));
}

/// A whole answer, translated at once as the gateway does before sending the status.
fn check_whole(input: &str, golden: &str, t: &Translation) {
    let bytes = std::fs::read(dir().join(input)).expect("fixture");
    let out = t.response(&bytes).expect("translates");
    compare(
        golden,
        zero_created(std::str::from_utf8(&out).expect("utf8")),
    );
}

fn compare(golden: &str, got: String) {
    let path = dir().join(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 makes it)");
    assert_eq!(got, want, "{golden} differs");
}

fn a2o_ctx(stream: bool) -> a2o::Context {
    a2o::Context {
        model: "claude-sonnet-4-6".into(),
        stream,
        thinking: true,
        ..a2o::Context::default()
    }
}

fn o2a_ctx(stream: bool) -> o2a::Context {
    o2a::Context {
        model: "glm-4.7".into(),
        stream,
        include_usage: true,
    }
}

#[test]
fn openai_stream_to_anthropic_events() {
    check(
        "openai_stream_thinking_text_parallel_tools.sse",
        "openai_stream_thinking_text_parallel_tools.to_anthropic.golden",
        &mut a2o::StreamTranslator::new(a2o_ctx(true)),
    );
}

#[test]
fn anthropic_stream_to_openai_chunks() {
    check(
        "anthropic_stream_thinking_text_tool.sse",
        "anthropic_stream_thinking_text_tool.to_openai.golden",
        &mut o2a::StreamTranslator::new(o2a_ctx(true)),
    );
}

#[test]
fn openai_answer_to_anthropic_message() {
    check_whole(
        "openai_response_thinking_tools.json",
        "openai_response_thinking_tools.to_anthropic.golden",
        &Translation::A2O(a2o_ctx(false)),
    );
}

#[test]
fn anthropic_answer_to_openai_completion() {
    check_whole(
        "anthropic_response_thinking_tool.json",
        "anthropic_response_thinking_tool.to_openai.golden",
        &Translation::O2A(o2a_ctx(false)),
    );
}
