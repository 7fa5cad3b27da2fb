//! Job artifacts on the host: building the archive GitLab expects from a finished job's
//! project dir, and unpacking the archives of dependencies before the script runs.
//!
//! This module knows nothing about GitLab's JSON or HTTP: the runner turns each `artifacts[]`
//! entry of the payload into an [`ArtifactSpec`], calls [`create_archive`] (or [`archive`]),
//! uploads the file itself, and for each dependency downloads the zip and calls
//! [`extract_archive`] (or [`extract`]).

mod gzip;
pub mod paths;
mod zipfmt;

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::compression::CompressionLevel;
use crate::engine::LogSink;
use crate::hostio::{self, Level};
use crate::jobfs::{JobDir, Limits, is_fatal};

pub use paths::{Entry, EntryKind, Selection, select};

/// `when:` for artifacts and caches (the one type for steps, artifacts and caches).
pub use ferry_config::When;

/// `artifact_format` from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactFormat {
    /// One zip of all matched paths (the job archive, `lsif`).
    #[default]
    Zip,
    /// One gzip member per matched file, concatenated (JUnit and most reports).
    Gzip,
    /// The bytes of exactly one file (security reports).
    Raw,
}

impl ArtifactFormat {
    /// `None` for a format ferry cannot produce (e.g. `zipzstd`), so the runner can refuse it.
    pub fn parse(s: &str) -> Option<ArtifactFormat> {
        match s {
            "" | "zip" => Some(ArtifactFormat::Zip),
            "gzip" => Some(ArtifactFormat::Gzip),
            "raw" => Some(ArtifactFormat::Raw),
            _ => None,
        }
    }

    /// The extension the official runner appends to the upload's file name.
    pub fn extension(self) -> &'static str {
        match self {
            ArtifactFormat::Zip => ".zip",
            ArtifactFormat::Gzip => ".gz",
            ArtifactFormat::Raw => "",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactFormat::Zip => "zip",
            ArtifactFormat::Gzip => "gzip",
            ArtifactFormat::Raw => "raw",
        }
    }
}

/// One `artifacts[]` entry of the payload, with variables already expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactSpec {
    /// Payload `name`; `None`/empty means `artifacts`.
    pub name: Option<String>,
    /// Relative to the project dir; doublestar globs allowed. Use [`strip_project_prefix`]
    /// first for paths written as `$CI_PROJECT_DIR/...`.
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub untracked: bool,
    pub when: When,
    /// Passed through to the upload unparsed (`"1 week"`, `"never"`).
    pub expire_in: Option<String>,
    /// `archive`, `junit`, `dotenv`, ... passed through to the upload.
    pub artifact_type: String,
    pub format: ArtifactFormat,
    /// `ARTIFACT_COMPRESSION_LEVEL`: the deflate level of zip entries (gzip reports keep
    /// gitlab-runner's fixed level, as its gzip archiver does).
    #[serde(skip_serializing_if = "CompressionLevel::is_default")]
    pub compression: CompressionLevel,
}

impl ArtifactSpec {
    /// The file name the official runner uses in the multipart upload
    /// (`artifacts.zip`, `junit.xml.gz`, ...).
    pub fn upload_file_name(&self) -> String {
        let base = match self.name.as_deref() {
            Some(n) if !n.is_empty() => n,
            _ => "artifacts",
        };
        format!("{base}{}", self.format.extension())
    }
}

/// A line to show in the job log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub text: String,
}

impl Note {
    pub fn info(text: impl Into<String>) -> Note {
        Note {
            warning: false,
            text: text.into(),
        }
    }

    pub fn warning(text: impl Into<String>) -> Note {
        Note {
            warning: true,
            text: text.into(),
        }
    }

    /// The line as gitlab-runner colours it, newline included.
    pub fn to_log_line(&self) -> String {
        hostio::line(
            if self.warning {
                Level::Warning
            } else {
                Level::Plain
            },
            &self.text,
        )
    }
}

