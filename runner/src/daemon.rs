//! The polling daemon: one task per `[[runners]]` entry asks GitLab for jobs every
//! `check_interval` (entries staggered over the interval, as gitlab-runner does), and again at once
//! after it got a job and when one of its jobs ends (so a freed slot does not wait for the next
//! tick); `concurrent` global slots, `limit` and `request_concurrency` per entry.
//!
//! Capacity is an owned permit: a request takes a global slot and a `limit` slot before it is
//! sent, and moves them into the job's task when GitLab hands out a job, so they return however
//! the job ends. A request whose answer is "no job" gives them back at once.
//!
//! Config reloads arrive on a `watch` channel: new entries start polling, removed ones stop,
//! running jobs are untouched. Shutdown is injected: `graceful` stops polling and waits for the
//! jobs; `force` also cancels every job, which then reports itself failed.

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
    /// No job now (204, 409, 429, 5xx...): a healthy answer.
    Nothing,
    /// The request failed (403, network error): counts toward parking the entry.
    Failed,
}

/// Asks GitLab for a job for one runner entry. The real implementation wraps `GitLabClient`.
pub trait JobSource: Send + Sync + 'static {
    type Job: Send + 'static;
    /// Must not be cancelled half way once GitLab may have handed out a job (it would be lost):
    /// the daemon only drops it on shutdown, as gitlab-runner does.
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

/// Global `concurrent` slots, resizable on reload.
struct GlobalSlots {
    sem: Arc<Semaphore>,
    size: std::sync::Mutex<usize>,
}

impl GlobalSlots {
    fn new(n: usize) -> Self {
        GlobalSlots {
            sem: Arc::new(Semaphore::new(n)),
            size: std::sync::Mutex::new(n),
        }
    }

    fn resize(&self, n: usize) {
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if n > *size {
            self.sem.add_permits(n - *size);
        } else if n < *size {
            // Permits held by running jobs are forgotten as they come back.
            let mut to_forget = *size - n;
            to_forget -= self.sem.forget_permits(to_forget);
            if to_forget > 0 {
                let sem = self.sem.clone();
                tokio::spawn(async move {
                    for _ in 0..to_forget {
                        if let Ok(p) = sem.acquire().await {
                            p.forget();
                        }
                    }
                });
            }
        }
        *size = n;
    }
}

/// Per-entry state that outlives one request.
struct Entry {
    section: Arc<RunnerSection>,
    limit: Option<Arc<Semaphore>>,
    requests: Arc<Semaphore>,
    failures: AtomicU32,
    /// Fired to make the entry poll again now (after it got a job).
    again: tokio::sync::Notify,
}

pub struct Daemon<S, H> {
    source: Arc<S>,
    handler: Arc<H>,
}

