//! The journal of running jobs (docs/crash-safety.md): what a later `ferry run` needs to find,
//! report and clean up the jobs of a ferry process that went away (killed, crashed, handed
//! over).
//!
//! One file per job, `<working_dir>/journal/<runner short token>-<job id>.json`, mode 0600 in a
//! directory of mode 0700 that no container mounts: it holds the job's payload, whose job token
//! and variables are secrets. A file is replaced whole at each change of the job's stage (write
//! a temporary file, rename; no fsync): a handful of small writes per job,
//! never one per output line. It is removed once GitLab has the job's final state.
//!
//! A file that cannot be read back (truncated, edited, another version) is moved aside to
//! `<name>.corrupt` with a warning; it never stops ferry.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::gitlab::payload::JobPayload;
use crate::trace::Checkpoint;

/// The format of an entry; an entry of another version is not resumed.
pub const VERSION: u32 = 1;

/// How far a job got, as a later ferry needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Before the steps: the project dir's claim, sources, cache, dependencies, the
    /// containers' start. None of these is resumed half way.
    Prepare,
    /// A step of the build container runs (`index` in the plan's steps, `name` its
    /// `StepSpec::name`), started at `started_ms` (ms since the epoch); its output is kept in
    /// its `.log` file in the steps dir. `trace` is where the job log stood as it started
    /// (none if something was held back then); `clean`: nothing had failed or stopped the job.
    Step {
        index: usize,
        name: String,
        started_ms: u64,
        trace: Option<Checkpoint>,
        clean: bool,
    },
    /// A `ferry deploy` line of a deploy job runs (`index` in the plan's deploy commands),
    /// started at `started_ms`; `trace` is where the job log stood as it started (after its
    /// section header) or as its phase last changed; `phase`, how far it got. A later ferry
    /// applies it again and continues its wait (docs/crash-safety.md).
    Deploy {
        index: usize,
        started_ms: u64,
        trace: Option<Checkpoint>,
        phase: DeployPhase,
    },
    /// After the steps: sync_out, cache, artifacts. Written as they start and again as each
    /// cache save and each artifacts upload completes. `trace` is where the job log stood
    /// then (none: it cannot be continued, the stage is not resumed), and GitLab has no byte
    /// past it; `failure` and `exit_code` are the steps' outcome (none: success), as in
    /// `Final`; `caches_done` and `artifacts_done` count the caches saved and the artifacts
    /// (of those due) uploaded. An entry of an earlier ferry holds only the stage.
    AfterSteps {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<Checkpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default)]
        caches_done: usize,
        #[serde(default)]
        artifacts_done: usize,
    },
    /// The final update is being sent (everything else is done): `failure` is the reason
    /// (none: success) and `exit_code` the script's.
    Final {
        failure: Option<String>,
        exit_code: Option<i32>,
    },
}

/// How far a `ferry deploy` line got (`ferry_deploy::Phase`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum DeployPhase {
    /// Reading, rendering, applying the manifests.
    Applying,
    /// Waiting for the workloads since `since_ms`; `changed`: the objects it created or
    /// configured (their display names, e.g. `deployment.apps/web`).
    Waiting { since_ms: u64, changed: Vec<String> },
    /// A rollout failed: diagnosis and rollback (not resumed: applying again would undo the
    /// rollback).
    Failed,
}

/// One job in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    /// The short token of the runner entry (`RunnerToken::short`) that runs it.
    pub runner: String,
    /// The GitLab URL of that entry.
    pub url: String,
    /// The runner's `CI_RUNNER_SHORT_TOKEN`, which labels the job's containers (an entry of an
    /// earlier ferry may lack it: its containers cannot be told from another runner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_label: Option<String>,
    pub job_id: u64,
    pub project_id: u64,
    /// The job as GitLab sent it (its token and variables included).
    pub payload: JobPayload,
    /// `CI_CONCURRENT_ID` and `CI_CONCURRENT_PROJECT_ID` (the project dir depends on them).
    pub concurrent_id: usize,
    pub concurrent_project_id: usize,
    /// When the job started and when its timeout ends, ms since the epoch (wall clock: the
    /// timeout counts while no ferry runs).
    pub started_ms: u64,
    pub deadline_ms: u64,
    pub stage: Stage,
    /// The job runs in Docker containers (a deploy job runs none).
    pub docker: bool,
}

