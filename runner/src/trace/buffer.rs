//! The job's output sink: masking, the output limit, the checksum and the spill store.
//!
//! Every byte of job output goes `TraceWriter` → [`Masker`] → output limit → [`Store`] (and the
//! CRC-32 that GitLab checks). Only what comes out of that pipeline is ever uploaded, so the
//! checksum and byte count describe exactly the bytes GitLab receives.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_config::joblog::{
    self, BOLD_RED, BOLD_YELLOW, RESET, error_line, section_end, section_start, warning_line,
};

use super::mask::Masker;
use super::stages::StageClock;
use super::stamp::{Stamper, Stream};
use super::store::{ReadPlan, Store};

/// Input is masked in pieces of this size so that one huge write never needs a huge buffer.
const PIECE: usize = 64 * 1024;

/// The line appended when the output limit is reached (gitlab-runner's text and colours).
pub(crate) fn limit_notice(limit: u64) -> String {
    format!(
        "\n{BOLD_YELLOW}Job's log exceeded limit of {limit} bytes.\n\
         Job execution will continue but no more output will be collected.{RESET}\n"
    )
}

/// The masked, size-limited log of one job.
#[derive(Debug)]
pub(crate) struct TraceBuffer {
    job_id: u64,
    /// How long each section took (the timing line, the stage histogram).
    stages: StageClock,
    /// What GitLab accepted of the log (the uploader keeps it here), for [`Self::checkpoint`].
    pub(crate) accepted: u64,
    /// `crc` covers the whole log (not so after [`Self::appending`]).
    crc_known: bool,
    /// The uploader sends nothing past this byte until the log is closed: the bytes written
    /// since the last checkpoint a later ferry knows of (docs/crash-safety.md, cache and
    /// artifacts).
    hold_from: Option<u64>,
    /// The masker of ferry's own lines ([`Stream::EXECUTOR`]).
    masker: Masker,
    /// The maskers of the other streams, each holding back its own tail (as gitlab-runner's
    /// streams each have theirs), so that output of two streams written in turn (a service's
    /// and the script's) cannot hide a secret from both, or put one's bytes in the other's line.
    stream_maskers: Vec<(Stream, Masker)>,
    /// `FF_TIMESTAMPS`: prefixes each masked line with its time and stream.
    stamper: Option<Stamper>,
    store: Store,
    /// CRC-32 (IEEE) of every stored byte, for the `output.checksum` GitLab validates.
    crc: crc32fast::Hasher,
    output_limit: u64,
    /// Set once the limit notice (or a disk-error notice) is stored: later output is dropped.
    limited: bool,
    /// Set with `limited`, for the engine: it reads no more of a kept step's output file.
    full: ferry_executor::LogFull,
    /// Set by `finish`: the masker tail is flushed and nothing more is accepted.
    closed: bool,
    /// Output that arrived after the limit or after close, for the operator log.
    dropped: u64,
    scratch: Vec<u8>,
}

impl TraceBuffer {
    pub(crate) fn new(job_id: u64, masker: Masker, output_limit: u64, store: Store) -> Self {
        TraceBuffer {
            job_id,
            stream_maskers: Vec::new(),
            masker,
            stamper: None,
            store,
            crc: crc32fast::Hasher::new(),
            output_limit,
            limited: false,
            full: Default::default(),
            closed: false,
            dropped: 0,
            scratch: Vec::new(),
            stages: StageClock::default(),
            accepted: 0,
            crc_known: true,
            hold_from: None,
        }
    }

    /// The log of a job an earlier ferry left without a checkpoint: what is written now
    /// follows the `len` bytes GitLab holds, whose checksum is unknown.
    pub(crate) fn appending(
        job_id: u64,
        masker: Masker,
        output_limit: u64,
        store: Store,
        len: u64,
    ) -> Self {
        let mut b = TraceBuffer::new(job_id, masker, output_limit, store);
        b.accepted = len;
        b.crc_known = false;
        b
    }

    /// The log of a resumed job (docs/crash-safety.md): GitLab accepted `cp.accepted` bytes of
    /// the `cp.at` bytes the earlier ferry had written when it took `cp`; the others are
    /// `cp.pending`. What is written now continues at `cp.at`, the checksum over the whole log.
    pub(crate) fn resumed(
        job_id: u64,
        masker: Masker,
        output_limit: u64,
        mut store: Store,
        cp: &Checkpoint,
    ) -> Self {
        let _ = store.append(&cp.pending);
        let mut b = TraceBuffer::new(job_id, masker, output_limit, store);
        b.crc = crc32fast::Hasher::new_with_initial_len(cp.crc, cp.at);
        b.accepted = cp.accepted;
        b
    }