pub(crate) async fn write_notes(log: &mut LogSink<'_>, notes: &[Note]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    for n in notes {
        log.write_all(n.to_log_line().as_bytes()).await?;
    }
    Ok(())
}

/// What [`create_archive`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Files and symlinks in the archive (directories not counted). 0 = nothing matched and
    /// no archive file was written: the runner must skip the upload.
    pub files: usize,
    /// Uncompressed bytes of the files.
    pub bytes: u64,
    /// Size of the archive written.
    pub archive_bytes: u64,
    /// Lines for the job log (`path: found N matching artifact files and directories`,
    /// warnings), in order.
    pub notes: Vec<Note>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("reading project directory {path}: {source}")]
    ProjectDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing artifacts archive {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading artifacts archive {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("artifact format raw needs exactly one file, {found} matched")]
    RawNeedsOneFile { found: usize },
    #[error("writing job log: {0}")]
    Log(#[source] io::Error),
    /// A bound on host-side work was hit, or the job's deadline passed (docs/security.md).
    #[error("{0}")]
    Limit(String),
    #[error("cancelled")]
    Cancelled,
}

/// For paths written as `$CI_PROJECT_DIR/dist` (expanded to the container's project dir,
/// e.g. `/builds/acme/app/dist`): turns them into `dist`. Other paths are returned unchanged.
pub fn strip_project_prefix(path: &str, container_project_dir: &str) -> String {
    let dir = container_project_dir.trim_end_matches('/');
    if dir.is_empty() {
        return path.to_string();
    }
    match path.strip_prefix(dir) {
        Some("") => ".".to_string(),
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/').to_string(),
        _ => path.to_string(),
    }
}

/// Selects the files `spec` asks for in `project_dir` and writes them to `out_file` in
/// `spec.format`. Blocking; see [`archive`] for the async, logging wrapper.
pub fn create_archive(
    project_dir: &Path,
    spec: &ArtifactSpec,
    out_file: &Path,
    limits: &Limits,
) -> Result<ArchiveSummary, ArtifactError> {
    let dir_err = |e: io::Error| {
        if is_fatal(&e) {
            ArtifactError::Limit(e.to_string())
        } else {
            ArtifactError::ProjectDir {
                path: project_dir.to_path_buf(),
                source: e,
            }
        }
    };
    let dir = JobDir::open(project_dir).map_err(dir_err)?;
    let sel = select(&dir, &spec.paths, &spec.exclude, spec.untracked, limits).map_err(dir_err)?;
    let files = sel.file_count();
    let bytes = sel.total_bytes();
    let mut notes = sel.notes.clone();
    if files == 0 && (spec.format != ArtifactFormat::Zip || sel.entries.is_empty()) {
        notes.push(Note::warning("No files to upload"));
        return Ok(ArchiveSummary {
            files: 0,
            bytes: 0,
            archive_bytes: 0,
            notes,
        });
    }
    let write_err = |e: io::Error| ArtifactError::Write {
        path: out_file.to_path_buf(),
        source: e,
    };
    match spec.format {
        ArtifactFormat::Zip => {
            zipfmt::write_zip(&dir, &sel, out_file, spec.compression).map_err(write_err)?
        }
        ArtifactFormat::Gzip => gzip::write_gzip(&dir, &sel, out_file).map_err(write_err)?,
        ArtifactFormat::Raw => {
            let regular: Vec<&String> = sel
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.kind, EntryKind::File { .. }))
                .map(|(k, _)| k)
                .collect();
            if regular.len() != 1 {
                return Err(ArtifactError::RawNeedsOneFile {
                    found: regular.len(),
                });
            }
            copy_regular(&dir, regular[0], out_file).map_err(write_err)?;
        }
    }
    let archive_bytes = std::fs::metadata(out_file).map_err(write_err)?.len();
    Ok(ArchiveSummary {
        files,
        bytes,
        archive_bytes,
        notes,
    })
}

