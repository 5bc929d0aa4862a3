//! Server-sent events, read line by line as chunks arrive: a line cut between two chunks
//! is carried over to the next. Used by the usage meter and by every translator.

/// Splits a byte stream into lines (without `\n` or a trailing `\r`).
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Calls `f` with each line completed by `chunk`.
    pub fn feed(&mut self, chunk: &[u8], mut f: impl FnMut(&[u8])) {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.partial.extend_from_slice(rest);
                return;
            };
            self.partial.extend_from_slice(&rest[..i]);
            let line = std::mem::take(&mut self.partial);
            f(trim_cr(&line));
            rest = &rest[i + 1..];
        }
        while let Some(i) = memchr::memchr(b'\n', rest) {
            f(trim_cr(&rest[..i]));
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    /// The unterminated last line, if any (the stream ended without its `\n`).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }
}

/// Something that reads an SSE body line by line (the meter, the translators, the reasoning
/// filter): it keeps a [`Lines`] and says what to do with each line.
pub trait LineReader {
    fn lines(&mut self) -> &mut Lines;
    fn line(&mut self, line: &[u8]);

    /// Hands each line completed by `chunk` to [`LineReader::line`].
    fn read_lines(&mut self, chunk: &[u8]) {
        // The splitter is taken out for the call, so `line` may borrow all of `self`.
        let mut lines = std::mem::take(self.lines());
        lines.feed(chunk, |l| self.line(l));
        *self.lines() = lines;
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The payload of a `data:` line, trimmed; `None` for any other line.
pub fn data(line: &[u8]) -> Option<&[u8]> {
    line.strip_prefix(b"data:").map(<[u8]>::trim_ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cut_anywhere_come_out_whole() {
        let text = b"data: {\"a\":1}\r\n\nevent: x\ndata: [DONE]\n";
        for size in 1..text.len() {
            let mut lines = Lines::default();
            let mut got = Vec::new();
            for chunk in text.chunks(size) {
                lines.feed(chunk, |l| got.push(l.to_vec()));
            }
            assert_eq!(
                got,
                [&b"data: {\"a\":1}"[..], b"", b"event: x", b"data: [DONE]"],
                "{size}"
            );
        }
        assert_eq!(data(b"data:  [DONE] "), Some(&b"[DONE]"[..]));
        assert_eq!(data(b"event: ping"), None);
    }
}