    /// Where the log stands, if nothing is held back (no masking tail, no partial timestamped
    /// line), at most `MAX_CHECKPOINT_PENDING` bytes wait for GitLab and the checksum covers
    /// the whole log (not so for a log continued after GitLab's bytes, [`Self::appending`]):
    /// what a later ferry needs to continue this log exactly (docs/crash-safety.md).
    pub(crate) fn checkpoint(&self) -> Option<Checkpoint> {
        if !self.crc_known
            || self.closed
            || self.limited
            || self.masker.pending_len() > 0
            || self.stream_maskers.iter().any(|(_, m)| m.pending_len() > 0)
            || self
                .stamper
                .as_ref()
                .is_some_and(|s| s.holds_partial_line())
        {
            return None;
        }
        let at = self.store.len();
        let accepted = self.accepted.min(at);
        if at - accepted > MAX_CHECKPOINT_PENDING {
            return None;
        }
        let mut pending = Vec::with_capacity((at - accepted) as usize);
        while (pending.len() as u64) < at - accepted {
            let chunk = self
                .store
                .plan_read(
                    accepted + pending.len() as u64,
                    MAX_CHECKPOINT_PENDING as usize,
                )
                .read()
                .ok()?;
            if chunk.is_empty() {
                return None;
            }
            pending.extend_from_slice(&chunk);
        }
        Some(Checkpoint {
            at,
            crc: self.crc.clone().finalize(),
            accepted,
            pending,
        })
    }

    /// Timestamps every line from now on (`FF_TIMESTAMPS`, see [`super::stamp`]).
    pub(crate) fn with_timestamps(mut self) -> Self {
        self.stamper = Some(Stamper::new());
        self
    }

    #[cfg(test)]
    pub(crate) fn write(&mut self, data: &[u8]) {
        self.write_stream(Stream::EXECUTOR, data);
    }