fn copy_regular(dir: &JobDir, rel: &str, dst: &Path) -> io::Result<()> {
    let f = dir.open_file(Path::new(rel))?;
    let size = f.metadata()?.len();
    let mut out = std::fs::File::create(dst)?;
    io::copy(&mut io::Read::take(f, size), &mut out)?;
    Ok(())
}

/// Async wrapper around [`create_archive`]: runs it off the async threads and writes the
/// notes and a summary line to `log`.
pub async fn archive(
    project_dir: &Path,
    spec: &ArtifactSpec,
    out_file: &Path,
    log: &mut LogSink<'_>,
    limits: &Limits,
) -> Result<ArchiveSummary, ArtifactError> {
    let (dir, sp, out, lim) = (
        project_dir.to_path_buf(),
        spec.clone(),
        out_file.to_path_buf(),
        limits.clone(),
    );
    let summary = tokio::task::spawn_blocking(move || create_archive(&dir, &sp, &out, &lim))
        .await
        .map_err(|e| ArtifactError::Write {
            path: out_file.to_path_buf(),
            source: io::Error::other(e.to_string()),
        })??;
    write_notes(log, &summary.notes)
        .await
        .map_err(ArtifactError::Log)?;
    if summary.files > 0 {
        hostio::write(
            log,
            Level::Plain,
            &format!(
                "{}: {} files, {} ({} compressed)",
                spec.upload_file_name(),
                summary.files,
                hostio::human_bytes(summary.bytes),
                hostio::human_bytes(summary.archive_bytes)
            ),
        )
        .await
        .map_err(ArtifactError::Log)?;
    }
    Ok(summary)
}

/// What [`extract_archive`] unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractSummary {
    pub files: usize,
    pub bytes: u64,
    /// Warnings about entries that were refused (escaping paths, symlinked parents).
    pub notes: Vec<Note>,
}

/// Unpacks a dependency's zip into `project_dir`. Entries whose path would leave the project
/// dir (`../x`, absolute paths, or a parent that is a symlink) are refused with a warning.
pub fn extract_archive(
    zip_file: &Path,
    project_dir: &Path,
    limits: &Limits,
) -> Result<ExtractSummary, ArtifactError> {
    let dir = JobDir::create(project_dir, 0o777).map_err(|e| ArtifactError::ProjectDir {
        path: project_dir.to_path_buf(),
        source: e,
    })?;
    zipfmt::extract_zip(zip_file, &dir, limits, None)
}

/// Where [`extract_into_tree`] never writes, besides every `.git`.
#[derive(Debug, Clone, Default)]
pub struct TreeRules {
    /// Paths relative to the tree: entries at or below them are skipped with a warning.
    pub refused: Vec<PathBuf>,
}

/// Permission bits a file unpacked into a user's tree keeps: no write bit for group and
/// others, no set-id or sticky bit (as a checkout with the usual umask 022 makes them).
pub const TREE_MODE_MASK: u32 = 0o755;

impl TreeRules {
    /// Why the entry `rel` (a clean relative path) is not written, if it is not.
    fn refuses(&self, rel: &Path) -> Option<String> {
        // `.git` in any letter case: git treats `.GIT` as its own dir on case-insensitive file
        // systems, and a nested repository's hooks run as the user too.
        if rel
            .components()
            .any(|c| c.as_os_str().eq_ignore_ascii_case(".git"))
        {
            return Some("ferry never writes into a .git directory".into());
        }
        self.refused
            .iter()
            .find(|r| rel.starts_with(r))
            .map(|r| format!("ferry never writes into {}/", r.display()))
    }
}

/// Whether the link `rel` -> `target` resolves, by its text, to a path inside the tree: not
/// absolute, and its `..` never climb above the tree's top.
fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    use std::path::Component;
    let mut depth = rel.components().count().saturating_sub(1) as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Unpacks a job's `archive` artifact into a tree ferry does not own (`ferry exec
