//! Logs: text or JSON lines on stderr, with RFC 3339 timestamps.
//!
//! A serving thread does not write each `info` or `debug` line as it is made: lines gather
//! in a buffer of that thread and go out in one `write` once a second, when 64 KB are
//! waiting, or with the next warning or error, which is written at once. A request so pays
//! no system call for its log line, even on a lightly loaded gateway. Other threads write
//! their lines at once. A line is never split; lines of different serving threads can come
//! out of time order by up to a second.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};

use crate::config::LogFormat;

/// A serving thread's buffer holds this much; a line that would overflow it writes out what
/// is waiting first, so the buffer never grows past its first allocation.
const CAPACITY: usize = 64 * 1024;

thread_local! {
    /// `Some` on serving threads (see [`buffer_this_thread`]).
    static BUFFER: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// From now on, lines logged on this thread are buffered until [`flush`].
pub fn buffer_this_thread() {
    BUFFER.with_borrow_mut(|b| *b = Some(Vec::with_capacity(CAPACITY)));
}

/// Runs `f` on this thread's buffer; `None` on a thread without one.
fn with_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
    BUFFER
        .try_with(|cell| cell.try_borrow_mut().ok()?.as_mut().map(f))
        .ok()
        .flatten()
}

/// Writes the lines this thread has buffered, if any.
pub fn flush() {
    with_buffer(|buf| {
        if !buf.is_empty() {
            write_out(buf);
        }
    });
}

/// Writes buffered lines to stderr and empties the buffer. A failed write (stderr closed)
/// drops them: there is nowhere else to report it.
fn write_out(buf: &mut Vec<u8>) {
    let _ = std::io::stderr().lock().write_all(buf);
    buf.clear();
}

/// stderr, through this thread's buffer where it has one.
struct Stderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line {
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// One formatted line (the formatter hands each over with a single `write_all`). An urgent
/// one (a warning or an error) goes out at once, after the lines waiting before it.
struct Line {
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let buffered = with_buffer(|buf| {
            if buf.len() + line.len() > CAPACITY {
                write_out(buf);
            }
            buf.extend_from_slice(line);
            if self.urgent {
                write_out(buf);
            }
        });
        if buffered.is_none() {
            std::io::stderr().lock().write_all(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GLMGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal: escape codes in log files cost time and readability.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_timer(Timestamp)
        .with_writer(Stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.fmt_fields(TextFields).try_init(),
    };
}

/// Log timestamps in RFC 3339 UTC with microseconds (`2026-11-23T19:33:11.623339Z`). The
/// date and time up to the second are formatted once a second per thread, and only the
/// microseconds per line.
struct Timestamp;

impl tracing_subscriber::fmt::time::FormatTime for Timestamp {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        thread_local! {
            static SECOND: std::cell::RefCell<(u64, String)> =
                const { std::cell::RefCell::new((u64::MAX, String::new())) };
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, micros) = (now.as_secs(), now.subsec_micros());
        SECOND.with_borrow_mut(|(cached, prefix)| {
            if *cached != secs {
                *cached = secs;
                *prefix = chrono::DateTime::from_timestamp(secs as i64, 0)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H:%M:%S.")
                    .to_string();
            }
            w.write_str(prefix)?;
            let digits = itoa::Buffer::new().format(micros).len();
            for _ in digits..6 {
                w.write_char('0')?;
            }
            w.write_str(itoa::Buffer::new().format(micros))?;
            w.write_char('Z')
        })
    }
}

/// Fields as `name=value`, space-separated, the message first and bare. Written directly:
/// the default field formatter styles every name and `=` (even with colour off), and a
/// formatter built from closures still sends every number through `format_args!`; the
/// per-request log line has a dozen fields, most of them numbers.
struct TextFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = TextVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'a, 'w> {
    writer: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl TextVisitor<'_, '_> {
    fn field(
        &mut self,
        field: &tracing::field::Field,
        value: impl FnOnce(&mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result,
    ) {
        if self.result.is_err() {
            return;
        }
        let w = &mut *self.writer;
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                w.write_char(' ')?;
            }
            if field.name() != "message" {
                w.write_str(field.name())?;
                w.write_char('=')?;
            }
            value(w)
        })();
    }
}

/// A value written as it is when it is one plain token, quoted (Rust string syntax)
/// otherwise, so `name=value` pairs stay unambiguous.
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\')
}