    /// Masks `data`, timestamps it as written on `stream` (with `FF_TIMESTAMPS`), and stores it
    /// under the output limit: the limit counts the timestamps, as gitlab-runner's does.
    pub(crate) fn write_stream(&mut self, stream: Stream, data: &[u8]) {
        if self.closed || self.limited {
            self.dropped += data.len() as u64;
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        for piece in data.chunks(PIECE) {
            scratch.clear();
            self.masker_of(stream).push(piece, &mut scratch);
            self.store_stamped(stream, &scratch);
            if self.limited {
                break;
            }
        }
        scratch.clear();
        self.scratch = scratch;
    }

    fn masker_of(&mut self, stream: Stream) -> &mut Masker {
        if stream == Stream::EXECUTOR {
            return &mut self.masker;
        }
        let i = match self.stream_maskers.iter().position(|(s, _)| *s == stream) {
            Some(i) => i,
            None => {
                let fresh = self.masker.fresh();
                self.stream_maskers.push((stream, fresh));
                self.stream_maskers.len() - 1
            }
        };
        &mut self.stream_maskers[i].1
    }

    /// The end of a stream's use (a step's output, the service logs): its held-back masking
    /// tail and its partial line go out, so they come before what ferry writes next (as
    /// gitlab-runner closes a stream's writer). Later writes on the stream start afresh.
    pub(crate) fn end_stream(&mut self, stream: Stream) {
        if self.closed || stream == Stream::EXECUTOR {
            return;
        }
        let mut tail = Vec::new();
        self.masker_of(stream).finish(&mut tail);
        self.store_stamped(stream, &tail);
        if let Some(stamper) = &mut self.stamper {
            let mut rest = Vec::new();
            stamper.end_stream(stream, &mut rest);
            self.store_masked(&rest);
        }
    }

    fn store_stamped(&mut self, stream: Stream, masked: &[u8]) {
        match &mut self.stamper {
            Some(stamper) => {
                let mut stamped = Vec::with_capacity(masked.len() + 64);
                stamper.push(stream, masked, &mut stamped);
                self.store_masked(&stamped);
            }
            None => self.store_masked(masked),
        }
    }

    /// Flushes the masker's held-back tail and stops accepting output. Idempotent.
    pub(crate) fn close(&mut self) {
        if self.closed {
            return;
        }
        let streams: Vec<Stream> = self.stream_maskers.iter().map(|(s, _)| *s).collect();
        for stream in streams {
            self.end_stream(stream);
        }
        let mut tail = Vec::new();
        self.masker.finish(&mut tail);
        if !self.limited {
            self.store_stamped(Stream::EXECUTOR, &tail);
            if let Some(stamper) = &mut self.stamper {
                let mut rest = Vec::new();
                stamper.finish(&mut rest);
                self.store_masked(&rest);
            }
        }
        self.closed = true;
        if self.dropped > 0 {
            tracing::info!(
                job_id = self.job_id,
                dropped_bytes = self.dropped,
                "job output over the log limit was not collected"
            );
        }
    }

    /// Stores masked bytes, applying the output limit.
    fn store_masked(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.limited {
            return;
        }
        let room = self.output_limit.saturating_sub(self.store.len());
        if (bytes.len() as u64) < room {
            self.append(bytes);
            return;
        }
        // Reaching the limit exactly also ends collection, as in gitlab-runner.
        let cut = truncate_utf8(bytes, room as usize);
        self.append(&bytes[..cut]);
        self.dropped += (bytes.len() - cut) as u64;
        if !self.limited {
            self.append(limit_notice(self.output_limit).as_bytes());
            self.limited = true;
            self.full.set();
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let before = self.store.len();
        let result = self.store.append(bytes);
        let stored = (self.store.len() - before) as usize;
        self.crc.update(&bytes[..stored]);
        if let Err(e) = result {
            tracing::warn!(job_id = self.job_id, error = %e, "cannot write the job log to its temporary file");
            let notice = format!(
                "\n{BOLD_RED}ERROR: the runner could not store the job log on disk ({e}); \
                 no more output will be collected.{RESET}\n"
            );
            self.store.append_unbounded(notice.as_bytes());
            self.crc.update(notice.as_bytes());
            self.dropped += (bytes.len() - stored) as u64;
            self.limited = true;
            self.full.set();
        }
    }

    /// Bytes stored so far (what the log will be once uploaded).
    pub(crate) fn len(&self) -> u64 {
        self.store.len()
    }

    /// The checksum the final update claims: none for a log continued after GitLab's length
    /// without knowing what it held ([`TraceBuffer::appending`]).
    pub(crate) fn final_checksum(&self) -> Option<String> {
        self.crc_known.then(|| self.checksum())
    }

    /// `crc32:%08x` of the stored bytes.
    pub(crate) fn checksum(&self) -> String {
        format!("crc32:{:08x}", self.crc.clone().finalize())
    }

    #[cfg(test)]
    pub(crate) fn plan_read(&self, offset: u64, max: usize) -> ReadPlan {
        self.store.plan_read(offset, max)
    }

    /// What the uploader may send from `offset`: as [`Self::plan_read`], but not past the
    /// held byte ([`TraceWriter::hold_from`]) while the log is open.
    pub(crate) fn plan_send(&self, offset: u64, max: usize) -> ReadPlan {
        match self.hold_from {
            Some(end) if !self.closed => {
                let room = usize::try_from(end.saturating_sub(offset)).unwrap_or(usize::MAX);
                self.store.plan_read(offset, max.min(room))
            }
            _ => self.store.plan_read(offset, max),
        }
    }

    #[cfg(test)]
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    #[cfg(test)]
    pub(crate) fn masker(&self) -> &Masker {
        &self.masker
    }
}

/// The most log bytes not yet accepted by GitLab that a checkpoint carries.
const MAX_CHECKPOINT_PENDING: u64 = 1024 * 1024;

/// A point of a job's log a later ferry can continue from (docs/crash-safety.md): the log's
/// length `at` and CRC-32 `crc` there, what GitLab had accepted (`accepted`), and the bytes
/// between (`pending`), which GitLab may not have received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub at: u64,
    pub crc: u32,
    pub accepted: u64,
    #[serde(with = "b64")]
    pub pending: Vec<u8>,
}

/// Bytes as base64 in JSON.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Largest `n <= cap` such that `bytes[..n]` does not end inside a UTF-8 sequence.
fn truncate_utf8(bytes: &[u8], cap: usize) -> usize {
    let cap = cap.min(bytes.len());
    // Look back at most 3 bytes for the start of the last character.
    for back in 1..=cap.min(4) {
        let i = cap - back;
        let b = bytes[i];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the leading byte
        }
        let want = match b {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if i + want > cap { i } else { cap };
    }
    cap
}

pub(crate) type Shared = Arc<Mutex<TraceBuffer>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, TraceBuffer> {
    // A panic while holding the lock cannot leave the buffer half-updated in a way that matters
    // more than losing the log, so keep going with whatever is there.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a job's output goes: the executor and the deploy step get it as their `LogSink`
/// (`tokio::io::AsyncWrite`), the job driver writes its own lines and sections directly.
///
/// Cloning is cheap; all clones feed the same log. Writes never block and never fail: once the
/// output limit is reached, or after [`TraceHandle::finish`](super::TraceHandle::finish), output
/// is accepted and dropped so that a chatty job is not disturbed.
#[derive(Clone)]
pub struct TraceWriter {
    pub(crate) shared: Shared,
    /// The stream this writer's output belongs to (only visible with `FF_TIMESTAMPS`).
    pub(crate) stream: Stream,
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = lock(&self.shared);
        f.debug_struct("TraceWriter")
            .field("job_id", &b.job_id)
            .field("len", &b.len())
            .finish()
    }
}

impl TraceWriter {
    /// The same log, written as `stream` (gitlab-runner's stream ids: [`Stream::WORK`] for the
    /// script steps, [`Stream::SERVICES`] for service containers; ferry's own lines are
    /// [`Stream::EXECUTOR`]). Only the `FF_TIMESTAMPS` prefix shows the difference.
    pub fn with_stream(&self, stream: Stream) -> TraceWriter {
        TraceWriter {
            shared: self.shared.clone(),
            stream,
        }
    }

