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
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(Timestamp)
        .with_writer(Stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text if ansi => builder.fmt_fields(TextFields).try_init(),
        LogFormat::Text => builder
            .fmt_fields(TextFields)
            .event_format(TextLine::new(Timestamp))
            .try_init(),
    };
}

/// Text lines without colour, the same bytes as tracing's default format, built in one
/// buffer and handed over in one write. The default format writes a line in some sixty
/// small pieces, each through a `dyn Write` and most through `format_args!`: two thirds of
/// what the per-request log line cost. Only the gateway's own events outside spans (the
/// request line among them) take this path; anything else is left to the default format.
struct TextLine<T> {
    timer: T,
    fallback: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, T>,
}

impl<T: tracing_subscriber::fmt::time::FormatTime + Clone> TextLine<T> {
    fn new(timer: T) -> TextLine<T> {
        TextLine {
            fallback: tracing_subscriber::fmt::format::Format::default()
                .with_timer(timer.clone())
                .with_ansi(false),
            timer,
        }
    }
}

impl<S, N, T> tracing_subscriber::fmt::FormatEvent<S, N> for TextLine<T>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    T: tracing_subscriber::fmt::time::FormatTime,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let meta = event.metadata();
        if meta.target().starts_with(env!("CARGO_CRATE_NAME")) && ctx.event_scope().is_none() {
            // Busy only if formatting this line logged another: that one takes the
            // default path.
            let done = LINE.try_with(|line| {
                let mut line = line.try_borrow_mut().ok()?;
                line.clear();
                let mut w = tracing_subscriber::fmt::format::Writer::new(&mut *line);
                if self.timer.format_time(&mut w).is_err() {
                    line.push_str("<unknown time>");
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(match *meta.level() {
                    tracing::Level::TRACE => "TRACE ",
                    tracing::Level::DEBUG => "DEBUG ",
                    tracing::Level::INFO => " INFO ",
                    tracing::Level::WARN => " WARN ",
                    tracing::Level::ERROR => "ERROR ",
                });
                line.push_str(meta.target());
                line.push_str(": ");
                event.record(&mut TextVisitor {
                    out: &mut line,
                    first: true,
                });
                line.push('\n');
                #[cfg(test)]
                tests::FAST_LINES.with(|n| n.set(n.get() + 1));
                Some(writer.write_str(&line))
            });
            if let Ok(Some(done)) = done {
                return done;
            }
        }
        self.fallback.format_event(ctx, writer, event)
    }
}

/// Log timestamps in RFC 3339 UTC with microseconds (`2026-11-23T19:33:11.623339Z`). The
/// date and time up to the second are formatted once a second per thread, and only the
/// microseconds per line.
#[derive(Clone)]
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
        let mut out = String::new();
        fields.record(&mut TextVisitor {
            out: &mut out,
            first: true,
        });
        writer.write_str(&out)
    }
}

/// Writes fields into a `String`: no `dyn Write` per piece, and nothing can fail.
struct TextVisitor<'a> {
    out: &'a mut String,
    first: bool,
}

impl TextVisitor<'_> {
    fn field(&mut self, field: &tracing::field::Field, value: impl FnOnce(&mut String)) {
        if !std::mem::take(&mut self.first) {
            self.out.push(' ');
        }
        if field.name() != "message" {
            self.out.push_str(field.name());
            self.out.push('=');
        }
        value(self.out)
    }
}

/// A value written as it is when it is one plain token, quoted (Rust string syntax)
/// otherwise, so `name=value` pairs stay unambiguous.
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\')
}

impl tracing::field::Visit for TextVisitor<'_> {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.field(field, |w| w.push_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.field(field, |w| w.push_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.field(field, |w| w.push_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if is_plain(value) {
            self.field(field, |w| w.push_str(value));
        } else {
            self.field(field, |w| {
                let _ = std::fmt::Write::write_fmt(w, format_args!("{value:?}"));
            });
        }
    }

    /// Also `%` (Display) values and the message. Control characters in them are escaped:
    /// a value can come from a client (a model name, an error quoting the request), and a
    /// raw newline in it would let the client forge a log line.
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field, |w| {
            let _ = std::fmt::Write::write_fmt(&mut NoControl(w), format_args!("{value:?}"));
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

    thread_local! {
        /// Lines this thread formatted on `TextLine`'s own path.
        pub(super) static FAST_LINES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Logs the same events under `subscriber` each time.
    fn log_sample(subscriber: impl tracing::Subscriber + Send + Sync + 'static) {
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                request_id = %"abc",
                key_id = 7i64,
                tokens = 5u64,
                stream = true,
                name = "a b",
                quote = "say \"hi\"",
                empty = "",
                account = Some("p/a"),
                none = None::<u64>,
                "request"
            );
            tracing::info!("bare message");
            tracing::info!(only = 1u64);
            tracing::warn!(error = %"upstream said: no\nforged=1", "trouble");
            tracing::error!(status = 502u16, "failed");
            tracing::debug!(x = 1.5f64, "debug");
            tracing::trace!("trace");
            tracing::info!(target: "other_crate", n = 1u64, "not ours");
            tracing::info_span!("span", a = 1u64)
                .in_scope(|| tracing::info!(b = 2u64, "in a span"));
        });
    }

    #[test]
    fn text_lines_are_the_default_format_without_colour() {
        let reference = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = reference.clone();
        log_sample(
            tracing_subscriber::fmt()
                .with_writer(move || Sink(sink.clone()))
                .with_ansi(false)
                .without_time()
                .with_max_level(tracing::Level::TRACE)
                .fmt_fields(super::TextFields)
                .finish(),
        );
        let ours = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = ours.clone();
        FAST_LINES.with(|n| n.set(0));
        log_sample(
            tracing_subscriber::fmt()
                .with_writer(move || Sink(sink.clone()))
                .with_max_level(tracing::Level::TRACE)
                .fmt_fields(super::TextFields)
                .event_format(super::TextLine {
                    timer: (),
                    fallback: tracing_subscriber::fmt::format::Format::default()
                        .without_time()
                        .with_ansi(false),
                })
                .finish(),
        );
        let reference = String::from_utf8(reference.lock().expect("lock").clone()).expect("utf-8");
        let ours = String::from_utf8(ours.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(ours, reference);
        assert_eq!(reference.lines().count(), 9, "{reference}");
        // All but the other crate's event and the one in a span took the direct path.
        assert_eq!(FAST_LINES.with(|n| n.get()), 7);
        // And with a timestamp, one space after it, as the default format has.
        let line = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = line.clone();
        tracing::subscriber::with_default(
            tracing_subscriber::fmt()
                .with_writer(move || Sink(sink.clone()))
                .fmt_fields(super::TextFields)
                .event_format(super::TextLine::new(super::Timestamp))
                .finish(),
            || tracing::info!(n = 1u64, "timed"),
        );
        let line = String::from_utf8(line.lock().expect("lock").clone()).expect("utf-8");
        let (time, rest) = line.split_once(' ').expect("a space");
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{line}");
        assert_eq!(rest, " INFO glmgate::logging::tests: timed n=1\n");
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
