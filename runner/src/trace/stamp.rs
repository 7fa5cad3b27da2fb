//! `FF_TIMESTAMPS`: every line of the log prefixed with when it started and which stream wrote
//! it, in gitlab-runner's format (its `common/buildlogger/internal/timestamper`), which GitLab
//! (17.1 and later) parses to show a time beside each line (docs/job-log.md, "Timestamps"):
//!
//! ```text
//! 2026-12-03T05:28:13.123456Z 01O hello
//! ^ UTC, microseconds           ^^ stream id (2 hex digits)
//!                                 ^ O (stdout) or E (stderr)
//!                                  ^ ' ' a new line, '+' the continuation of the line before
//! ```
//!
//! A line is buffered until its newline (at most [`LINE_BUFFER`] bytes: beyond that it is
//! written out and ends with a newline, the rest comes as a `+` line). A write with a carriage
//! return but no newline (progress bars, section markers) is written out at once, with a newline
//! added, and what follows is a `+` line. Each stream has its own partial line, so streams never
//! mix inside a line.

/// One stream of the log: its id and whether it is stdout or stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    id: u8,
    kind: u8,
}

impl Stream {
    /// ferry's own lines (gitlab-runner's `StreamExecutorLevel`).
    pub const EXECUTOR: Stream = Stream { id: 0, kind: b'O' };
    /// The output of the job's script steps (`StreamWorkLevel`).
    pub const WORK: Stream = Stream { id: 1, kind: b'O' };
    /// Service containers' output under `CI_DEBUG_SERVICES` (`StreamStartingServiceLevel`).
    pub const SERVICES: Stream = Stream { id: 15, kind: b'O' };
}

/// Bytes of a line without a newline kept before it is written out anyway (gitlab-runner's
/// `bufSize`).
pub(crate) const LINE_BUFFER: usize = 8 * 1024;

/// `2026-12-03T05:28:13.123456Z ` plus the 4 bytes of stream id, type and flag.
pub(crate) const HEADER_LEN: usize = 28 + 4;

#[derive(Debug, Default)]
struct State {
    /// The current partial line, its header included.
    buf: Vec<u8>,
    /// The next line continues the previous one (`+`).
    continuation: bool,
}

/// The per-stream line state of a timestamped log.
#[derive(Debug)]
pub(crate) struct Stamper {
    streams: Vec<(Stream, State)>,
    clock: fn() -> chrono::DateTime<chrono::Utc>,
}

impl Stamper {
    pub(crate) fn new() -> Stamper {
        Stamper::with_clock(chrono::Utc::now)
    }

    pub(crate) fn with_clock(clock: fn() -> chrono::DateTime<chrono::Utc>) -> Stamper {
        Stamper {
            streams: Vec::new(),
            clock,
        }
    }

    /// Appends to `out` what the log gets for `p` written on `stream`.
    pub(crate) fn push(&mut self, stream: Stream, p: &[u8], out: &mut Vec<u8>) {
        let clock = self.clock;
        let state = match self.streams.iter().position(|(s, _)| *s == stream) {
            Some(i) => &mut self.streams[i].1,
            None => {
                self.streams.push((stream, State::default()));
                &mut self.streams.last_mut().expect("just pushed").1
            }
        };
        let mut n = write_lines(state, stream, clock, p, out);
        n += write_carriage_returns(state, stream, clock, &p[n..], out);
        buffer(state, stream, clock, &p[n..], out);
    }

    /// Writes out the partial line of `stream`, ended with a newline (the end of its use).
    pub(crate) fn end_stream(&mut self, stream: Stream, out: &mut Vec<u8>) {
        if let Some((_, state)) = self.streams.iter_mut().find(|(s, _)| *s == stream) {
            if !state.buf.is_empty() {
                out.append(&mut state.buf);
                out.push(b'\n');
            }
            state.continuation = false;
        }
    }

    /// Some stream holds a partial line.
    pub(crate) fn holds_partial_line(&self) -> bool {
        self.streams.iter().any(|(_, s)| !s.buf.is_empty())
    }

    /// Writes out every partial line, each ended with a newline (the end of the log).
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        for (_, state) in &mut self.streams {
            if !state.buf.is_empty() {
                out.append(&mut state.buf);
                out.push(b'\n');
            }
        }
    }
}

fn header(
    state: &mut State,
    stream: Stream,
    clock: fn() -> chrono::DateTime<chrono::Utc>,
    out: &mut Vec<u8>,
) {
    let time = clock().format("%Y-%m-%dT%H:%M:%S%.6fZ ").to_string();
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(format!("{:02x}", stream.id).as_bytes());
    out.push(stream.kind);
    out.push(if state.continuation { b'+' } else { b' ' });
    state.continuation = false;
}

