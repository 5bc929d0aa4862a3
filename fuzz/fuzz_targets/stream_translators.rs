//! Arbitrary upstream bytes, cut into arbitrary chunks, into both stream translators:
//! they must never panic, and the client stream must end in a final or error event.
#![no_main]

use glmgate::translate::{a2o, o2a, ResponseTranslator};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the chunk size, the rest is the upstream body.
    let Some((&size, body)) = data.split_first() else {
        return;
    };
    let size = usize::from(size).max(1);

    let mut a = a2o::StreamTranslator::new(a2o::Context::default());
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(&a.feed(chunk));
    }
    out.extend_from_slice(&a.finish());
    let text = String::from_utf8_lossy(&out);
    let last = text.lines().filter(|l| l.starts_with("event: ")).last();
    assert!(
        matches!(last, Some("event: message_stop") | Some("event: error")),
        "{text}"
    );

    let mut o = o2a::StreamTranslator::new(o2a::Context {
        include_usage: true,
        ..o2a::Context::default()
    });
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(&o.feed(chunk));
    }
    out.extend_from_slice(&o.finish());
    let text = String::from_utf8_lossy(&out);
    let last = text.lines().filter(|l| !l.is_empty()).last().unwrap_or_default();
    assert!(last == "data: [DONE]" || last.starts_with("data: {\"error\""), "{text}");
});
