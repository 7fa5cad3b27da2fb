//! The task that moves the log to GitLab and listens to what GitLab says about the job.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::buffer::{Shared, lock};
use super::{FinalOutcome, MAX_PATCH_BYTES, RemoteSignal, TraceTiming};
use crate::api::{JobApi, JobRef, JobState, JobUpdate, RemoteStatus, TraceReply, UpdateReply};

/// While the job runs, one tick sends at most this many chunks, so that a job printing faster
/// than GitLab accepts cannot keep the uploader from its keep-alive and from `finish`.
const MAX_CHUNKS_PER_TICK: usize = 16;

/// Consecutive 416 answers tolerated within one upload before treating them as a failure.
const MAX_RANGE_MISMATCHES: u32 = 3;

pub(crate) struct Uploader<A> {
    job: JobRef,
    api: Arc<A>,
    shared: Shared,
    timing: TraceTiming,
    signal: watch::Sender<RemoteSignal>,
    /// Byte offset GitLab has accepted so far. Only advanced by a 202, or reset from the Range
    /// of a 416 reply; bytes past it stay stored until accepted, so a failed PATCH loses
    /// nothing and a retried one duplicates nothing.
    accepted: u64,
    /// Time between ticks: GitLab's `X-GitLab-Trace-Update-Interval` once it sent one (capped),
    /// 3 s before that.
    interval: Duration,
    /// Last time GitLab answered a PATCH with 202 or a PUT: the keep-alive clock.
    last_contact: Instant,
    /// Consecutive failed uploads while the job runs: the back-off between ticks.
    failures: u32,
    /// GitLab asked for a short interval (somebody is watching the job page): keep-alives then
    /// follow that interval during silent steps too, so a Cancel is noticed within seconds
    /// rather than after the 30 s force-send interval.
    watched: bool,
    /// GitLab answered 403/404 to a PATCH (or the job is gone): no more PATCHes.
    trace_stopped: bool,
}

/// Exponential back-off: 1 s, 2 s, 4 s, ... capped at `cap`; `failures` counts from 1.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exp).min(cap)
}

impl<A: JobApi> Uploader<A> {
    pub(crate) fn new(
        job: JobRef,
        api: Arc<A>,
        shared: Shared,
        timing: TraceTiming,
        signal: watch::Sender<RemoteSignal>,
    ) -> Self {
        let accepted = lock(&shared).accepted;
        Uploader {
            job,
            api,
            shared,
            interval: timing.update_interval,
            timing,
            signal,
            accepted,
            last_contact: Instant::now(),
            failures: 0,
            watched: false,
            trace_stopped: false,
        }
    }

    /// Uploads every interval until the driver calls `finish`, then runs the final phase.
    pub(crate) async fn run(mut self, mut finish_rx: oneshot::Receiver<JobUpdate>) -> FinalOutcome {
        let mut next = Instant::now() + self.interval;
        loop {
            tokio::select! {
                // `finish` wins over a due tick: the final phase uploads everything anyway.
                biased;
                res = &mut finish_rx => {
                    return match res {
                        Ok(update) => self.finish(update).await,
                        Err(_) => FinalOutcome::GaveUp {
                            reason: "the trace handle was dropped without a final update".to_string(),
                        },
                    };
                }
                _ = tokio::time::sleep_until(next) => {
                    let delay = self.tick().await;
                    next = Instant::now() + delay;
                }
            }
        }
    }

    /// One upload round while the job runs; returns the delay until the next one. A round sends
    /// at most one kind of call to a failing GitLab: after a failed PATCH no keep-alive follows
    /// (as gitlab-runner touches the job only after a PATCH went through), and every failed round
    /// (PATCH or keep-alive) lengthens the wait, jittered (docs/gitlab-api.md, "Outages").
    async fn tick(&mut self) -> Duration {
        let mut failed = false;
        if !self.trace_stopped {
            let (progressed, result) = self.send_pending(MAX_CHUNKS_PER_TICK).await;
            if let Err(e) = result {
                failed = true;
                self.failures = if progressed { 1 } else { self.failures + 1 };
                tracing::warn!(
                    failures = self.failures,
                    error = %e,
                    "job log upload failed; retrying later"
                );
            }
        }
        let force_send = if self.watched {
            self.timing.force_send_interval.min(self.interval)
        } else {
            self.timing.force_send_interval
        };
        if !failed && self.last_contact.elapsed() >= force_send && !self.keep_alive().await {
            failed = true;
            self.failures += 1;
        }
        if !failed {
            self.failures = 0;
        }
        if self.failures == 0 {
            self.interval
        } else {
            self.interval.max(crate::daemon::jittered(backoff(
                self.failures,
                self.timing.patch_backoff_max,
            )))
        }
    }