impl Entry {
    /// The file name of this entry.
    pub fn file_name(&self) -> String {
        file_name(&self.runner, self.job_id)
    }

    /// The job's deadline as a wall-clock time.
    pub fn deadline(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.deadline_ms)
    }
}

/// Milliseconds since the epoch of `t` (0 before it).
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn file_name(runner: &str, job_id: u64) -> String {
    let runner: String = runner
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{runner}-{job_id}.json")
}

/// What reading the journal found.
#[derive(Debug, Default)]
pub struct Found {
    pub entries: Vec<Entry>,
    /// One line per file that could not be used (moved aside as `.corrupt`).
    pub warnings: Vec<String>,
}

/// The journal directory of one `ferry run`.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    /// The jobs of this process still being prepared (by entry file name), and since when
    /// each one's first step is journaled (a handover waits for them: docs/crash-safety.md).
    preparing: Arc<Mutex<HashMap<String, Option<Instant>>>>,
}

/// How long after its first step is journaled a job still counts as being prepared: the time
/// the step's `docker exec` needs to start (a later ferry gives it 5 s to write its `.pids`).
pub const STEP_START_GRACE: Duration = Duration::from_secs(2);

impl Journal {
    /// `<working_dir>/journal`, created (mode 0700) if missing; a link there is refused.
    pub fn open(working_dir: &Path) -> std::io::Result<Journal> {
        let dir = working_dir.join("journal");
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
            }
            Err(e) => return Err(e),
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Journal {
            dir,
            preparing: Arc::default(),
        })
    }

    fn preparing(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Instant>>> {
        self.preparing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// GitLab handed out this job: it is being prepared until its first step is journaled
    /// (and [`STEP_START_GRACE`] has passed), its final update is, or it ends.
    pub fn received(&self, runner: &str, job_id: u64) {
        self.preparing().insert(file_name(runner, job_id), None);
    }

    /// The job ended (its entry may be kept, e.g. if it could not be removed).
    pub fn ended(&self, runner: &str, job_id: u64) {
        self.preparing().remove(&file_name(runner, job_id));
    }

    /// How many jobs of this process are still being prepared at `now`: a later ferry could
    /// not resume them (docs/crash-safety.md).
    pub fn being_prepared(&self, now: Instant) -> usize {
        self.preparing()
            .values()
            .filter(|stepped| stepped.is_none_or(|at| now < at + STEP_START_GRACE))
            .count()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the job's entry with `entry`, atomically (blocking: call off the async
    /// workers).
    pub fn write(&self, entry: &Entry) -> std::io::Result<()> {
        let name = entry.file_name();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let data = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&data)?;
        drop(f);
        // No fsync: the page cache outlives ferry's process (what the journal is for); a power
        // loss also takes the containers, and costs at worst the job's entry (docs/crash-safety.md).
        std::fs::rename(&tmp, self.dir.join(&name))?;
        match entry.stage {
            Stage::Prepare => {}
            Stage::Step { .. } => {
                if let Some(stepped @ None) = self.preparing().get_mut(&name) {
                    *stepped = Some(Instant::now());
                }
            }
            // A deploy line runs in ferry's process: a later ferry applies it again.
            Stage::Deploy { .. } | Stage::AfterSteps { .. } | Stage::Final { .. } => {
                self.preparing().remove(&name);
            }
        }
        Ok(())
    }

    /// Removes the job's entry (missing is fine).
    pub fn remove(&self, runner: &str, job_id: u64) -> std::io::Result<()> {
        self.ended(runner, job_id);
        match std::fs::remove_file(self.dir.join(file_name(runner, job_id))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every entry; a file that is not one is moved aside with a warning (blocking).
    pub fn read_all(&self) -> Found {
        let mut found = Found::default();
        let list = match std::fs::read_dir(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                found
                    .warnings
                    .push(format!("reading the journal {}: {e}", self.dir.display()));
                return found;
            }
        };
        let mut names: Vec<String> = list
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let path = self.dir.join(&name);
            match read_entry(&path) {
                Ok(e) if e.file_name() == name => found.entries.push(e),
                Ok(_) => found
                    .warnings
                    .push(self.set_aside(&path, "its job and runner do not match its name")),
                Err(why) => found.warnings.push(self.set_aside(&path, &why)),
            }
        }
        found
    }

    fn set_aside(&self, path: &Path, why: &str) -> String {
        let aside = path.with_extension("json.corrupt");
        match std::fs::rename(path, &aside) {
            Ok(()) => format!(
                "journal entry {} is not usable ({why}): skipped, kept as {}",
                path.display(),
                aside.display()
            ),
            Err(e) => format!(
                "journal entry {} is not usable ({why}): skipped (moving it aside failed: {e})",
                path.display()
            ),
        }
    }
}

/// The most a journal entry may hold (a payload is far smaller).
const MAX_ENTRY_BYTES: u64 = 64 * 1024 * 1024;

fn read_entry(path: &Path) -> Result<Entry, String> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut data = Vec::new();
    f.take(MAX_ENTRY_BYTES)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(&data).map_err(|e| format!("not JSON: {e}"))?;
    if v.version != VERSION {
        return Err(format!(
            "version {} (this ferry reads {VERSION})",
            v.version
        ));
    }
    serde_json::from_slice(&data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job_id: u64) -> Entry {
        let payload: JobPayload = serde_json::from_value(serde_json::json!({
            "id": job_id,
            "token": "glcbt-secret",
        }))
        .unwrap();
        Entry {
            version: VERSION,
            runner: "t1_abcd".into(),
            url: "https://gitlab.example.com".into(),
            runner_label: None,
            job_id,
            project_id: 7,
            payload,
            concurrent_id: 0,
            concurrent_project_id: 0,
            started_ms: 1,
            deadline_ms: 3_600_001,
            stage: Stage::Step {
                index: 0,
                name: "script".into(),
                started_ms: 2,
                trace: Some(Checkpoint {
                    at: 100,
                    crc: 7,
                    accepted: 90,
                    pending: b"0123456789".to_vec(),
                }),
                clean: true,
            },
            docker: true,
        }
    }

    #[test]
    fn entries_are_written_private_read_back_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(j.dir()), 0o700);
        j.write(&entry(5)).unwrap();
        let mut e = entry(5);
        e.stage = Stage::AfterSteps {
            trace: None,
            failure: Some("script_failure".into()),
            exit_code: Some(3),
            caches_done: 1,
            artifacts_done: 2,
        };
        j.write(&e).unwrap();
        let file = j.dir().join(e.file_name());
        assert_eq!(mode(&file), 0o600);
        let found = j.read_all();
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
        assert_eq!(found.entries.len(), 1);
        assert_eq!(found.entries[0].stage, e.stage);
        j.write(&entry(5)).unwrap();
        assert_eq!(j.read_all().entries[0].stage, entry(5).stage);
        assert_eq!(found.entries[0].payload.token, "glcbt-secret");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(j.dir()).unwrap().count(), 1);
        j.remove("t1_abcd", 5).unwrap();
        j.remove("t1_abcd", 5).unwrap();
        assert!(j.read_all().entries.is_empty());
    }

    #[test]
    fn a_deploy_stage_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mut e = entry(9);
        e.docker = false;
        e.stage = Stage::Deploy {
            index: 1,
            started_ms: 5,
            trace: None,
            phase: DeployPhase::Waiting {
                since_ms: 6,
                changed: vec!["deployment.apps/web".into()],
            },
        };
        j.write(&e).unwrap();
        let text = std::fs::read_to_string(j.dir().join(e.file_name())).unwrap();
        assert!(text.contains("\"stage\":\"deploy\""), "{text}");
        assert_eq!(j.read_all().entries[0].stage, e.stage);
    }

    #[test]
    fn a_corrupt_entry_is_set_aside_with_a_warning_and_the_others_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.write(&entry(1)).unwrap();
        std::fs::write(j.dir().join("t1_abcd-2.json"), b"{\"version\": 1, \"runn").unwrap();
        std::fs::write(j.dir().join("t1_abcd-3.json"), b"{\"version\": 99}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", j.dir().join("t1_abcd-4.json")).unwrap();
        // An entry under another job's name.
        let data = serde_json::to_vec(&entry(6)).unwrap();
        std::fs::write(j.dir().join("t1_abcd-7.json"), data).unwrap();
        let found = j.read_all();
        assert_eq!(found.entries.len(), 1, "{:?}", found.warnings);
        assert_eq!(found.entries[0].job_id, 1);
        assert_eq!(found.warnings.len(), 4, "{:?}", found.warnings);
        assert!(found.warnings.iter().any(|w| w.contains("version 99")));
        assert!(j.dir().join("t1_abcd-2.json.corrupt").exists());
        // Set aside: the next start does not warn again.
        assert!(j.read_all().warnings.is_empty());
    }

    #[test]
    fn an_after_steps_entry_of_an_earlier_ferry_reads_as_not_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mut v = serde_json::to_value(entry(8)).unwrap();
        v["stage"] = serde_json::json!({"stage": "after_steps"});
        std::fs::write(
            j.dir().join("t1_abcd-8.json"),
            serde_json::to_vec(&v).unwrap(),
        )
        .unwrap();
        let found = j.read_all();
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
        assert_eq!(
            found.entries[0].stage,
            Stage::AfterSteps {
                trace: None,
                failure: None,
                exit_code: None,
                caches_done: 0,
                artifacts_done: 0,
            }
        );
    }

    #[test]
    fn a_job_is_being_prepared_until_shortly_after_its_first_step_or_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let now = Instant::now();
        assert_eq!(j.being_prepared(now), 0);
        j.received("t1_abcd", 5);
        j.received("t1_abcd", 6);
        let mut e = entry(5);
        e.stage = Stage::Prepare;
        j.write(&e).unwrap();
        assert_eq!(j.being_prepared(Instant::now()), 2);
        e.stage = entry(5).stage; // its first step
        j.write(&e).unwrap();
        let stepped = Instant::now();
        assert_eq!(
            j.being_prepared(stepped),
            2,
            "the step's exec may not run yet"
        );
        assert_eq!(j.being_prepared(stepped + STEP_START_GRACE), 1);
        // A later stage does not make it prepared again; its end forgets it.
        e.stage = Stage::Prepare;
        j.write(&e).unwrap();
        assert_eq!(j.being_prepared(stepped + STEP_START_GRACE), 1);
        j.ended("t1_abcd", 6);
        assert_eq!(j.being_prepared(stepped + STEP_START_GRACE), 0);
        // The final update's stage, or the entry's removal, ends it at once.
        j.received("t1_abcd", 7);
        let mut f = entry(7);
        f.stage = Stage::Final {
            failure: None,
            exit_code: None,
        };
        j.write(&f).unwrap();
        let later = Instant::now() + STEP_START_GRACE; // job 5's grace is over
        assert_eq!(j.being_prepared(later), 0);
        j.received("t1_abcd", 8);
        assert_eq!(j.being_prepared(later), 1);
        j.remove("t1_abcd", 8).unwrap();
        assert_eq!(j.being_prepared(later), 0);
    }

    #[test]
    fn a_link_in_place_of_the_journal_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("journal")).unwrap();
        assert!(Journal::open(dir.path()).is_err());
    }
}