    /// Ends this writer's stream for now (see `TraceBuffer::end_stream`); `poll_flush` does
    /// the same. Nothing for ferry's own stream.
    pub fn end_stream(&self) {
        lock(&self.shared).end_stream(self.stream);
    }

    /// Appends raw bytes (ANSI escapes welcome).
    pub fn write_bytes(&self, data: &[u8]) {
        lock(&self.shared).write_stream(self.stream, data);
    }

    /// Appends text as is.
    pub fn write_str(&self, text: &str) {
        self.write_bytes(text.as_bytes());
    }

    /// Appends `line` and a newline.
    pub fn write_line(&self, line: &str) {
        let mut b = lock(&self.shared);
        b.write_stream(self.stream, line.as_bytes());
        b.write_stream(self.stream, b"\n");
    }

    /// `WARNING: <msg>` in yellow, like gitlab-runner's warnings ([`joblog::warning_line`]).
    pub fn write_warning(&self, msg: &str) {
        self.write_str(&warning_line(msg));
    }

    /// `ERROR: <msg>` in bold red, like gitlab-runner's errors ([`joblog::error_line`]).
    pub fn write_error(&self, msg: &str) {
        self.write_str(&error_line(msg));
    }

    /// `<msg>` in bold green, a notice like "Job succeeded" ([`joblog::notice_line`]).
    pub fn write_notice(&self, msg: &str) {
        self.write_str(&joblog::notice_line(msg));
    }

    /// `$ <command>` in bold green, echoed before a command runs ([`joblog::command_line`]).
    pub fn write_command(&self, command: &str) {
        self.write_str(&joblog::command_line(command));
    }

    /// Opens a collapsible section (see [`joblog::section_start`]).
    pub fn section_start(&self, name: &str, header: &str, collapsed: bool) {
        let mut b = lock(&self.shared);
        b.stages.start(name);
        b.write_stream(
            self.stream,
            section_start(unix_now(), name, header, collapsed).as_bytes(),
        );
    }

    /// Closes the section opened with the same `name`.
    pub fn section_end(&self, name: &str) {
        let mut b = lock(&self.shared);
        b.stages.end(name);
        b.write_stream(self.stream, section_end(unix_now(), name).as_bytes());
    }

    /// Each closed section and the time it took, in the order they first ran.
    pub fn stage_times(&self) -> Vec<(String, std::time::Duration)> {
        lock(&self.shared).stages.done()
    }

    /// The section running now, else the last one that ran (`/debug/jobs/list`).
    pub fn current_stage(&self) -> Option<String> {
        lock(&self.shared).stages.current().map(str::to_string)
    }

    /// Where the log stands, for a later ferry to continue it ([`TraceBuffer::checkpoint`]).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        lock(&self.shared).checkpoint()
    }