    /// PATCHes stored bytes from `accepted` on, in chunks of at most 1 MiB, until everything is
    /// accepted, GitLab stops the log, an error occurs or `max_chunks` were sent. Returns
    /// whether any chunk was accepted, and the error if one ended the round.
    async fn send_pending(&mut self, max_chunks: usize) -> (bool, Result<(), String>) {
        let mut progressed = false;
        let mut mismatches = 0;
        let mut sent = 0;
        while !self.trace_stopped && sent < max_chunks {
            let plan = lock(&self.shared).plan_send(self.accepted, MAX_PATCH_BYTES);
            let chunk = match plan.read() {
                Ok(c) => c,
                Err(e) => {
                    return (
                        progressed,
                        Err(format!(
                            "reading the job log back from its temporary file: {e}"
                        )),
                    );
                }
            };
            if chunk.is_empty() {
                break;
            }
            let offset = self.accepted;
            let len = chunk.len() as u64;
            sent += 1;
            match self.api.patch_trace(&self.job, offset, chunk).await {
                Ok(TraceReply::Accepted {
                    len: remote_len,
                    status,
                    interval,
                }) => {
                    self.accepted = offset + len;
                    lock(&self.shared).accepted = self.accepted;
                    if let Some(r) = remote_len
                        && r != self.accepted
                    {
                        tracing::debug!(
                            remote_len = r,
                            local = self.accepted,
                            "GitLab reports another trace length after an accepted PATCH"
                        );
                    }
                    progressed = true;
                    self.last_contact = Instant::now();
                    self.apply_interval(interval);
                    self.apply_status(status.as_ref());
                }
                Ok(TraceReply::RangeMismatch { len: remote_len }) => {
                    mismatches += 1;
                    if remote_len == offset || mismatches > MAX_RANGE_MISMATCHES {
                        return (
                            progressed,
                            Err(format!(
                                "GitLab answered 416 (it holds {remote_len} bytes) to a PATCH at offset {offset}"
                            )),
                        );
                    }
                    // GitLab's length is the truth: resend from there (we keep every byte), or
                    // skip ahead if it holds more than we produced, as gitlab-runner does.
                    tracing::info!(
                        remote_len,
                        offset,
                        "trace offset out of sync with GitLab; resuming from GitLab's length"
                    );
                    self.accepted = remote_len;
                    lock(&self.shared).accepted = self.accepted;
                }
                Ok(TraceReply::Gone { status }) => {
                    tracing::warn!("GitLab refused the job log (403): aborting the job");
                    self.apply_status(status.as_ref());
                    self.raise(RemoteSignal::Abort);
                    self.trace_stopped = true;
                }
                Ok(TraceReply::NotFound) => {
                    tracing::warn!("GitLab answered 404 to the job log: no more log is sent");
                    self.trace_stopped = true;
                }
                Err(e) => return (progressed, Err(e.to_string())),
            }
        }
        (progressed, Ok(()))
    }

