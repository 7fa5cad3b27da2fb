//! The polling daemon: one task per `[[runners]]` entry asks GitLab for jobs every
//! `check_interval` (entries staggered over the interval, as gitlab-runner does), and again at once
//! after it got a job and when one of its jobs ends (so a freed slot does not wait for the next
//! tick); `concurrent` global slots, `limit` and `request_concurrency` per entry.
//!
//! Capacity is an owned permit: a request takes a global slot and a `limit` slot before it is
//! sent, and moves them into the job's task when GitLab hands out a job, so they return however
//! the job ends. A request whose answer is "no job" gives them back at once.
//!
//! Config reloads arrive on a `watch` channel: new entries start polling, removed ones stop, an
//! entry that stays (same url and token) takes its new settings for the jobs it gets from then on
//! (`limit` and `request_concurrency` included); running jobs keep the settings they started with. Shutdown is injected: `graceful` stops polling and waits for the
//! jobs; `force` also cancels every job, which then reports itself failed. `handover` only stops
//! polling: requests in flight are answered (a job they bring runs) and jobs keep running.
//!
//! Jobs an earlier ferry left running (docs/crash-safety.md) are adopted at start: each takes a
//! global slot and a `limit` slot of its entry before the first request is sent, also when that
//! exceeds the limits (then the slots are owed, and taken back as jobs end).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_config::{Config, RunnerSection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How long an entry is parked after `unhealthy_requests_limit` failed requests in a row, at most.
/// gitlab-runner parks it for 60 minutes; ferry recovers within a minute of GitLab coming back.
pub const MAX_UNHEALTHY_PARK: Duration = Duration::from_secs(30);

/// A job request without an answer after this long is being held by Workhorse's long polling.
/// Such a request can only end in "no job" (Workhorse answers 204 itself when the queue changes;
/// jobs are handed out by Rails, which answers at once), so it gives its slot back meanwhile: a
/// held request never keeps a free job slot idle.
pub const HELD_REQUEST: Duration = Duration::from_secs(5);

/// What one job request gave.
#[derive(Debug)]
pub enum Polled<J> {
    /// GitLab handed out a job.
    Job(J),
    /// No job now (204, 409, another 4xx): a healthy answer.
    Nothing,
    /// The request failed (403, 429, 5xx, network error): counts toward parking the entry.
    Failed,
}

/// Asks GitLab for a job for one runner entry. The real implementation wraps `GitLabClient`.
pub trait JobSource: Send + Sync + 'static {
    type Job: Send + 'static;
    /// Must not be cancelled half way once GitLab may have handed out a job (it would be lost):
    /// the daemon only drops it on shutdown (`graceful`, `force`) and when its entry is removed,
    /// as gitlab-runner does; a handover lets it end (docs/crash-safety.md).
    fn request_job(&self, runner: &RunnerSection)
    -> impl Future<Output = Polled<Self::Job>> + Send;

    /// A request was due but `request_concurrency` requests of the entry were already in
    /// flight (gitlab-runner's `gitlab_runner_request_concurrency_exceeded_total`).
    fn request_concurrency_exceeded(&self, _runner: &RunnerSection) {}
}