impl<S, H> Daemon<S, H>
where
    S: JobSource,
    H: JobHandler<S::Job>,
{
    pub fn new(source: Arc<S>, handler: Arc<H>) -> Self {
        Daemon { source, handler }
    }

    /// Run until shutdown. `graceful`: stop polling, let running jobs finish. `force`: stop
    /// polling and cancel running jobs (they report themselves failed); returns when they have.
    pub async fn run(
        &self,
        mut config: watch::Receiver<Arc<Config>>,
        graceful: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
    ) {
        let jobs = TaskTracker::new();
        let jobs_cancel = CancellationToken::new();
        let polling = CancellationToken::new();
        let initial = config.borrow_and_update().clone();
        let slots = Arc::new(GlobalSlots::new(initial.global.concurrent.max(1)));
        let mut entries: HashMap<(String, String), (Arc<Entry>, CancellationToken)> =
            HashMap::new();

        self.apply(
            &initial,
            &mut entries,
            &slots,
            &polling,
            &jobs,
            &jobs_cancel,
        );

        tokio::pin!(graceful);
        tokio::pin!(force);
        let forced = loop {
            tokio::select! {
                changed = config.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let cfg = config.borrow_and_update().clone();
                    slots.resize(cfg.global.concurrent.max(1));
                    self.apply(&cfg, &mut entries, &slots, &polling, &jobs, &jobs_cancel);
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

    /// Start entries that are new, stop those that are gone.
    fn apply(
        &self,
        cfg: &Config,
        entries: &mut HashMap<(String, String), (Arc<Entry>, CancellationToken)>,
        slots: &Arc<GlobalSlots>,
        polling: &CancellationToken,
        jobs: &TaskTracker,
        jobs_cancel: &CancellationToken,
    ) {
        let wanted: Vec<_> = cfg.runners.iter().map(runner_key).collect();
        entries.retain(|key, (entry, stop)| {
            let keep = wanted.contains(key);
            if !keep {
                info!(
                    runner = entry.section.token.short(),
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
            if entries.contains_key(&key) {
                continue;
            }
            if r.token.expose().is_empty() {
                warn!(runner = %r.name, "runner has no token: skipped");
                continue;
            }
            let entry = Arc::new(Entry {
                section: Arc::new(r.clone()),
                limit: (r.limit > 0).then(|| Arc::new(Semaphore::new(r.limit))),
                requests: Arc::new(Semaphore::new(r.request_concurrency.max(1))),
                failures: AtomicU32::new(0),
                again: tokio::sync::Notify::new(),
            });
            let stop = polling.child_token();
            info!(runner = r.token.short(), name = %r.name, "runner started polling");
            let offset = interval * i as u32 / n;
            tokio::spawn(poll_loop(Poller {
                entry: entry.clone(),
                source: self.source.clone(),
                handler: self.handler.clone(),
                global: slots.sem.clone(),
                interval,
                offset,
                stop: stop.clone(),
                jobs: jobs.clone(),
                jobs_cancel: jobs_cancel.clone(),
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
    /// Stops this entry's polling (config reload, shutdown).
    stop: CancellationToken,
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
        jobs,
        jobs_cancel,
    } = poller;
    tokio::select! {
        _ = tokio::time::sleep(offset) => {}
        _ = stop.cancelled() => return,
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = entry.again.notified() => {}
            _ = stop.cancelled() => return,
        }
        let failures = entry.failures.load(Ordering::Relaxed);
        if failures >= entry.section.unhealthy_requests_limit.max(1) {
            let park = entry.section.unhealthy_interval.min(MAX_UNHEALTHY_PARK);
            warn!(
                runner = entry.section.token.short(),
                failures,
                ?park,
                "runner is unhealthy: parked"
            );
            tokio::select! {
                _ = tokio::time::sleep(park) => {}
                _ = stop.cancelled() => return,
            }
            // One forced request follows; its answer decides whether the entry stays parked.
            entry.failures.store(
                entry.section.unhealthy_requests_limit.max(1) - 1,
                Ordering::Relaxed,
            );
        }
        // Capacity first: a global slot, a limit slot and a request slot, or no request at all.
        let Ok(request_permit) = entry.requests.clone().try_acquire_owned() else {
            source.request_concurrency_exceeded(&entry.section);
            continue;
        };
        let Ok(global_permit) = global.clone().try_acquire_owned() else {
            debug!(
                runner = entry.section.token.short(),
                "no free slot (concurrent)"
            );
            continue;
        };
        let limit_permit = match &entry.limit {
            Some(l) => match l.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => continue,
            },
            None => None,
        };
        let slot = Slot {
            _global: global_permit,
            _limit: limit_permit,
        };
        let (entry, source, handler) = (entry.clone(), source.clone(), handler.clone());
        let (stop, jobs2, jobs_cancel) = (stop.clone(), jobs.clone(), jobs_cancel.clone());
        let global = global.clone();
        tokio::spawn(async move {
            let request = source.request_job(&entry.section);
            tokio::pin!(request);
            let mut slot = Some(slot);
            let polled = loop {
                tokio::select! {
                    p = &mut request => break p,
                    _ = stop.cancelled() => return,
                    // Held by long polling: give the slot back so other entries can use it.
                    _ = tokio::time::sleep(HELD_REQUEST), if slot.is_some() => {
                        debug!(runner = entry.section.token.short(), "job request held by GitLab: slot released");
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
                        None => Slot::acquire(&global, entry.limit.as_ref()).await,
                    };
                    let runner = entry.section.clone();
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

/// The capacity a job holds while it runs.
struct Slot {
    _global: OwnedSemaphorePermit,
    _limit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    async fn acquire(global: &Arc<Semaphore>, limit: Option<&Arc<Semaphore>>) -> Slot {
        // The semaphores are never closed, so acquiring only waits.
        let _limit = match limit {
            Some(l) => l.clone().acquire_owned().await.ok(),
            None => None,
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
    }

    impl Sleeper {
        fn new(secs: u64) -> Self {
            Sleeper {
                secs,
                running: 0.into(),
                max_running: 0.into(),
                done: Mutex::default(),
            }
        }
    }

    impl JobHandler<u64> for Sleeper {
        async fn run_job(&self, _runner: Arc<RunnerSection>, job: u64, cancel: CancellationToken) {
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
}