/// Every complete line of `p`; returns how many bytes it took.
fn write_lines(
    state: &mut State,
    stream: Stream,
    clock: fn() -> chrono::DateTime<chrono::Utc>,
    p: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    let Some(first) = p.iter().position(|&b| b == b'\n') else {
        return 0;
    };
    let mut n = 0;
    if !state.buf.is_empty() {
        out.append(&mut state.buf);
        out.extend_from_slice(&p[..=first]);
        n = first + 1;
    }
    while let Some(idx) = p[n..].iter().position(|&b| b == b'\n') {
        header(state, stream, clock, out);
        out.extend_from_slice(&p[n..n + idx + 1]);
        n += idx + 1;
    }
    n
}

/// A rest with a carriage return goes out at once, newline added; the next line continues it.
fn write_carriage_returns(
    state: &mut State,
    stream: Stream,
    clock: fn() -> chrono::DateTime<chrono::Utc>,
    p: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    if !p.contains(&b'\r') {
        return 0;
    }
    if state.buf.is_empty() {
        header(state, stream, clock, out);
    } else {
        out.append(&mut state.buf);
    }
    out.extend_from_slice(p);
    out.push(b'\n');
    state.continuation = true;
    p.len()
}

/// A rest without newline waits for the rest of its line, up to [`LINE_BUFFER`] bytes.
fn buffer(
    state: &mut State,
    stream: Stream,
    clock: fn() -> chrono::DateTime<chrono::Utc>,
    p: &[u8],
    out: &mut Vec<u8>,
) {
    if p.is_empty() {
        return;
    }
    if p.len() + state.buf.len() > LINE_BUFFER {
        if state.buf.is_empty() {
            header(state, stream, clock, out);
        }
        out.append(&mut state.buf);
        state.continuation = true;
        out.extend_from_slice(p);
        out.push(b'\n');
        return;
    }
    if state.buf.is_empty() {
        let mut head = Vec::with_capacity(HEADER_LEN);
        header(state, stream, clock, &mut head);
        state.buf = head;
    }
    state.buf.extend_from_slice(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn fixed() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc
            .with_ymd_and_hms(2026, 12, 3, 5, 28, 13)
            .unwrap()
            .checked_add_signed(chrono::TimeDelta::nanoseconds(123_456_789))
            .unwrap()
    }

    fn stamp(writes: &[(Stream, &str)]) -> String {
        let mut s = Stamper::with_clock(fixed);
        let mut out = Vec::new();
        for (stream, w) in writes {
            s.push(*stream, w.as_bytes(), &mut out);
        }
        s.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    const T: &str = "2026-12-03T05:28:13.123456Z";

    #[test]
    fn each_line_gets_the_time_in_microseconds_the_stream_and_a_flag() {
        assert_eq!(
            stamp(&[(Stream::WORK, "one\ntwo\n")]),
            format!("{T} 01O one\n{T} 01O two\n")
        );
        assert_eq!(
            stamp(&[(Stream::EXECUTOR, "x\n"), (Stream::SERVICES, "y\n")]),
            format!("{T} 00O x\n{T} 0fO y\n")
        );
        assert_eq!(HEADER_LEN, format!("{T} 00O ").len());
    }

    #[test]
    fn a_line_split_across_writes_gets_one_header() {
        assert_eq!(
            stamp(&[
                (Stream::WORK, "hel"),
                (Stream::WORK, "lo\nwor"),
                (Stream::WORK, "ld\n")
            ]),
            format!("{T} 01O hello\n{T} 01O world\n")
        );
    }

    #[test]
    fn streams_keep_their_own_partial_lines() {
        assert_eq!(
            stamp(&[
                (Stream::WORK, "script "),
                (Stream::EXECUTOR, "runner line\n"),
                (Stream::WORK, "output\n"),
            ]),
            format!("{T} 00O runner line\n{T} 01O script output\n")
        );
    }

    #[test]
    fn a_carriage_return_flushes_and_the_next_line_continues() {
        // A section marker: written at once, newline added; the header line continues it.
        assert_eq!(
            stamp(&[
                (Stream::EXECUTOR, "section_start:1:x\r\x1b[0K"),
                (Stream::EXECUTOR, "header\n"),
                (Stream::EXECUTOR, "next\n"),
            ]),
            format!("{T} 00O section_start:1:x\r\x1b[0K\n{T} 00O+header\n{T} 00O next\n")
        );
    }

    #[test]
    fn a_long_line_is_cut_into_continuations() {
        let long = "a".repeat(LINE_BUFFER);
        let text = stamp(&[
            (Stream::WORK, &long),
            (Stream::WORK, "bb"),
            (Stream::WORK, "c\n"),
        ]);
        assert_eq!(text, format!("{T} 01O {long}bb\n{T} 01O+c\n"));
    }

    #[test]
    fn the_end_of_the_log_ends_partial_lines() {
        assert_eq!(
            stamp(&[(Stream::WORK, "no newline")]),
            format!("{T} 01O no newline\n")
        );
        assert_eq!(stamp(&[]), "");
    }
}