/// --artifacts-to-source`: the user's working tree, docs/exec.md). As [`extract_archive`]:
/// nothing is followed through a link, nothing lands outside `tree`, within `limits`; and
/// besides: nothing is written into a `.git` or a `rules.refused` path, a directory is never
/// replaced (a file entry where one is is skipped), links must point inside the tree, new
/// directories are 0755 and files keep at most [`TREE_MODE_MASK`]. Existing files are
/// overwritten, as GitLab's artifact download overwrites them. `tree` must exist.
pub fn extract_into_tree(
    zip_file: &Path,
    tree: &Path,
    rules: &TreeRules,
    limits: &Limits,
) -> Result<ExtractSummary, ArtifactError> {
    let dir = JobDir::open(tree).map_err(|e| ArtifactError::ProjectDir {
        path: tree.to_path_buf(),
        source: e,
    })?;
    zipfmt::extract_zip(zip_file, &dir, limits, Some(rules))
}

/// A cache archive in gitlab-runner's zip format (`CACHE_COMPRESSION_FORMAT=zip`).
pub(crate) fn write_cache_zip(
    root: &JobDir,
    sel: &paths::Selection,
    out: &Path,
    level: CompressionLevel,
) -> std::io::Result<()> {
    zipfmt::write_zip(root, sel, out, level)
}

/// A gitlab-runner cache zip (`cache.zip`), unpacked beneath `root` like an artifact.
pub(crate) fn extract_cache_zip(
    zip_file: &Path,
    root: &JobDir,
    limits: &Limits,
) -> Result<ExtractSummary, ArtifactError> {
    zipfmt::extract_zip(zip_file, root, limits, None)
}

/// Async wrapper around [`extract_archive`] that logs what happened.
pub async fn extract(
    zip_file: &Path,
    project_dir: &Path,
    log: &mut LogSink<'_>,
    limits: &Limits,
) -> Result<ExtractSummary, ArtifactError> {
    let (zf, dir, lim) = (
        zip_file.to_path_buf(),
        project_dir.to_path_buf(),
        limits.clone(),
    );
    let summary = tokio::task::spawn_blocking(move || extract_archive(&zf, &dir, &lim))
        .await
        .map_err(|e| ArtifactError::Read {
            path: zip_file.to_path_buf(),
            message: e.to_string(),
        })??;
    write_notes(log, &summary.notes)
        .await
        .map_err(ArtifactError::Log)?;
    hostio::write(
        log,
        Level::Plain,
        &format!(
            "Extracted {} files ({})",
            summary.files,
            hostio::human_bytes(summary.bytes)
        ),
    )
    .await
    .map_err(ArtifactError::Log)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_prefix_is_stripped() {
        assert_eq!(
            strip_project_prefix("/builds/a/b/dist", "/builds/a/b"),
            "dist"
        );
        assert_eq!(strip_project_prefix("/builds/a/b", "/builds/a/b/"), ".");
        assert_eq!(
            strip_project_prefix("/builds/a/bc/x", "/builds/a/b"),
            "/builds/a/bc/x"
        );
        assert_eq!(strip_project_prefix("dist", "/builds/a/b"), "dist");
    }

    #[test]
    fn upload_names() {
        let mut s = ArtifactSpec {
            name: None,
            paths: vec![],
            exclude: vec![],
            untracked: false,
            when: When::OnSuccess,
            expire_in: None,
            artifact_type: "archive".into(),
            format: ArtifactFormat::Zip,
            compression: CompressionLevel::Default,
        };
        assert_eq!(s.upload_file_name(), "artifacts.zip");
        s.name = Some("junit.xml".into());
        s.format = ArtifactFormat::Gzip;
        assert_eq!(s.upload_file_name(), "junit.xml.gz");
    }
}
