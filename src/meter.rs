//! Usage metering on a passing response, without holding it back.
//!
//! The proxy hands every chunk to a [`Meter`] after it has been queued for the client. For
//! SSE the meter scans complete lines in place (only a line split across reads is copied)
//! and parses JSON only for events that mention `usage` or `error`. For JSON bodies it keeps
//! the chunks (reference-counted, no copy) and parses once at the end.

use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem::{Finder, FinderRev};
use serde::de::IgnoredAny;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::Dialect;
use crate::sse::LineReader;

/// Largest non-stream body the meter keeps for parsing usage; bigger bodies still pass
/// through, and their usage is estimated.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

const USAGE_KEY: &[u8] = b"\"usage\"";
const ERROR_KEY: &[u8] = b"\"error\"";
/// Searchers are built once: building one costs more than searching a short event.
static ERROR: LazyLock<Finder> = LazyLock::new(|| Finder::new(ERROR_KEY));

/// What makes a stream event worth parsing: `usage`, `error` or (Anthropic) `message_stop`.
const WANTED_WORDS: [&[u8]; 3] = [USAGE_KEY, ERROR_KEY, b"message_stop"];
static WANTED: LazyLock<Words> = LazyLock::new(|| Words::new(&WANTED_WORDS));

/// A few words looked for at once, in one pass over an event. Teddy (SIMD, x86-64 and
/// aarch64) where the CPU has it: for two or three words it costs about what one `memmem`
/// search does. Elsewhere a general Aho-Corasick automaton.
enum Words {
    Teddy(aho_corasick::packed::Searcher),
    Automaton(aho_corasick::AhoCorasick),
}

impl Words {
    fn new(words: &[&[u8]]) -> Words {
        match aho_corasick::packed::Searcher::new(words.iter().copied()) {
            Some(teddy) => Words::Teddy(teddy),
            None => Words::automaton(words),
        }
    }

    fn automaton(words: &[&[u8]]) -> Words {
        Words::Automaton(aho_corasick::AhoCorasick::new(words).expect("a few short words"))
    }

    fn is_in(&self, text: &[u8]) -> bool {
        match self {
            Words::Teddy(teddy) => teddy.find(text).is_some(),
            Words::Automaton(automaton) => automaton.is_match(text),
        }
    }
}

/// Token counts in OpenAI's convention: `input_tokens` includes cached (cache-read) tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
}

/// Anthropic usage arrives in pieces (`message_start`, then cumulative `message_delta`);
/// a field seen later overwrites the earlier value.
#[derive(Clone, Copy, Debug, Default)]
struct AnthropicCounts {
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    output: Option<u64>,
}

impl AnthropicCounts {
    fn merge(&mut self, u: &WireUsage) {
        self.input = u.input_tokens.0.or(self.input);
        self.cache_creation = u.cache_creation_input_tokens.0.or(self.cache_creation);
        self.cache_read = u.cache_read_input_tokens.0.or(self.cache_read);
        self.output = u.output_tokens.0.or(self.output);
    }

    fn seen(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    /// Anthropic's `input_tokens` excludes cache reads and writes; ours includes them.
    fn usage(&self) -> Usage {
        let cache_read = self.cache_read.unwrap_or(0);
        Usage {
            input_tokens: self.input.unwrap_or(0) + self.cache_creation.unwrap_or(0) + cache_read,
            output_tokens: self.output.unwrap_or(0),
            cached_tokens: cache_read,
            reasoning_tokens: 0,
        }
    }
}

/// What the meter learned once the response ended (or was cut off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metered {
    /// Usage as the upstream reported it, if it did.
    pub usage: Option<Usage>,
    /// SSE data events seen (excluding `[DONE]`); the basis of an estimate.
    pub events: u64,
    /// The stream reached its terminal event (`[DONE]` or `message_stop`).
    pub complete: bool,
    /// An `error` payload was seen inside the body.
    pub upstream_error: bool,
    /// Bytes that passed.
    pub bytes: u64,
}

/// Watches a response body as it passes.
#[derive(Debug)]
pub enum Meter {
    Json(JsonMeter),
    Sse(SseMeter),
}