    /// From now on GitLab gets no byte past `at` (none: no limit) until the log is closed:
    /// what a later ferry continuing from a checkpoint at `at` would write again is not sent
    /// before (docs/crash-safety.md, "The job log across a restart").
    pub fn hold_from(&self, at: Option<u64>) {
        lock(&self.shared).hold_from = at;
    }

    /// Set once the log takes no more output (the output limit was reached, or the log could
    /// not be stored): given to the engine with each step ([`ferry_executor::StepSpec::log_full`]).
    pub fn log_full(&self) -> ferry_executor::LogFull {
        lock(&self.shared).full.clone()
    }

    /// Bytes of log stored so far (after masking and the output limit).
    pub fn len(&self) -> u64 {
        lock(&self.shared).len()
    }

    /// Whether nothing has been stored yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl tokio::io::AsyncWrite for TraceWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Ends the stream of a step's or the services' writer (a no-op on ferry's own).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end_stream();
        Poll::Ready(Ok(()))
    }

    /// Does not end the log: other clones may still write. [`TraceHandle::finish`] ends it.
    ///
    /// [`TraceHandle::finish`]: super::TraceHandle::finish
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(phrases: &[&str], limit: u64, mem: usize) -> TraceBuffer {
        TraceBuffer::new(
            1,
            Masker::new::<&str, &str>(phrases, &[]),
            limit,
            Store::new(mem, None),
        )
    }

    fn contents(b: &TraceBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let chunk = b.plan_read(out.len() as u64, 1 << 20).read().unwrap();
            if chunk.is_empty() {
                return out;
            }
            out.extend_from_slice(&chunk);
        }
    }

    #[test]
    fn writer_sections_use_the_current_time() {
        let w = TraceWriter {
            shared: Arc::new(Mutex::new(buffer(&[], 1 << 20, 1 << 20))),
            stream: Stream::EXECUTOR,
        };
        let before = unix_now();
        w.section_start("prepare_executor", "Preparing", true);
        w.write_line("inside");
        w.section_end("prepare_executor");
        let after = unix_now();
        let text = String::from_utf8(contents(&lock(&w.shared))).unwrap();
        let ts: u64 = text
            .strip_prefix("\x1b[0Ksection_start:")
            .and_then(|s| s.split(':').next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!(before <= ts && ts <= after);
        let rest = text.split_once("inside\n").map(|(_, r)| r).unwrap();
        let end_ts: u64 = rest
            .strip_prefix("\x1b[0Ksection_end:")
            .and_then(|s| s.strip_suffix(":prepare_executor\r\x1b[0K\n"))
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!(ts <= end_ts && end_ts <= after);
    }

    #[test]
    fn output_limit_appends_one_notice_and_drops_the_rest() {
        let mut b = buffer(&[], 10, 1 << 20);
        b.write(b"This is the long message");
        b.write(b"more output that is dropped");
        b.close();
        let expected = "This is th\n\x1b[33;1mJob's log exceeded limit of 10 bytes.\n\
             Job execution will continue but no more output will be collected.\x1b[0;m\n";
        assert_eq!(String::from_utf8(contents(&b)).unwrap(), expected);
        assert_eq!(b.len(), expected.len() as u64);
        assert_eq!(
            b.checksum(),
            format!("crc32:{:08x}", crc32fast::hash(expected.as_bytes()))
        );
    }

    #[test]
    fn output_limit_never_cuts_a_character_in_half() {
        let mut b = buffer(&[], 5, 1 << 20);
        b.write("abcé€".as_bytes()); // é is 2 bytes at offsets 3..5, € 3 bytes
        let text = String::from_utf8(contents(&b)).expect("valid UTF-8");
        assert!(text.starts_with("abcé\n"));
        let mut b = buffer(&[], 4, 1 << 20);
        b.write("abcé".as_bytes());
        let text = String::from_utf8(contents(&b)).expect("valid UTF-8");
        assert!(text.starts_with("abc\n"));
    }

    #[test]
    fn output_below_the_limit_is_untouched() {
        let mut b = buffer(&[], 100, 1 << 20);
        b.write(b"short\n");
        b.close();
        assert_eq!(contents(&b), b"short\n");
        b.write(b"after close");
        assert_eq!(contents(&b), b"short\n");
    }

    #[test]
    fn masking_happens_before_the_limit_and_the_checksum() {
        let mut b = buffer(&["topsecretvalue"], 1 << 20, 1 << 20);
        b.write(b"x topsecret");
        b.write(b"value y");
        b.close();
        assert_eq!(contents(&b), b"x [MASKED] y");
        assert_eq!(
            b.checksum(),
            format!("crc32:{:08x}", crc32fast::hash(b"x [MASKED] y"))
        );
    }

    #[test]
    fn close_releases_the_held_back_tail() {
        let mut b = buffer(&["topsecretvalue"], 1 << 20, 1 << 20);
        b.write(b"ends with topsec");
        assert_eq!(contents(&b), b"ends with ");
        b.close();
        assert_eq!(contents(&b), b"ends with topsec");
    }

    #[test]
    fn a_disk_error_ends_collection_with_a_notice() {
        let mut b = TraceBuffer::new(
            1,
            Masker::new::<&str, &str>(&[], &[]),
            1 << 20,
            Store::new(8, Some("/nonexistent/ferry-spill".into())),
        );
        b.write(b"0123456789abcdef");
        b.write(b"dropped");
        b.close();
        let text = String::from_utf8(contents(&b)).unwrap();
        assert!(
            text.starts_with(
                "01234567\n\x1b[31;1mERROR: the runner could not store the job log on disk"
            ),
            "{text:?}"
        );
        assert!(text.ends_with("no more output will be collected.\x1b[0;m\n"));
        assert!(!text.contains("dropped"));
        assert_eq!(
            b.checksum(),
            format!("crc32:{:08x}", crc32fast::hash(text.as_bytes()))
        );
        assert_eq!(b.len(), text.len() as u64);
    }

    /// The header of a timestamped line: a UTC time within the test, the stream, the flag.
    fn check_header(line: &str, stream: &str, before: chrono::DateTime<chrono::Utc>) -> String {
        let (time, rest) = line.split_at(27);
        let t = chrono::DateTime::parse_from_rfc3339(time).expect(line);
        assert!(before <= t && t <= chrono::Utc::now(), "{line:?}");
        assert!(
            time.ends_with('Z') && time.len() == 27,
            "microseconds, UTC: {line:?}"
        );
        let rest = rest.strip_prefix(' ').expect(line);
        let (head, text) = rest.split_at(4);
        assert_eq!(head, stream, "{line:?}");
        text.to_string()
    }

    #[test]
    fn timestamps_prefix_masked_lines_and_count_in_the_limit() {
        let before = chrono::Utc::now();
        let mut b = buffer(&["topsecretvalue"], 1 << 20, 1 << 20).with_timestamps();
        // A secret split around another stream's line is still masked.
        b.write_stream(Stream::WORK, b"x topsecret");
        b.write_stream(Stream::EXECUTOR, b"runner\n");
        b.write_stream(Stream::WORK, b"value y\nlast");
        b.close();
        let text = String::from_utf8(contents(&b)).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert_eq!(check_header(lines[0], "00O ", before), "runner\n");
        assert_eq!(check_header(lines[1], "01O ", before), "x [MASKED] y\n");
        assert_eq!(check_header(lines[2], "01O ", before), "last\n");
        assert_eq!(
            b.checksum(),
            format!("crc32:{:08x}", crc32fast::hash(text.as_bytes()))
        );

        // The limit counts the prefixes (32 bytes a line); the notice is not stamped.
        let mut b = buffer(&[], 40, 1 << 20).with_timestamps();
        b.write_stream(Stream::WORK, b"hello\nworld\n");
        let text = String::from_utf8(contents(&b)).unwrap();
        let (first, rest) = text.split_once('\n').unwrap();
        assert_eq!(check_header(first, "01O ", before), "hello");
        assert!(rest.starts_with("20"), "{rest:?}");
        assert!(
            rest[2..].starts_with("\n\x1b[33;1mJob's log exceeded limit of 40 bytes."),
            "{rest:?}"
        );
    }

    #[test]
    fn truncate_utf8_boundaries() {
        let s = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        assert_eq!(truncate_utf8(s, 0), 0);
        assert_eq!(truncate_utf8(s, 1), 1);
        assert_eq!(truncate_utf8(s, 2), 1);
        assert_eq!(truncate_utf8(s, 3), 3);
        assert_eq!(truncate_utf8(s, 5), 3);
        assert_eq!(truncate_utf8(s, 6), 6);
        assert_eq!(truncate_utf8(s, 9), 6);
        assert_eq!(truncate_utf8(s, 10), 10);
        assert_eq!(truncate_utf8(b"ab", 9), 2);
    }
}