    /// `PUT state=running` to learn the job's status when nothing reached GitLab for a while.
    /// Whether GitLab answered.
    async fn keep_alive(&mut self) -> bool {
        let update = {
            let b = lock(&self.shared);
            JobUpdate {
                state: JobState::Running,
                failure_reason: None,
                exit_code: None,
                checksum: b.final_checksum(),
                bytesize: Some(b.len()),
            }
        };
        match self.api.update_job(&self.job, &update).await {
            Ok(UpdateReply::Accepted { status, interval }) => {
                self.last_contact = Instant::now();
                self.apply_interval(interval);
                self.apply_status(status.as_ref());
            }
            Ok(UpdateReply::Pending { interval }) => {
                self.last_contact = Instant::now();
                self.apply_interval(interval);
            }
            Ok(UpdateReply::Gone) => {
                tracing::warn!("GitLab refused the keep-alive (403/404): aborting the job");
                self.raise(RemoteSignal::Abort);
                self.trace_stopped = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "keep-alive update failed");
                return false;
            }
        }
        true
    }

    /// The final phase: every byte, then the final state, retried until GitLab takes it.
    async fn finish(mut self, mut update: JobUpdate) -> FinalOutcome {
        lock(&self.shared).close();
        // gitlab-runner resets to the default interval for the final update and lets GitLab's
        // replies override it.
        self.interval = self.timing.update_interval;
        let deadline = Instant::now() + self.timing.final_timeout;
        let mut failures: u32 = 0;
        let mut failing_since: Option<Instant> = None;
        'retry: loop {
            let error = 'attempt: {
                if !self.trace_stopped {
                    let (progressed, result) = self.send_pending(usize::MAX).await;
                    if progressed {
                        failures = 0;
                        failing_since = None;
                    }
                    if let Err(e) = result {
                        break 'attempt e;
                    }
                }
                // Every byte is accepted (or GitLab stopped the log): now the final state.
                {
                    let b = lock(&self.shared);
                    update.checksum = b.final_checksum();
                    update.bytesize = Some(b.len());
                }
                match self.api.update_job(&self.job, &update).await {
                    Ok(UpdateReply::Accepted { .. }) => {
                        tracing::debug!("final update accepted");
                        return FinalOutcome::Accepted;
                    }
                    Ok(UpdateReply::Gone) => {
                        tracing::warn!("GitLab refused the final update (403/404)");
                        return FinalOutcome::Gone;
                    }
                    Ok(UpdateReply::Pending { interval }) => {
                        // 202: GitLab is still persisting the log; send the same PUT again later.
                        failures = 0;
                        failing_since = None;
                        self.apply_interval(interval);
                        if Instant::now() + self.interval > deadline {
                            return FinalOutcome::GaveUp {
                                reason: format!(
                                    "GitLab still answered 202 to the final update after {:?}",
                                    self.timing.final_timeout
                                ),
                            };
                        }
                        tokio::time::sleep(self.interval).await;
                        continue 'retry;
                    }
                    Err(e) => break 'attempt format!("final update: {e}"),
                }
            };
            failures += 1;
            let now = Instant::now();
            let since = *failing_since.get_or_insert(now);
            let exhausted = failures > self.timing.final_retry_limit
                && now.duration_since(since) >= self.timing.final_retry_min_duration;
            if exhausted || now >= deadline {
                tracing::error!(
                    failures,
                    error = %error,
                    "giving up on the final update"
                );
                return FinalOutcome::GaveUp { reason: error };
            }
            // At most one attempt per update interval, as gitlab-runner's final update waits
            // the interval after a failure; the back-off beyond it is jittered.
            let wait = self
                .interval
                .max(crate::daemon::jittered(backoff(
                    failures,
                    self.timing.final_backoff_max,
                )))
                .min(deadline - now);
            tracing::warn!(
                failures,
                retry_in = ?wait,
                error = %error,
                "final trace upload or update failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn apply_interval(&mut self, interval: Option<Duration>) {
        if let Some(d) = interval
            && !d.is_zero()
        {
            self.interval = d.min(self.timing.max_update_interval);
            self.watched = self.interval < self.timing.force_send_interval;
        }
    }

    fn apply_status(&mut self, status: Option<&RemoteStatus>) {
        match status {
            Some(RemoteStatus::Canceling) => self.raise(RemoteSignal::Canceling),
            Some(RemoteStatus::Gone) => self.raise(RemoteSignal::Abort),
            Some(RemoteStatus::Other(s))
                if s.eq_ignore_ascii_case("canceled") || s.eq_ignore_ascii_case("failed") =>
            {
                self.raise(RemoteSignal::Abort)
            }
            Some(RemoteStatus::Other(s)) if s.eq_ignore_ascii_case("canceling") => {
                self.raise(RemoteSignal::Canceling)
            }
            _ => {}
        }
    }

    /// Moves the signal forward (never back).
    fn raise(&self, sig: RemoteSignal) {
        let changed = self.signal.send_if_modified(|cur| {
            if sig > *cur {
                *cur = sig;
                true
            } else {
                false
            }
        });
        if changed {
            tracing::info!(signal = ?sig, "GitLab changed the job's status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let cap = Duration::from_secs(60);
        let got: Vec<u64> = (1..=9).map(|n| backoff(n, cap).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(1000, cap), cap);
    }
}