impl Meter {
    pub fn new(dialect: Dialect, is_sse: bool) -> Meter {
        if is_sse {
            Meter::Sse(SseMeter::new(dialect))
        } else {
            Meter::Json(JsonMeter {
                dialect,
                chunks: Vec::new(),
                len: 0,
                overflow: false,
            })
        }
    }

    pub fn feed(&mut self, chunk: &Bytes) {
        match self {
            Meter::Json(m) => m.feed(chunk),
            Meter::Sse(m) => m.feed(chunk),
        }
    }

    pub fn finish(&mut self) -> Metered {
        match self {
            Meter::Json(m) => m.finish(),
            Meter::Sse(m) => m.finish(),
        }
    }
}

/// A `usage` object in either API's shape; fields of the other API stay absent. Each field
/// is read in the one pass that parses the object: a field of an odd shape reads as absent
/// and spoils nothing else.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct WireUsage {
    prompt_tokens: Count,
    completion_tokens: Count,
    prompt_tokens_details: WireDetails,
    completion_tokens_details: WireDetails,
    input_tokens: Count,
    output_tokens: Count,
    cache_creation_input_tokens: Count,
    cache_read_input_tokens: Count,
}

/// A token count as the upstream wrote it; anything but a non-negative integer (a string,
/// a fraction, an object...) reads as absent.
#[derive(Clone, Copy, Debug, Default)]
struct Count(Option<u64>);

/// A `*_tokens_details` object; anything but an object reads as one with no counts.
#[derive(Clone, Copy, Debug, Default)]
struct WireDetails {
    cached_tokens: Count,
    reasoning_tokens: Count,
}

/// A value read from whatever JSON the upstream put there: what it expects (a count, an
/// object) is read, anything else is skipped and reads as the default.
trait Lenient: Default {
    fn from_u64(_: u64) -> Self {
        Self::default()
    }

    fn from_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
}

impl Lenient for Count {
    fn from_u64(v: u64) -> Count {
        Count(Some(v))
    }
}

impl Lenient for WireDetails {
    fn from_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        #[derive(serde::Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            CachedTokens,
            ReasoningTokens,
            #[serde(other)]
            Other,
        }
        let mut out = WireDetails::default();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::CachedTokens => out.cached_tokens = map.next_value()?,
                Field::ReasoningTokens => out.reasoning_tokens = map.next_value()?,
                Field::Other => _ = map.next_value::<IgnoredAny>()?,
            }
        }
        Ok(out)
    }
}

struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Lenient> serde::de::Visitor<'de> for LenientVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E>(self, v: u64) -> Result<T, E> {
        Ok(T::from_u64(v))
    }

    fn visit_i64<E>(self, _: i64) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_f64<E>(self, _: f64) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_str<E>(self, _: &str) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(T::default())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_map(map)
    }
}

macro_rules! lenient_deserialize {
    ($($t:ty),*) => {$(
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                d.deserialize_any(LenientVisitor(std::marker::PhantomData))
            }
        }
    )*};
}
lenient_deserialize!(Count, WireDetails);

/// The top-level fields of an SSE event the meter reads, left unparsed until needed (a
/// field of an unexpected shape then spoils only itself). Everything else is skipped.
#[derive(serde::Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

impl<'a> WireEvent<'a> {
    fn usage(&self) -> Option<WireUsage> {
        serde_json::from_str(self.usage?.get()).ok()
    }

    /// `type`, as its JSON text (`"message_start"`, quotes included).
    fn kind(&self) -> Option<&'a str> {
        self.kind.map(RawValue::get)
    }

    /// `message.usage` (Anthropic's `message_start`).
    fn message_usage(&self) -> Option<WireUsage> {
        #[derive(serde::Deserialize)]
        struct Message {
            usage: Option<WireUsage>,
        }
        serde_json::from_str::<Message>(self.message?.get())
            .ok()?
            .usage
    }
}

impl WireUsage {
    fn usage(&self, dialect: Dialect) -> Option<Usage> {
        match dialect {
            Dialect::OpenAi => Some(Usage {
                input_tokens: self.prompt_tokens.0.unwrap_or(0),
                output_tokens: self.completion_tokens.0.unwrap_or(0),
                cached_tokens: self.prompt_tokens_details.cached_tokens.0.unwrap_or(0),
                reasoning_tokens: self
                    .completion_tokens_details
                    .reasoning_tokens
                    .0
                    .unwrap_or(0),
            }),
            Dialect::Anthropic => {
                let c = AnthropicCounts {
                    input: self.input_tokens.0,
                    cache_creation: self.cache_creation_input_tokens.0,
                    cache_read: self.cache_read_input_tokens.0,
                    output: self.output_tokens.0,
                };
                c.seen().then(|| c.usage())
            }
        }
    }
}

