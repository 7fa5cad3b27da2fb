//! The job's stop signals and the one way a stage is run under them.
//!
//! One cancellation source per stage, with its cause recorded next to it: the job timeout,
//! GitLab's `canceling` (graceful: after_script still runs), GitLab's `canceled`/403 (abort:
//! nothing more runs) and a forced shutdown of ferry.

use std::future::Future;
use std::time::Duration;

use ferry_executor::jobfs::Limits;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::trace::RemoteSignal;

/// How long a stage may take to end after it was told to stop.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(30);

/// Why a stage was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// The job's deadline passed.
    Timeout,
    /// GitLab says `canceling`: stop the script, still run after_script and `on_failure` uploads.
    Canceling,
    /// GitLab says `canceled`/`failed`, or 403: the job is over server-side; nothing more runs.
    Abort,
    /// ferry is shutting down.
    Shutdown,
}

/// How a stage ended: it finished, or a stop signal ended it (its own result, if it came within
/// [`STOP_GRACE`], is of no further interest: the stop decides).
#[derive(Debug)]
pub(super) enum Stage<T> {
    Done(T),
    Stopped(Stop),
}

/// Tracks the job's stop signals: deadline, GitLab, shutdown.
pub(super) struct Signals {
    pub deadline: Instant,
    pub remote: watch::Receiver<RemoteSignal>,
    pub shutdown: CancellationToken,
}

impl Signals {
    /// The same signals under another deadline.
    pub fn with_deadline(&self, deadline: Instant) -> Signals {
        Signals {
            deadline,
            remote: self.remote.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Time left until the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// What has already happened, if anything.
    pub fn current(&self) -> Option<Stop> {
        match *self.remote.borrow() {
            RemoteSignal::Abort => return Some(Stop::Abort),
            RemoteSignal::Canceling => return Some(Stop::Canceling),
            RemoteSignal::None => {}
        }
        if self.shutdown.is_cancelled() {
            return Some(Stop::Shutdown);
        }
        if Instant::now() >= self.deadline {
            return Some(Stop::Timeout);
        }
        None
    }

    /// Resolves when a stop signal arrives (or at once if one already has).
    async fn next(&mut self, ignore_canceling: bool) -> Stop {
        loop {
            if let Some(s) = self.current()
                && !(ignore_canceling && s == Stop::Canceling)
            {
                return s;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => return Stop::Timeout,
                _ = self.shutdown.cancelled() => return Stop::Shutdown,
                changed = self.remote.changed() => {
                    if changed.is_err() {
                        // The uploader is gone; only the deadline and shutdown remain.
                        tokio::select! {
                            _ = tokio::time::sleep_until(self.deadline) => return Stop::Timeout,
                            _ = self.shutdown.cancelled() => return Stop::Shutdown,
                        }
                    }
                }
            }
        }
    }

    /// Drives the future `make(limits)` builds until it ends; on a stop signal, fires
    /// `limits.cancel` and gives the future [`STOP_GRACE`] to end before it is dropped.
    /// `limits` bound host-side work on the job's files under this deadline
    /// (docs/security.md). `ignore_canceling`: the stage runs through GitLab's graceful
    /// `canceling` (after_script, the archiving after it).
    pub async fn run<T, F: Future<Output = T>>(
        &mut self,
        ignore_canceling: bool,
        make: impl FnOnce(Limits) -> F,
    ) -> Stage<T> {
        let cancel = CancellationToken::new();
        let fut = make(Limits {
            deadline: Some(self.deadline.into_std()),
            ..Limits::new(cancel.clone())
        });
        tokio::pin!(fut);
        let stop = tokio::select! {
            r = &mut fut => return Stage::Done(r),
            s = self.next(ignore_canceling) => s,
        };
        cancel.cancel();
        let _ = tokio::time::timeout(STOP_GRACE, &mut fut).await;
        Stage::Stopped(stop)
    }
}

/// `fut`, or `None` as soon as `cancel` fires: for calls that take no cancellation token.
pub(super) async fn cancellable<T>(
    fut: impl Future<Output = T>,
    cancel: &CancellationToken,
) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        _ = cancel.cancelled() => None,
    }
}