/// Runs one job to its final status. `cancel` fires on forced shutdown.
pub trait JobHandler<J>: Send + Sync + 'static {
    fn run_job(
        &self,
        runner: Arc<RunnerSection>,
        job: J,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// Identity of an entry across reloads: the same url and token is the same runner.
fn runner_key(r: &RunnerSection) -> (String, String) {
    (r.url.clone(), r.token.expose().to_string())
}

/// Permits standing for "no limit" (`limit = 0`): far more than `concurrent` can ever allow.
const UNLIMITED: usize = 1 << 20;

/// A semaphore whose size changes on reload while permits are out: growing adds permits (after
/// paying back what a shrink still owes), shrinking forgets free permits at once and the rest as
/// running jobs give theirs back. Used for `concurrent`, `limit` and `request_concurrency`.
#[derive(Clone)]
struct Capacity {
    sem: Arc<Semaphore>,
    /// Size, and permits a shrink still has to take back from running jobs.
    state: Arc<std::sync::Mutex<(usize, usize)>>,
}

impl Capacity {
    fn new(n: usize) -> Self {
        Capacity {
            sem: Arc::new(Semaphore::new(n)),
            state: Arc::new(std::sync::Mutex::new((n, 0))),
        }
    }

    fn resize(&self, n: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (size, debt) = &mut *state;
        if n > *size {
            let grow = n - *size;
            let repaid = grow.min(*debt);
            *debt -= repaid;
            self.sem.add_permits(grow - repaid);
        } else if n < *size {
            let shrink = *size - n;
            let owed = shrink - self.sem.forget_permits(shrink);
            self.owe(debt, owed);
        }
        *size = n;
    }

    /// Adds `owed` to the permits to take back from running jobs as they return them.
    fn owe(&self, debt: &mut usize, owed: usize) {
        if owed == 0 {
            return;
        }
        let collect = *debt == 0;
        *debt += owed;
        if collect {
            // Takes the owed permits as running jobs return them; stops when nothing
            // is owed any more (a later growth may have paid the debt).
            let (sem, state) = (self.sem.clone(), self.state.clone());
            tokio::spawn(async move {
                while let Ok(permit) = sem.acquire().await {
                    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                    if state.1 == 0 {
                        return;
                    }
                    state.1 -= 1;
                    permit.forget();
                    if state.1 == 0 {
                        return;
                    }
                }
            });
        }
    }

    /// A permit for a job that runs whatever the capacity (an adopted job): a free one, or,
    /// if none is free, one more than the size, owed until a running job returns one.
    fn take_or_owe(&self) -> Held {
        if let Ok(permit) = self.sem.clone().try_acquire_owned() {
            return Held::Permit(permit);
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.owe(&mut state.1, 1);
        Held::Owed(self.clone())
    }
}

/// A slot of a [`Capacity`] an adopted job holds.
enum Held {
    Permit(#[allow(dead_code)] OwnedSemaphorePermit),
    /// Taken beyond the size: when the job ends, the debt it made is cancelled (or, if a
    /// returned permit already paid it, that permit comes back).
    Owed(Capacity),
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Owed(capacity) = self {
            let mut state = capacity.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.1 > 0 {
                state.1 -= 1;
            } else {
                capacity.sem.add_permits(1);
            }
        }
    }
}

/// A job already running when the daemon starts (resumed from the journal): it holds a
/// `concurrent` slot and a `limit` slot of `runner`'s entry until it ends.
pub struct Adopted {
    /// The entry it belongs to (matched by URL and token).
    pub runner: RunnerSection,
    /// Runs the job to its end; the token fires on forced shutdown.
    #[allow(clippy::type_complexity)]
    pub job: Box<
        dyn FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send,
    >,
}

fn limit_size(limit: usize) -> usize {
    if limit == 0 { UNLIMITED } else { limit }
}

/// Per-entry state that outlives one request.
struct Entry {
    /// The entry's settings as of the last reload: a job takes them when GitLab hands it out.
    section: std::sync::RwLock<Arc<RunnerSection>>,
    limit: Capacity,
    requests: Capacity,
    failures: AtomicU32,
    /// Fired to make the entry poll again now (after it got a job).
    again: tokio::sync::Notify,
}

impl Entry {
    fn new(r: &RunnerSection) -> Self {
        Entry {
            section: std::sync::RwLock::new(Arc::new(r.clone())),
            limit: Capacity::new(limit_size(r.limit)),
            requests: Capacity::new(r.request_concurrency.max(1)),
            failures: AtomicU32::new(0),
            again: tokio::sync::Notify::new(),
        }
    }

    fn section(&self) -> Arc<RunnerSection> {
        self.section
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A reload kept this entry: its new settings apply to the jobs it gets from now on.
    fn update(&self, r: &RunnerSection) {
        self.limit.resize(limit_size(r.limit));
        self.requests.resize(r.request_concurrency.max(1));
        *self.section.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(r.clone());
    }
}

pub struct Daemon<S, H> {
    source: Arc<S>,
    handler: Arc<H>,
    /// The job requests in flight.
    requests: TaskTracker,
}

/// Where the jobs of a run go (what `run` and `apply` share).
struct Shared<'a> {
    slots: &'a Arc<Capacity>,
    polling: &'a CancellationToken,
    /// Fired at a handover: the poll loops stop, requests in flight go on.
    paused: &'a CancellationToken,
    jobs: &'a TaskTracker,
    jobs_cancel: &'a CancellationToken,
}

impl<S, H> Daemon<S, H>
where
    S: JobSource,
    H: JobHandler<S::Job>,
{
    pub fn new(source: Arc<S>, handler: Arc<H>) -> Self {
        Daemon {
            source,
            handler,
            requests: TaskTracker::new(),
        }
    }

    /// The job requests in flight (a handover waits for them: docs/crash-safety.md).
    pub fn requests(&self) -> TaskTracker {
        self.requests.clone()
    }

    /// Run until shutdown. `graceful`: stop polling, let running jobs finish. `force`: stop
    /// polling and cancel running jobs (they report themselves failed); returns when they have.
    pub async fn run(
        &self,
        config: watch::Receiver<Arc<Config>>,
        graceful: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
    ) {
        self.run_with(config, Vec::new(), graceful, force, std::future::pending())
            .await
    }

    /// [`run`](Self::run), with jobs already running (`adopted`, each in the slots of its
    /// entry, taken before the first request), and `handover`: stop polling, but let the
    /// requests in flight end (a job they bring runs) and the jobs run on.
    pub async fn run_with(
        &self,
        mut config: watch::Receiver<Arc<Config>>,
        mut adopted: Vec<Adopted>,
        graceful: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
        handover: impl Future<Output = ()>,
    ) {
        let jobs = TaskTracker::new();
        let jobs_cancel = CancellationToken::new();
        let polling = CancellationToken::new();
        let paused = CancellationToken::new();
        let initial = config.borrow_and_update().clone();
        let slots = Arc::new(Capacity::new(initial.global.concurrent.max(1)));
        let mut entries: HashMap<(String, String), (Arc<Entry>, CancellationToken)> =
            HashMap::new();
        let shared = Shared {
            slots: &slots,
            polling: &polling,
            paused: &paused,
            jobs: &jobs,
            jobs_cancel: &jobs_cancel,
        };

        self.apply(&initial, &mut entries, &shared, &mut adopted);
        // An adopted job no entry takes (not in the config): it runs all the same, in a
        // global slot.
        for a in adopted.drain(..) {
            warn!(
                runner = a.runner.token.short(),
                "a resumed job's runner is not polled: it runs in a concurrent slot only"
            );
            let global = slots.take_or_owe();
            let cancel = jobs_cancel.child_token();
            jobs.spawn(async move {
                (a.job)(cancel).await;
                drop(global);
            });
        }

        tokio::pin!(graceful);
        tokio::pin!(force);
        tokio::pin!(handover);
        let forced = loop {
            tokio::select! {
                changed = config.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let cfg = config.borrow_and_update().clone();
                    slots.resize(cfg.global.concurrent.max(1));
                    self.apply(&cfg, &mut entries, &shared, &mut Vec::new());
                }
                _ = &mut handover, if !paused.is_cancelled() => {
                    info!(
                        running = jobs.len(),
                        "handover: stopped polling; requests in flight are answered"
                    );
                    paused.cancel();
                }
                _ = &mut graceful => break false,
                _ = &mut force => break true,
            }
        };
        polling.cancel();
        jobs.close();
        if forced {
            info!(
                running = jobs.len(),
                "forced shutdown: cancelling running jobs"
            );
            jobs_cancel.cancel();
        } else {
            info!(
                running = jobs.len(),
                "graceful shutdown: waiting for running jobs to finish"
            );
        }
        jobs.wait().await;
    }

    /// Start entries that are new, stop those that are gone, give the others their new settings.
    /// A new entry first takes the slots of its `adopted` jobs (removed from the list) and
    /// starts them, then polls.
    fn apply(
        &self,
        cfg: &Config,
        entries: &mut HashMap<(String, String), (Arc<Entry>, CancellationToken)>,
        shared: &Shared<'_>,
        adopted: &mut Vec<Adopted>,
    ) {
        let wanted: Vec<_> = cfg.runners.iter().map(runner_key).collect();
        entries.retain(|key, (entry, stop)| {
            let keep = wanted.contains(key);
            if !keep {
                info!(
                    runner = entry.section().token.short(),
                    "runner removed from config: stopped polling"
                );
                stop.cancel();
            }
            keep
        });
        let n = cfg.runners.len().max(1) as u32;
        let interval = cfg.global.check_interval;
        for (i, r) in cfg.runners.iter().enumerate() {
            let key = runner_key(r);
            if let Some((entry, _)) = entries.get(&key) {
                entry.update(r);
                continue;
            }
            if r.token.expose().is_empty() {
                warn!(runner = %r.name, "runner has no token: skipped");
                continue;
            }
            let entry = Arc::new(Entry::new(r));
            let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(adopted)
                .into_iter()
                .partition(|a| runner_key(&a.runner) == key);
            *adopted = others;
            for a in mine {
                // Both slots are taken now, before this entry's first request.
                let held = (shared.slots.take_or_owe(), entry.limit.take_or_owe());
                let cancel = shared.jobs_cancel.child_token();
                let freed = entry.clone();
                shared.jobs.spawn(async move {
                    (a.job)(cancel).await;
                    drop(held);
                    freed.again.notify_one();
                });
            }
            let stop = shared.polling.child_token();
            info!(runner = r.token.short(), name = %r.name, "runner started polling");
            let offset = interval * i as u32 / n;
            tokio::spawn(poll_loop(Poller {
                entry: entry.clone(),
                source: self.source.clone(),
                handler: self.handler.clone(),
                global: shared.slots.sem.clone(),
                interval,
                offset,
                stop: stop.clone(),
                paused: shared.paused.clone(),
                requests: self.requests.clone(),
                jobs: shared.jobs.clone(),
                jobs_cancel: shared.jobs_cancel.clone(),
            }));
            entries.insert(key, (entry, stop));
        }
    }
}

/// What one runner entry's poll loop works with.
struct Poller<S, H> {
    entry: Arc<Entry>,
    source: Arc<S>,
    handler: Arc<H>,
    /// The `concurrent` slots, shared by every entry.
    global: Arc<Semaphore>,
    /// `check_interval`, and this entry's offset within it (entries are spread over it).
    interval: Duration,
    offset: Duration,
    /// Stops this entry's polling (config reload, shutdown); drops its requests in flight.
    stop: CancellationToken,
    /// Stops this entry's polling, not its requests in flight (handover).
    paused: CancellationToken,
    requests: TaskTracker,
    /// The jobs' tasks, and what cancels them at a forced shutdown.
    jobs: TaskTracker,
    jobs_cancel: CancellationToken,
}

async fn poll_loop<S, H>(poller: Poller<S, H>)
where
    S: JobSource,
    H: JobHandler<S::Job>,
{
    let Poller {
        entry,
        source,
        handler,
        global,
        interval,
        offset,
        stop,
        paused,
        requests,
        jobs,
        jobs_cancel,
    } = poller;
    tokio::select! {
        _ = tokio::time::sleep(offset) => {}
        _ = stop.cancelled() => return,
        _ = paused.cancelled() => return,
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = entry.again.notified() => {}
            _ = stop.cancelled() => return,
            _ = paused.cancelled() => return,
        }
        if paused.is_cancelled() {
            return;
        }
        let section = entry.section();
        let failures = entry.failures.load(Ordering::Relaxed);
        let limit = section.unhealthy_requests_limit.max(1);
        if failures >= limit {
            let park = jittered(section.unhealthy_interval.min(MAX_UNHEALTHY_PARK));
            warn!(
                runner = section.token.short(),
                failures,
                ?park,
                "runner is unhealthy: parked"
            );
            tokio::select! {
                _ = tokio::time::sleep(park) => {}
                _ = stop.cancelled() => return,
                _ = paused.cancelled() => return,
            }
            // One forced request follows; its answer decides whether the entry stays parked.
            // The next tick is a whole interval after it (not at once for the ticks missed
            // while parked), so a GitLab coming back sees one request, not a burst.
            entry.failures.store(limit - 1, Ordering::Relaxed);
            tick.reset();
        }
        // Capacity first: a global slot, a limit slot and a request slot, or no request at all.
        let Ok(request_permit) = entry.requests.sem.clone().try_acquire_owned() else {
            source.request_concurrency_exceeded(&section);
            continue;
        };
        let Ok(global_permit) = global.clone().try_acquire_owned() else {
            debug!(runner = section.token.short(), "no free slot (concurrent)");
            continue;
        };
        let Ok(limit_permit) = entry.limit.sem.clone().try_acquire_owned() else {
            continue;
        };
        let slot = Slot {
            _global: global_permit,
            _limit: limit_permit,
        };
        let (entry, source, handler) = (entry.clone(), source.clone(), handler.clone());
        let (stop, jobs2, jobs_cancel) = (stop.clone(), jobs.clone(), jobs_cancel.clone());
        let global = global.clone();
        requests.spawn(async move {
            let request = source.request_job(&section);
            tokio::pin!(request);
            let mut slot = Some(slot);
            let polled = loop {
                tokio::select! {
                    p = &mut request => break p,
                    _ = stop.cancelled() => return,
                    // Held by long polling: give the slot back so other entries can use it.
                    _ = tokio::time::sleep(HELD_REQUEST), if slot.is_some() => {
                        debug!(runner = section.token.short(), "job request held by GitLab: slot released");
                        slot = None;
                    }
                }
            };
            drop(request_permit);
            match polled {
                Polled::Job(job) => {
                    entry.failures.store(0, Ordering::Relaxed);
                    // A held request that still brought a job (a very slow GitLab): the job
                    // waits for a free slot rather than exceed `concurrent`.
                    let slot = match slot {
                        Some(s) => s,
                        None => Slot::acquire(&global, &entry.limit.sem).await,
                    };
                    // The settings in force now (a reload during the request counts).
                    let runner = entry.section();
                    let cancel = jobs_cancel.child_token();
                    // The slot moves into the job's task and returns when it ends, however it ends.
                    let freed = entry.clone();
                    jobs2.spawn(async move {
                        let held = slot;
                        handler.run_job(runner, job, cancel).await;
                        drop(held);
                        // Capacity is back: ask for the next job now, not at the next tick.
                        freed.again.notify_one();
                    });
                    entry.again.notify_one();
                }
                Polled::Nothing => entry.failures.store(0, Ordering::Relaxed),
                Polled::Failed => {
                    entry.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// `d` shortened by a random part of up to a half, so that runners parked by the same outage
/// do not all come back at the same instant.
pub fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 - fastrand::f64() / 2.0)
}

/// The capacity a job holds while it runs.
struct Slot {
    _global: OwnedSemaphorePermit,
    _limit: OwnedSemaphorePermit,
}

impl Slot {
    async fn acquire(global: &Arc<Semaphore>, limit: &Arc<Semaphore>) -> Slot {
        // The semaphores are never closed, so acquiring only waits.
        let _limit = loop {
            if let Ok(p) = limit.clone().acquire_owned().await {
                break p;
            }
        };
        let _global = loop {
            if let Ok(p) = global.clone().acquire_owned().await {
                break p;
            }
        };
        Slot { _global, _limit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// GitLab as a queue of jobs per runner token; records when each request came.
    #[derive(Default)]
    struct Queue {
        jobs: Mutex<HashMap<String, Vec<u64>>>,
        requests: Mutex<Vec<(String, Instant)>>,
        /// While true, every request fails (an outage).
        down: std::sync::atomic::AtomicBool,
    }

    impl Queue {
        fn push(&self, token: &str, ids: &[u64]) {
            self.jobs
                .lock()
                .unwrap()
                .entry(token.into())
                .or_default()
                .extend_from_slice(ids);
        }
        fn requests_of(&self, token: &str) -> Vec<Instant> {
            self.requests
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| t == token)
                .map(|(_, i)| *i)
                .collect()
        }
    }

    impl JobSource for Queue {
        type Job = u64;
        async fn request_job(&self, runner: &RunnerSection) -> Polled<u64> {
            let token = runner.token.expose().to_string();
            self.requests
                .lock()
                .unwrap()
                .push((token.clone(), Instant::now()));
            if self.down.load(Ordering::Relaxed) {
                return Polled::Failed;
            }
            let mut jobs = self.jobs.lock().unwrap();
            match jobs.get_mut(&token) {
                Some(q) if !q.is_empty() => Polled::Job(q.remove(0)),
                _ => Polled::Nothing,
            }
        }
    }

    /// Jobs that take `secs` seconds; records how many ran at once.
    struct Sleeper {
        secs: u64,
        running: std::sync::atomic::AtomicUsize,
        max_running: std::sync::atomic::AtomicUsize,
        done: Mutex<Vec<(u64, bool)>>,
        started: Mutex<Vec<(u64, Instant)>>,
    }

    impl Sleeper {
        fn new(secs: u64) -> Self {
            Sleeper {
                secs,
                running: 0.into(),
                max_running: 0.into(),
                done: Mutex::default(),
                started: Mutex::default(),
            }
        }
    }

    impl JobHandler<u64> for Sleeper {
        async fn run_job(&self, _runner: Arc<RunnerSection>, job: u64, cancel: CancellationToken) {
            self.started.lock().unwrap().push((job, Instant::now()));
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(self.secs)) => false,
                _ = cancel.cancelled() => true,
            };
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.done.lock().unwrap().push((job, cancelled));
        }
    }

    fn config(text: &str) -> Arc<Config> {
        Arc::new(ferry_config::from_toml_str(text, "test.toml").expect("valid test config"))
    }

    const TWO_RUNNERS: &str = r#"
concurrent = 3
check_interval = 3
[[runners]]
  name = "a"
  url = "https://gitlab.example.com"
  token = "glrt-aaaaaaaa"
  executor = "docker"
  limit = 2
  [runners.docker]
    image = "x"
[[runners]]
  name = "b"
  url = "https://gitlab.example.com"
  token = "glrt-bbbbbbbb"
  executor = "docker"
  [runners.docker]
    image = "x"
"#;

    #[tokio::test(start_paused = true)]
    async fn polls_every_interval_staggered_and_again_after_a_job() {
        let queue = Arc::new(Queue::default());
        let handler = Arc::new(Sleeper::new(1));
        let (_tx, rx) = watch::channel(config(TWO_RUNNERS));
        let daemon = Daemon::new(queue.clone(), handler.clone());
        let start = Instant::now();
        let q = queue.clone();
        let stop = async move {
            tokio::time::sleep(Duration::from_millis(7_500)).await;
            q.push("glrt-aaaaaaaa", &[1]);
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        daemon.run(rx, stop, std::future::pending()).await;
        let a: Vec<u64> = queue
            .requests_of("glrt-aaaaaaaa")
            .iter()
            .map(|i| (*i - start).as_millis() as u64)
            .collect();
        let b: Vec<u64> = queue
            .requests_of("glrt-bbbbbbbb")
            .iter()
            .map(|i| (*i - start).as_millis() as u64)
            .collect();
        // a at 0, 3, 6, 9 (job) then at once again; b staggered by half the interval.
        assert_eq!(&a[..4], &[0, 3000, 6000, 9000], "{a:?}");
        assert_eq!(a[4], 9000, "polled again at once after a job: {a:?}");
        assert_eq!(&b[..3], &[1500, 4500, 7500], "{b:?}");
        assert_eq!(*handler.done.lock().unwrap(), vec![(1, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_and_limit_are_never_exceeded() {
        let queue = Arc::new(Queue::default());
        queue.push("glrt-aaaaaaaa", &[1, 2, 3, 4, 5]);
        queue.push("glrt-bbbbbbbb", &[6, 7, 8, 9]);
        let handler = Arc::new(Sleeper::new(10));
        let (_tx, rx) = watch::channel(config(TWO_RUNNERS));
        let daemon = Daemon::new(queue.clone(), handler.clone());
        daemon
            .run(
                rx,
                tokio::time::sleep(Duration::from_secs(120)),
                std::future::pending(),
            )
            .await;
        assert_eq!(handler.done.lock().unwrap().len(), 9, "every job ran");
        assert_eq!(
            handler.max_running.load(Ordering::SeqCst),
            3,
            "concurrent = 3 reached, not exceeded"
        );
    }

    /// Holds every request of one token for 50 s, like Workhorse long polling, then "no job".
    struct Held {
        inner: Queue,
        held_token: &'static str,
    }

    impl JobSource for Held {
        type Job = u64;
        async fn request_job(&self, runner: &RunnerSection) -> Polled<u64> {
            if runner.token.expose() == self.held_token {
                tokio::time::sleep(Duration::from_secs(50)).await;
                return Polled::Nothing;
            }
            self.inner.request_job(runner).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_does_not_keep_the_only_slot_from_another_runner() {
        let one_slot = TWO_RUNNERS.replace("concurrent = 3", "concurrent = 1");
        let source = Arc::new(Held {
            inner: Queue::default(),
            held_token: "glrt-aaaaaaaa",
        });
        source.inner.push("glrt-bbbbbbbb", &[7]);
        let handler = Arc::new(Sleeper::new(1));
        let (_tx, rx) = watch::channel(config(&one_slot));
        let daemon = Daemon::new(source.clone(), handler.clone());
        let start = Instant::now();
        let h = handler.clone();
        let until_done = async move {
            while h.done.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        daemon.run(rx, until_done, std::future::pending()).await;
        assert_eq!(*handler.done.lock().unwrap(), vec![(7, false)]);
        let waited = Instant::now() - start;
        assert!(
            waited < Duration::from_secs(15),
            "b's job started while a's request was held: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forced_shutdown_cancels_running_jobs_and_waits_for_them() {
        let queue = Arc::new(Queue::default());
        queue.push("glrt-aaaaaaaa", &[1]);
        let handler = Arc::new(Sleeper::new(3600));
        let (_tx, rx) = watch::channel(config(TWO_RUNNERS));
        let daemon = Daemon::new(queue.clone(), handler.clone());
        daemon
            .run(
                rx,
                std::future::pending(),
                tokio::time::sleep(Duration::from_secs(5)),
            )
            .await;
        assert_eq!(
            *handler.done.lock().unwrap(),
            vec![(1, true)],
            "the job saw the cancel and ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn graceful_shutdown_lets_jobs_finish_and_stops_polling() {
        let queue = Arc::new(Queue::default());
        queue.push("glrt-aaaaaaaa", &[1]);
        let handler = Arc::new(Sleeper::new(60));
        let (_tx, rx) = watch::channel(config(TWO_RUNNERS));
        let daemon = Daemon::new(queue.clone(), handler.clone());
        let start = Instant::now();
        daemon
            .run(
                rx,
                tokio::time::sleep(Duration::from_secs(5)),
                std::future::pending(),
            )
            .await;
        assert_eq!(*handler.done.lock().unwrap(), vec![(1, false)]);
        assert!(Instant::now() - start >= Duration::from_secs(60));
        let last = queue
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, i)| *i)
            .max()
            .unwrap();
        assert!(
            last - start <= Duration::from_secs(5),
            "no request after the graceful stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_flow_again_within_a_minute_after_an_outage() {
        let queue = Arc::new(Queue::default());
        queue.down.store(true, Ordering::Relaxed);
        let handler = Arc::new(Sleeper::new(1));
        let (_tx, rx) = watch::channel(config(TWO_RUNNERS));
        let daemon = Daemon::new(queue.clone(), handler.clone());
        let q = queue.clone();
        let start = Instant::now();
        let scenario = async move {
            tokio::time::sleep(Duration::from_secs(300)).await; // a 5-minute outage
            q.down.store(false, Ordering::Relaxed);
            q.push("glrt-aaaaaaaa", &[42]);
            tokio::time::sleep(Duration::from_secs(60)).await;
        };
        daemon.run(rx, scenario, std::future::pending()).await;
        assert_eq!(
            *handler.done.lock().unwrap(),
            vec![(42, false)],
            "the job ran within a minute"
        );
        let during: usize = queue
            .requests_of("glrt-aaaaaaaa")
            .iter()
            .filter(|i| **i - start < Duration::from_secs(300))
            .count();
        assert!(
            during < 40,
            "parked while unhealthy: {during} requests in 5 minutes"
        );
        // Never two requests of the entry within one check_interval (3 s), also right after a
        // park (the ticks missed while parked do not fire at once).
        let times = queue.requests_of("glrt-aaaaaaaa");
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_secs(3) || w[1] - start >= Duration::from_secs(300),
                "two requests {:?} apart at {:?}",
                w[1] - w[0],
                w[0] - start
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reload_starts_new_runners_and_stops_removed_ones() {
        let queue = Arc::new(Queue::default());
        let handler = Arc::new(Sleeper::new(1));
        let one = TWO_RUNNERS
            .split("[[runners]]")
            .take(2)
            .collect::<Vec<_>>()
            .join("[[runners]]");
        let (tx, rx) = watch::channel(config(&one));
        let daemon = Daemon::new(queue.clone(), handler.clone());
        let full = config(TWO_RUNNERS);
        let only_b = config(&TWO_RUNNERS.replacen("glrt-aaaaaaaa", "glrt-cccccccc", 1));
        let scenario = async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.send_replace(full);
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.send_replace(only_b);
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        let start = Instant::now();
        daemon.run(rx, scenario, std::future::pending()).await;
        let b = queue.requests_of("glrt-bbbbbbbb");
        assert!(
            b.iter().all(|i| *i - start >= Duration::from_secs(10)),
            "b starts after the reload"
        );
        assert!(!b.is_empty());
        let a = queue.requests_of("glrt-aaaaaaaa");
        assert!(
            a.iter().all(|i| *i - start <= Duration::from_secs(20)),
            "a stops when removed"
        );
        assert!(!queue.requests_of("glrt-cccccccc").is_empty(), "c starts");
    }

    /// A job's id, and the `environment`, `output_limit` and `limit` it ran with.
    type Seen = (u64, Vec<(String, String)>, u64, usize);

    /// Records the settings each job ran with.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<Seen>>,
    }

    impl JobHandler<u64> for Recorder {
        async fn run_job(&self, runner: Arc<RunnerSection>, job: u64, _cancel: CancellationToken) {
            self.seen.lock().unwrap().push((
                job,
                runner.environment.clone(),
                runner.output_limit,
                runner.limit,
            ));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reload_gives_a_kept_runner_its_new_settings_for_new_jobs_only() {
        let queue = Arc::new(Queue::default());
        queue.push("glrt-aaaaaaaa", &[1]);
        let handler = Arc::new(Recorder::default());
        let before = TWO_RUNNERS.replace(
            "  limit = 2\n",
            "  limit = 2\n  environment = [\"STAGE=old\"]\n  output_limit = 100\n",
        );
        let after = TWO_RUNNERS.replace(
            "  limit = 2\n",
            "  limit = 1\n  environment = [\"STAGE=new\"]\n  output_limit = 200\n",
        );
        let (tx, rx) = watch::channel(config(&before));
        let daemon = Daemon::new(queue.clone(), handler.clone());
        let (q, h) = (queue.clone(), handler.clone());
        let scenario = async move {
            // Job 1 runs from t=0 to t=5; the reload comes while it runs.
            tokio::time::sleep(Duration::from_secs(2)).await;
            tx.send_replace(config(&after));
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(h.seen.lock().unwrap().len(), 1);
            q.push("glrt-aaaaaaaa", &[2, 3]);
            tokio::time::sleep(Duration::from_secs(30)).await;
        };
        daemon.run(rx, scenario, std::future::pending()).await;
        let seen = handler.seen.lock().unwrap().clone();
        let env = |v: &str| vec![("STAGE".to_string(), v.to_string())];
        assert_eq!(
            seen,
            vec![
                (1, env("old"), 100 * 1024, 2),
                (2, env("new"), 200 * 1024, 1),
                (3, env("new"), 200 * 1024, 1),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reloaded_limit_is_never_exceeded_and_can_grow_again() {
        let queue = Arc::new(Queue::default());
        queue.push("glrt-aaaaaaaa", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let handler = Arc::new(Sleeper::new(10));
        let one = TWO_RUNNERS.replace("limit = 2", "limit = 1");
        let (tx, rx) = watch::channel(config(TWO_RUNNERS));
        let daemon = Daemon::new(queue.clone(), handler.clone());
        let h = handler.clone();
        let scenario = async move {
            // Two jobs run (limit 2); the limit drops to 1 while they hold both slots.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(h.running.load(Ordering::SeqCst), 2);
            tx.send_replace(config(&one));
            tokio::time::sleep(Duration::from_secs(5)).await;
            h.max_running.store(0, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(22)).await;
            let under_one = h.max_running.load(Ordering::SeqCst);
            // Back to 2: both slots are usable again.
            tx.send_replace(config(TWO_RUNNERS));
            tokio::time::sleep(Duration::from_secs(5)).await;
            (under_one, h.running.load(Ordering::SeqCst))
        };
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        let scenario = async move {
            let _ = tx2.send(scenario.await);
        };
        daemon.run(rx, scenario, std::future::pending()).await;
        let (under_one, running_after) = rx2.await.unwrap();
        assert_eq!(under_one, 1, "limit = 1 after the reload");
        assert_eq!(running_after, 2, "limit = 2 again after the second reload");
    }

    /// `ids` adopted as resumed jobs of `runner`, each run by `handler`.
    fn adopt(handler: &Arc<Sleeper>, runner: &RunnerSection, ids: &[u64]) -> Vec<Adopted> {
        ids.iter()
            .map(|&id| {
                let (h, r) = (handler.clone(), Arc::new(runner.clone()));
                Adopted {
                    runner: runner.clone(),
                    job: Box::new(move |cancel| {
                        Box::pin(async move { h.run_job(r, id, cancel).await })
                    }),
                }
            })
            .collect()
    }

    fn started_at(handler: &Sleeper, start: Instant) -> HashMap<u64, u64> {
        handler
            .started
            .lock()
            .unwrap()
            .iter()
            .map(|(id, at)| (*id, (*at - start).as_secs()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn adopted_jobs_hold_a_concurrent_and_a_limit_slot_until_they_end() {
        let queue = Arc::new(Queue::default());
        queue.push("glrt-aaaaaaaa", &[1, 2]);
        queue.push("glrt-bbbbbbbb", &[3, 4]);
        let handler = Arc::new(Sleeper::new(10));
        let cfg = config(TWO_RUNNERS); // concurrent = 3; a: limit = 2
        let adopted = adopt(&handler, &cfg.runners[0], &[100, 101]);
        let (_tx, rx) = watch::channel(cfg);
        let daemon = Daemon::new(queue.clone(), handler.clone());
        let start = Instant::now();
        daemon
            .run_with(
                rx,
                adopted,
                tokio::time::sleep(Duration::from_secs(60)),
                std::future::pending(),
                std::future::pending(),
            )
            .await;
        let at = started_at(&handler, start);
        assert_eq!(at.len(), 6, "every job ran: {at:?}");
        assert_eq!((at[&100], at[&101]), (0, 0));
        // b takes the one free concurrent slot at its first poll (1.5 s: staggered); its
        // second job waits for a slot.
        assert!(at[&3] < 10, "{at:?}");
        assert!(at[&4] >= 10, "{at:?}");
        // a's limit (2) is held by the adopted jobs until they end.
        assert!(at[&1] >= 10 && at[&2] >= 10, "{at:?}");
        assert_eq!(handler.max_running.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn adopted_jobs_beyond_the_limits_run_and_no_new_job_starts_until_they_fit() {
        let queue = Arc::new(Queue::default());
        queue.push("glrt-aaaaaaaa", &[1, 2, 3]);
        let handler = Arc::new(Sleeper::new(10));
        let cfg = config(&TWO_RUNNERS.replace("concurrent = 3", "concurrent = 1"));
        let adopted = adopt(&handler, &cfg.runners[0], &[100, 101, 102]);
        let (_tx, rx) = watch::channel(cfg);
        let daemon = Daemon::new(queue.clone(), handler.clone());
        let start = Instant::now();
        let h = handler.clone();
        let scenario = async move {
            tokio::time::sleep(Duration::from_secs(11)).await;
            // The adopted jobs are over: from now on, concurrent = 1 holds.
            h.max_running.store(0, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
        };
        daemon
            .run_with(
                rx,
                adopted,
                scenario,
                std::future::pending(),
                std::future::pending(),
            )
            .await;
        let at = started_at(&handler, start);
        assert_eq!(at.len(), 6, "every job ran: {at:?}");
        for id in [1, 2, 3] {
            assert!(at[&id] >= 10, "{at:?}");
        }
        assert_eq!(handler.max_running.load(Ordering::SeqCst), 1);
    }

    /// Holds the first request for 3 s, then hands out job 9; records requests.
    struct SlowJob {
        inner: Queue,
    }

    impl JobSource for SlowJob {
        type Job = u64;
        async fn request_job(&self, runner: &RunnerSection) -> Polled<u64> {
            let first = self.inner.requests.lock().unwrap().is_empty();
            let polled = self.inner.request_job(runner).await;
            if first {
                tokio::time::sleep(Duration::from_secs(3)).await;
                return Polled::Job(9);
            }
            polled
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_handover_lets_a_request_in_flight_end_runs_its_job_and_sends_no_new_request() {
        let source = Arc::new(SlowJob {
            inner: Queue::default(),
        });
        let handler = Arc::new(Sleeper::new(5));
        let one = TWO_RUNNERS
            .split("[[runners]]")
            .take(2)
            .collect::<Vec<_>>()
            .join("[[runners]]");
        let (_tx, rx) = watch::channel(config(&one));
        let daemon = Daemon::new(source.clone(), handler.clone());
        let requests = daemon.requests();
        let start = Instant::now();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            requests.close();
            requests.wait().await;
            let _ = done_tx.send(Instant::now());
        });
        daemon
            .run_with(
                rx,
                Vec::new(),
                tokio::time::sleep(Duration::from_secs(30)),
                std::future::pending(),
                tokio::time::sleep(Duration::from_secs(1)),
            )
            .await;
        watcher.await.unwrap();
        let drained = done_rx.await.unwrap() - start;
        assert_eq!(drained, Duration::from_secs(3), "waited for the request");
        assert_eq!(*handler.done.lock().unwrap(), vec![(9, false)]);
        assert_eq!(
            source.inner.requests_of("glrt-aaaaaaaa").len(),
            1,
            "no request after the handover"
        );
    }
}