/// The `usage` object of a whole JSON answer, found without parsing the rest of it (the
/// content before it can be long). Both APIs put `usage` at the top level after the
/// content, so the last `"usage":` key in the body is the answer's own; a key that only
/// looks like one (inside a string its quotes are escaped) does not parse and is skipped.
fn body_usage(body: &[u8], dialect: Dialect) -> Option<Usage> {
    static USAGE_REV: LazyLock<FinderRev> = LazyLock::new(|| FinderRev::new(USAGE_KEY));
    for at in USAGE_REV.rfind_iter(body) {
        if at > 0 && body[at - 1] == b'\\' {
            continue;
        }
        let rest = body[at + 7..].trim_ascii_start();
        let Some(value) = rest.strip_prefix(b":") else {
            continue;
        };
        let mut de = serde_json::Deserializer::from_slice(value);
        if let Ok(wire) = <WireUsage as serde::Deserialize>::deserialize(&mut de) {
            return wire.usage(dialect);
        }
    }
    None
}

#[derive(Debug)]
pub struct JsonMeter {
    dialect: Dialect,
    chunks: Vec<Bytes>,
    len: usize,
    overflow: bool,
}

impl JsonMeter {
    fn feed(&mut self, chunk: &Bytes) {
        self.len += chunk.len();
        if self.len > MAX_JSON_BODY {
            self.overflow = true;
            self.chunks.clear();
        } else if !self.overflow {
            self.chunks.push(chunk.clone());
        }
    }

    fn finish(&mut self) -> Metered {
        let mut out = Metered {
            bytes: self.len as u64,
            complete: !self.overflow,
            ..Metered::default()
        };
        if self.overflow {
            return out;
        }
        let body: Bytes = match self.chunks.len() {
            1 => self.chunks[0].clone(),
            _ => self.chunks.concat().into(),
        };
        self.chunks.clear();
        let whole = body.trim_ascii_end();
        out.complete = whole.first() == Some(&b'{') && whole.last() == Some(&b'}');
        out.upstream_error = ERROR.find(whole).is_some();
        out.usage = body_usage(whole, self.dialect);
        out
    }
}

#[derive(Debug)]
pub struct SseMeter {
    dialect: Dialect,
    lines: crate::sse::Lines,
    openai: Option<Usage>,
    anthropic: AnthropicCounts,
    out: Metered,
}