impl tracing::field::Visit for TextVisitor<'_, '_> {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if is_plain(value) {
            self.field(field, |w| w.write_str(value));
        } else {
            self.field(field, |w| write!(w, "{value:?}"));
        }
    }

    /// Also `%` (Display) values and the message. Control characters in them are escaped:
    /// a value can come from a client (a model name, an error quoting the request), and a
    /// raw newline in it would let the client forge a log line.
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field, |w| {
            std::fmt::Write::write_fmt(&mut NoControl(w), format_args!("{value:?}"))
        });
    }
}

/// Writes through to `0`, with control characters escaped as Rust does in strings.
struct NoControl<W>(W);

impl<W: std::fmt::Write> std::fmt::Write for NoControl<W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(self.0, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_serving_thread_keeps_lines_until_flushed_or_a_warning_within_one_allocation() {
        std::thread::spawn(|| {
            let mut line = super::Line { urgent: false };
            assert_eq!(
                super::with_buffer(|b| b.len()),
                None,
                "not buffered by default"
            );
            super::buffer_this_thread();
            line.write_all(b"first line\n").expect("write");
            assert_eq!(
                super::with_buffer(|b| b.clone()),
                Some(b"first line\n".to_vec())
            );
            super::flush();
            assert_eq!(super::with_buffer(|b| b.len()), Some(0));
            let long = [b'x'; 999];
            for _ in 0..200 {
                line.write_all(&long).expect("write");
            }
            let (len, capacity) = super::with_buffer(|b| (b.len(), b.capacity())).expect("buffer");
            assert!(
                len <= super::CAPACITY && len % 999 == 0,
                "{len}: whole lines only"
            );
            assert_eq!(
                capacity,
                super::CAPACITY,
                "written out before it would grow"
            );
            // A warning or an error takes what waits out with it, at once.
            super::Line { urgent: true }
                .write_all(b"a warning\n")
                .expect("write");
            assert_eq!(super::with_buffer(|b| b.len()), Some(0));
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn text_log_fields_are_name_value_pairs() {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .without_time()
            .fmt_fields(super::TextFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let id = "abc";
            tracing::info!(
                request_id = %id,
                tokens = 5u64,
                delta = -3i64,
                stream = true,
                name = "a b",
                model = "glm-4.7",
                quote = "say \"hi\"",
                empty = "",
                long = "x".repeat(200).as_str(),
                "request done"
            );
            let model = "m\nforged=line\r";
            tracing::info!(model = %model, "line\ttwo");
        });
        let out = String::from_utf8(buf.lock().expect("lock").clone()).expect("utf-8");
        let long = "x".repeat(200);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].ends_with(&format!(
                "request done request_id=abc tokens=5 delta=-3 stream=true name=\"a b\" \
                 model=glm-4.7 quote=\"say \\\"hi\\\"\" empty=\"\" long={long}"
            )),
            "{out}"
        );
        assert!(
            lines[1].ends_with("line\\ttwo model=m\\nforged=line\\r"),
            "control characters escaped: {out}"
        );
    }

    #[test]
    fn log_timestamps_are_rfc3339_with_microseconds() {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut out = String::new();
        let before = chrono::Utc::now();
        super::Timestamp
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut out))
            .expect("format");
        let parsed = chrono::DateTime::parse_from_rfc3339(&out).expect(&out);
        assert_eq!(out.len(), "2026-11-23T19:33:11.623339Z".len(), "{out}");
        assert!(out.ends_with('Z'));
        let lag = parsed.signed_duration_since(before).num_milliseconds();
        assert!((0..60_000).contains(&lag), "{out} against {before}");
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
