//! A scripted [`Host`]: records the host stages it is asked for, and can make one of them fail,
//! fail after writing a line (as a lost connection does), or hang until it is stopped.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ferry_executor::LogSink;
use ferry_executor::artifacts::{ArchiveSummary, ArtifactError, ArtifactSpec, ExtractSummary};
use ferry_executor::cache::{CacheError, CacheSpec};
use ferry_executor::jobfs::Limits;
use ferry_executor::sources::SourceError;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::driver::Host;
use crate::plan::Plan;

/// The host stages the fake can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStage {
    GetSources,
    RestoreCache,
    ExtractArtifacts,
    SaveCache,
    ArchiveArtifacts,
}

/// What a scripted stage does.
#[derive(Debug, Clone)]
pub enum Act {
    /// Fails at once.
    Fail,
    /// Writes a line, then fails as a lost connection or I/O error does.
    Lost,
    /// Waits until it is cancelled, or [`HANG`] has passed (then succeeds).
    Hang,
    /// Succeeds, and fires the token as it returns (a signal between two stages).
    Signal(CancellationToken),
    /// Fails at once the first `n` times the stage is entered, then succeeds.
    FailTimes(usize),
}

/// How long a hanging stage waits for its cancellation before it gives up and succeeds: stages
/// that run through GitLab's `canceling` are never cancelled by it.
pub const HANG: Duration = Duration::from_millis(1500);

#[derive(Debug, Default)]
pub struct FakeHost {
    pub script: Option<(HostStage, Act)>,
    pub entered: Mutex<Vec<HostStage>>,
}

impl FakeHost {
    pub fn with(stage: HostStage, act: Act) -> FakeHost {
        FakeHost {
            script: Some((stage, act)),
            ..FakeHost::default()
        }
    }

    pub fn entered(&self, stage: HostStage) -> bool {
        self.entered.lock().unwrap().contains(&stage)
    }

    /// Enters `stage`: `Ok(())` to go on as a working host would, `Err(act)` when scripted and
    /// done acting (`Hang`: cancelled; `Fail`/`Lost`: the line is written).
    async fn enter(
        &self,
        stage: HostStage,
        log: Option<&mut LogSink<'_>>,
        cancel: &CancellationToken,
    ) -> Result<(), Act> {
        let times = {
            let mut entered = self.entered.lock().unwrap();
            entered.push(stage);
            entered.iter().filter(|s| **s == stage).count()
        };
        match &self.script {
            Some((s, Act::FailTimes(n))) if *s == stage => {
                if times <= *n {
                    Err(Act::Fail)
                } else {
                    Ok(())
                }
            }
            Some((s, act)) if *s == stage => match act {
                Act::Fail | Act::FailTimes(_) => Err(Act::Fail),
                Act::Lost => {
                    if let Some(log) = log {
                        let _ = log.write_all(b"partial output\n").await;
                    }
                    Err(Act::Lost)
                }
                Act::Hang => {
                    tokio::select! {
                        _ = cancel.cancelled() => Err(Act::Hang),
                        _ = tokio::time::sleep(HANG) => Ok(()),
                    }
                }
                Act::Signal(token) => {
                    token.cancel();
                    Ok(())
                }
            },
            _ => Ok(()),
        }
    }
}

fn io(act: Act) -> std::io::Error {
    match act {
        Act::Hang | Act::Signal(_) => std::io::Error::other("cancelled"),
        _ => std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"),
    }
}

impl Host for FakeHost {
    async fn create_dirs(&self, _plan: &Plan) -> std::io::Result<()> {
        Ok(())
    }

    async fn write_file_variables(&self, _plan: &Plan, _user: Option<&str>) -> std::io::Result<()> {
        Ok(())
    }

    async fn remove_file_variables(&self, _plan: &Plan) -> std::io::Result<()> {
        Ok(())
    }

    async fn get_sources(
        &self,
        _plan: &Plan,
        _hook_config: &[(String, String)],
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let _ = log.write_all(b"Fetching changes...\n").await;
        self.enter(HostStage::GetSources, Some(log), cancel)
            .await
            .map_err(|act| match act {
                Act::Fail | Act::FailTimes(_) => SourceError::Git {
                    command: "fetch origin".into(),
                    status: "exit status: 128".into(),
                    output: "fatal: repository not found".into(),
                },
                Act::Lost => SourceError::Io {
                    context: "reading the repository".into(),
                    source: io(act),
                },
                Act::Hang | Act::Signal(_) => SourceError::Cancelled,
            })
    }

    async fn restore_cache(
        &self,
        _plan: &Plan,
        _cache: &CacheSpec,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> Result<(), CacheError> {
        self.enter(HostStage::RestoreCache, Some(log), &limits.cancel)
            .await
            .map_err(|act| match act {
                Act::Hang => CacheError::Cancelled,
                _ => CacheError::Log(io(act)),
            })
    }

    async fn save_cache(
        &self,
        _plan: &Plan,
        _cache: &CacheSpec,
        _succeeded: bool,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> Result<(), CacheError> {
        self.enter(HostStage::SaveCache, Some(log), &limits.cancel)
            .await
            .map_err(|act| match act {
                Act::Hang => CacheError::Cancelled,
                _ => CacheError::Log(io(act)),
            })
    }

    async fn extract_artifacts(
        &self,
        _plan: &Plan,
        archive: &Path,
        limits: &Limits,
    ) -> Result<ExtractSummary, ArtifactError> {
        self.enter(HostStage::ExtractArtifacts, None, &limits.cancel)
            .await
            .map_err(|act| match act {
                Act::Hang => ArtifactError::Cancelled,
                _ => ArtifactError::Read {
                    path: archive.to_path_buf(),
                    message: "unexpected end of file".into(),
                },
            })?;
        Ok(ExtractSummary {
            files: 2,
            bytes: 10,
            notes: vec![],
        })
    }

    async fn archive_artifacts(
        &self,
        _plan: &Plan,
        _spec: &ArtifactSpec,
        out: &Path,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> Result<ArchiveSummary, ArtifactError> {
        self.enter(HostStage::ArchiveArtifacts, Some(log), &limits.cancel)
            .await
            .map_err(|act| match act {
                Act::Hang => ArtifactError::Cancelled,
                _ => ArtifactError::Write {
                    path: out.to_path_buf(),
                    source: io(act),
                },
            })?;
        Ok(ArchiveSummary {
            files: 1,
            bytes: 5,
            archive_bytes: 100,
            notes: vec![],
        })
    }
}