impl SseMeter {
    fn new(dialect: Dialect) -> SseMeter {
        SseMeter {
            dialect,
            lines: Default::default(),
            openai: None,
            anthropic: AnthropicCounts::default(),
            out: Metered::default(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.out.bytes += chunk.len() as u64;
        self.read_lines(chunk);
    }
}

impl LineReader for SseMeter {
    fn lines(&mut self) -> &mut crate::sse::Lines {
        &mut self.lines
    }

    fn line(&mut self, line: &[u8]) {
        let Some(payload) = crate::sse::data(line) else {
            return;
        };
        if payload == b"[DONE]" {
            self.out.complete = true;
            return;
        }
        self.out.events += 1;
        // Only events that name usage, an error or (Anthropic) the stream's end are parsed.
        if !WANTED.is_in(payload) {
            return;
        }
        // Only the fields read below are parsed; the rest (choices, content) is skipped.
        let Ok(event) = serde_json::from_slice::<WireEvent>(payload) else {
            return;
        };
        if event.error.is_some() {
            self.out.upstream_error = true;
        }
        match self.dialect {
            Dialect::OpenAi => {
                if let Some(u) = event.usage() {
                    self.openai = u.usage(Dialect::OpenAi);
                }
            }
            Dialect::Anthropic => match event.kind() {
                Some("\"message_start\"") => {
                    if let Some(u) = event.message_usage() {
                        self.anthropic.merge(&u);
                    }
                }
                Some("\"message_delta\"") => {
                    if let Some(u) = event.usage() {
                        self.anthropic.merge(&u);
                    }
                }
                Some("\"message_stop\"") => self.out.complete = true,
                _ => {}
            },
        }
    }
}

impl SseMeter {
    fn finish(&mut self) -> Metered {
        // An unterminated last line counts only if it is whole (a cut stream leaves half
        // an event behind, which is not an event).
        let line = self.lines.take_rest();
        if let Some(p) = crate::sse::data(&line) {
            if p == b"[DONE]" || serde_json::from_slice::<serde::de::IgnoredAny>(p).is_ok() {
                self.line(&line);
            }
        }
        let mut out = self.out;
        out.usage = match self.dialect {
            Dialect::OpenAi => self.openai,
            Dialect::Anthropic => self.anthropic.seen().then(|| self.anthropic.usage()),
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZAI_STREAM: &str = concat!(
        "data: {\"id\":\"1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n",
        "data: {\"id\":\"1\",\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],",
        "\"usage\":{\"prompt_tokens\":15,\"completion_tokens\":734,\"total_tokens\":749,",
        "\"prompt_tokens_details\":{\"cached_tokens\":14},\"completion_tokens_details\":{\"reasoning_tokens\":708}}}\n\n",
        "data: [DONE]\n\n"
    );

    fn feed_split(meter: &mut Meter, text: &str, every: usize) {
        for piece in text.as_bytes().chunks(every) {
            meter.feed(&Bytes::copy_from_slice(piece));
        }
    }

    #[test]
    fn both_word_searchers_find_the_same_events() {
        let words = WANTED_WORDS;
        let (fast, general) = (Words::new(&words), Words::automaton(&words));
        let filler = "{\"choices\":[{\"delta\":{\"content\":\"usage error message_sto\"}}]}";
        let mut cases = vec![String::new(), "\"usage".into(), filler.to_string()];
        for word in ["\"usage\"", "\"error\"", "message_stop"] {
            for at in [0, 1, 17, filler.len() - 1] {
                let mut text = filler.to_string();
                text.insert_str(at, word);
                cases.push(text);
            }
            cases.push(word.to_string());
        }
        for text in &cases {
            let expected = words
                .iter()
                .any(|w| text.as_bytes().windows(w.len()).any(|x| x == *w));
            assert_eq!(fast.is_in(text.as_bytes()), expected, "{text}");
            assert_eq!(general.is_in(text.as_bytes()), expected, "{text}");
        }
    }

    #[test]
    fn zai_stream_usage_survives_any_read_split() {
        for every in [1, 2, 7, 64, 4096] {
            let mut m = Meter::new(Dialect::OpenAi, true);
            feed_split(&mut m, ZAI_STREAM, every);
            let got = m.finish();
            assert!(got.complete, "split {every}");
            assert_eq!(got.events, 2);
            assert_eq!(
                got.usage,
                Some(Usage {
                    input_tokens: 15,
                    output_tokens: 734,
                    cached_tokens: 14,
                    reasoning_tokens: 708
                })
            );
        }
    }

    #[test]
    fn anthropic_stream_normalises_cached_input() {
        let text = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":16,\"cache_creation_input_tokens\":4,\"cache_read_input_tokens\":1031,\"output_tokens\":5}}   }\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: message_delta\r\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":100}}\r\n\r\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"      }\n\n"
        );
        let mut m = Meter::new(Dialect::Anthropic, true);
        feed_split(&mut m, text, 5);
        let got = m.finish();
        assert!(got.complete);
        assert_eq!(
            got.usage,
            Some(Usage {
                input_tokens: 1051,
                output_tokens: 100,
                cached_tokens: 1031,
                reasoning_tokens: 0
            })
        );
    }

    #[test]
    fn cut_stream_is_incomplete_and_counts_events() {
        let mut m = Meter::new(Dialect::OpenAi, true);
        feed_split(&mut m, &ZAI_STREAM[..120], 10);
        let got = m.finish();
        assert!(!got.complete);
        assert_eq!(got.usage, None);
        assert_eq!(got.events, 1);
    }

    #[test]
    fn a_field_of_an_odd_shape_does_not_hide_the_usage() {
        let mut m = Meter::new(Dialect::OpenAi, true);
        feed_split(
            &mut m,
            concat!(
                "data: {\"message\":\"not an object\",\"type\":7,\"error\":null,",
                "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"
            ),
            4,
        );
        let got = m.finish();
        assert!(!got.upstream_error, "`error: null` is not an error");
        assert_eq!(
            got.usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 4,
                cached_tokens: 0,
                reasoning_tokens: 0
            })
        );
    }

    #[test]
    fn counts_of_odd_shapes_read_as_absent_and_spoil_nothing_else() {
        let body = concat!(
            "{\"choices\":[],\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":7,",
            "\"total_tokens\":{\"a\":[1,{\"b\":null}]},\"prompt_tokens_details\":[3],",
            "\"completion_tokens_details\":{\"x\":{\"reasoning_tokens\":99},",
            "\"reasoning_tokens\":5,\"y\":\"z\"}}}"
        );
        let mut m = Meter::new(Dialect::OpenAi, false);
        m.feed(&Bytes::from_static(body.as_bytes()));
        assert_eq!(
            m.finish().usage,
            Some(Usage {
                input_tokens: 0,
                output_tokens: 7,
                cached_tokens: 0,
                reasoning_tokens: 5
            })
        );
        for (count, read) in [
            ("12", Some(12)),
            ("2.5", None),
            ("1e3", None),
            ("\"4\"", None),
            ("null", None),
            ("true", None),
            ("18446744073709551616", None),
        ] {
            let got: Count = serde_json::from_str(count).expect("any JSON value is read");
            assert_eq!(got.0, read, "{count}");
        }
        let details: WireDetails =
            serde_json::from_str(r#"{"cached_tokens":3,"cached_tokens":4}"#).expect("read");
        assert_eq!(
            details.cached_tokens.0,
            Some(4),
            "the last of a repeated field wins"
        );
    }

    #[test]
    fn stream_error_event_is_flagged() {
        let mut m = Meter::new(Dialect::OpenAi, true);
        feed_split(
            &mut m,
            "data: {\"error\":{\"code\":\"1234\",\"message\":\"x\"}}\n\n",
            3,
        );
        assert!(m.finish().upstream_error);
    }

    #[test]
    fn json_body_usage_both_dialects() {
        let mut m = Meter::new(Dialect::OpenAi, false);
        feed_split(
            &mut m,
            "{\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":2}}}",
            9,
        );
        let u = m.finish().usage.expect("usage");
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cached_tokens),
            (10, 3, 2)
        );

        let mut m = Meter::new(Dialect::Anthropic, false);
        feed_split(
            &mut m,
            "{\"type\":\"message\",\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":3,\"output_tokens\":2}}",
            4,
        );
        let u = m.finish().usage.expect("usage");
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cached_tokens),
            (10, 2, 3)
        );
    }

    #[test]
    fn garbage_json_is_not_usage() {
        let mut m = Meter::new(Dialect::OpenAi, false);
        m.feed(&Bytes::from_static(b"<html>oops"));
        let got = m.finish();
        assert_eq!(got.usage, None);
        assert!(!got.complete);
    }

    #[test]
    fn json_usage_is_the_last_top_level_key_not_a_lookalike() {
        // Content that mentions "usage" (escaped inside a string), a tool input with a
        // `usage` key, then the answer's own usage.
        let body = concat!(
            "{\"content\":[{\"type\":\"text\",\"text\":\"the \\\"usage\\\": 5 field\"},",
            "{\"type\":\"tool_use\",\"input\":{\"usage\":{\"input_tokens\":999}}}],",
            "\"usage\" :\n {\"input_tokens\":7,\"output_tokens\":\"x\",\"extra\":[1,{\"a\":null}]}}  \n"
        );
        let mut m = Meter::new(Dialect::Anthropic, false);
        feed_split(&mut m, body, 11);
        let got = m.finish();
        assert!(got.complete);
        let u = got.usage.expect("usage");
        // A count that is not a number reads as absent, not as a failed body.
        assert_eq!((u.input_tokens, u.output_tokens), (7, 0));

        let mut m = Meter::new(Dialect::OpenAi, false);
        m.feed(&Bytes::from_static(
            b"{\"choices\":[{\"message\":{\"content\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":1}\"}}]}",
        ));
        assert_eq!(m.finish().usage, None, "only escaped lookalikes: no usage");
    }
}
