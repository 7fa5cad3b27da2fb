//! The zip archives GitLab stores for `artifact_type: archive`: entries relative to the project
//! dir, directories with a trailing `/`, symlinks as unix symlink entries, unix permissions and
//! modification times kept.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use crate::compression::CompressionLevel;
use crate::hostio::clean_relative;
use crate::jobfs::{Budget, JobDir, Limits, is_fatal};

use super::paths::{EntryKind, Selection};
use super::{ArtifactError, ExtractSummary, Note};

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Zip stores local time without a zone; like gitlab-runner's archiver we write UTC.
pub(crate) fn zip_time(t: SystemTime) -> DateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let year = y.clamp(1980, 2107) as u16;
    DateTime::from_date_and_time(year, mo as u8, d as u8, h as u8, mi as u8, (s as u8) & !1)
        .unwrap_or_default()
}

fn from_zip_time(t: DateTime) -> Option<SystemTime> {
    let days = days_from_civil(t.year() as i64, t.month() as u32, t.day() as u32);
    let secs = days * 86_400 + t.hour() as i64 * 3600 + t.minute() as i64 * 60 + t.second() as i64;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Writes the selection as a zip, each file deflated at `level` (stored at `fastest`, as
/// gitlab-runner's archiver does).
pub(super) fn write_zip(
    root: &JobDir,
    sel: &Selection,
    out: &Path,
    level: CompressionLevel,
) -> io::Result<()> {
    let (method, deflate_level) = match level.deflate() {
        Some(l) => (CompressionMethod::Deflated, Some(l)),
        None => (CompressionMethod::Stored, None),
    };
    let file = std::fs::File::create(out)?;
    let mut zw = ZipWriter::new(io::BufWriter::new(file));
    for (rel, entry) in &sel.entries {
        let opts = SimpleFileOptions::default()
            .last_modified_time(zip_time(entry.mtime))
            .unix_permissions(entry.mode);
        match &entry.kind {
            EntryKind::Dir => {
                zw.add_directory(format!("{rel}/"), opts)
                    .map_err(io::Error::other)?;
            }
            EntryKind::Symlink { target } => {
                zw.add_symlink(rel.clone(), target.to_string_lossy(), opts)
                    .map_err(io::Error::other)?;
            }
            EntryKind::File { size } => {
                let src = root.open_file(Path::new(rel))?;
                let opts = opts
                    .compression_method(method)
                    .compression_level(deflate_level)
                    .large_file(*size >= u32::MAX as u64);
                zw.start_file(rel.clone(), opts).map_err(io::Error::other)?;
                // take(): a file that grows while being read is cut at its selected size.
                io::copy(&mut io::Read::take(src, *size), &mut zw)?;
            }
        }
    }
    let mut inner = zw.finish().map_err(io::Error::other)?;
    inner.flush()
}

/// An absolute entry name: `/x`, `\\x`, or with a drive (`C:x`, `C:\\x`).
fn is_rooted(name: &str) -> bool {
    let b = name.as_bytes();
    name.starts_with(['/', '\\']) || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':')
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

/// Unpacks `zip_file` into `root`, never through a link, within `limits`; with `tree`, under
/// the rules of a directory ferry does not own ([`super::TreeRules`]).
pub(super) fn extract_zip(
    zip_file: &Path,
    root: &JobDir,
    limits: &Limits,
    tree: Option<&super::TreeRules>,
) -> Result<ExtractSummary, ArtifactError> {
    let read_err = |m: String| ArtifactError::Read {
        path: zip_file.to_path_buf(),
        message: m,
    };
    let f = std::fs::File::open(zip_file).map_err(|e| read_err(e.to_string()))?;
    let mut za = ZipArchive::new(io::BufReader::new(f)).map_err(|e| read_err(e.to_string()))?;
    let mut summary = ExtractSummary {
        files: 0,
        bytes: 0,
        notes: Vec::new(),
    };
    let mut budget = Budget::new(limits);
    for i in 0..za.len() {
        budget
            .entry()
            .map_err(|e| ArtifactError::Limit(e.to_string()))?;
        let mut zf = za.by_index(i).map_err(|e| read_err(e.to_string()))?;
        // name() decodes UTF-8 or CP437 (which cannot fail in practice); lossy bytes otherwise.
        let raw_name = match zf.name() {
            Ok(name) => name.into_owned(),
            Err(_) => String::from_utf8_lossy(zf.name_raw()).into_owned(),
        };
        // enclosed_name refuses `..` that climbs out (and NUL bytes), but makes a rooted name
        // (`/etc/x`, `C:\x`) relative, so those are refused first; clean_relative then gives the
        // normalised relative path.
        let Some(rel) = Some(&raw_name)
            .filter(|n| !is_rooted(n))
            .and_then(|_| zf.enclosed_name())
            .and_then(|p| clean_relative(&p.to_string_lossy()))
            .filter(|p| !p.as_os_str().is_empty())
        else {
            summary.notes.push(Note::warning(format!(
                "{raw_name}: skipped: path is outside the project directory"
            )));
            continue;
        };
        if let Some(why) = tree.and_then(|t| t.refuses(&rel)) {
            summary
                .notes
                .push(Note::warning(format!("{raw_name}: skipped: {why}")));
            continue;
        }
        let mode = zf.unix_mode();
        let is_link = mode.is_some_and(|m| m & S_IFMT == S_IFLNK);
        let (dir_mode, file_mode, keep) = match tree {
            Some(_) => (0o755, 0o644, super::TREE_MODE_MASK),
            None => (0o777, 0o666, 0o777),
        };
        let result: io::Result<u64> = (|| {
            if zf.is_dir() {
                root.create_dir_all(&rel, dir_mode)?;
                return Ok(0);
            }
            // A directory of the user's tree is never replaced by a file or a link.
            if tree.is_some() && root.lstat(&rel).is_ok_and(|m| m.is_dir()) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a directory is there (kept)",
                ));
            }
            // Parents in the user's tree get its usual mode, not the builds dir's 0777.
            if tree.is_some()
                && let Some(parent) = rel.parent()
            {
                root.create_dir_all(parent, dir_mode)?;
            }
            if is_link {
                let mut target = Vec::new();
                io::Read::read_to_end(&mut io::Read::take(&mut zf, 4096), &mut target)?;
                let target = PathBuf::from(std::ffi::OsString::from(
                    String::from_utf8_lossy(&target).into_owned(),
                ));
                if tree.is_some() && !super::link_stays_inside(&rel, &target) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("a link to {} leaves the tree", target.display()),
                    ));
                }
                root.symlink(&target, &rel)?;
                return Ok(0);
            }
            let mut out = root.create_file(&rel, file_mode)?;
            let n = budget.copy(&mut zf, &mut out)?;
            let mtime = zf.last_modified().and_then(from_zip_time);
            JobDir::finish_file(&out, mode.map(|m| m & keep), mtime, None)?;
            Ok(n)
        })();
        match result {
            Ok(n) => {
                if !zf.is_dir() {
                    summary.files += 1;
                    summary.bytes += n;
                }
            }
            Err(e) if is_fatal(&e) => return Err(ArtifactError::Limit(format!("{raw_name}: {e}"))),
            Err(e) => summary
                .notes
                .push(Note::warning(format!("{raw_name}: skipped: {e}"))),
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooted_names() {
        for n in ["/abs.txt", "\\x", "C:\\x", "c:x", "//server/share"] {
            assert!(is_rooted(n), "{n}");
        }
        for n in ["a.txt", "dir/a.txt", "./a", "../a", "1:x", ""] {
            assert!(!is_rooted(n), "{n}");
        }
    }

    #[test]
    fn time_round_trips() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(from_zip_time(zip_time(t)), Some(t));
        let d = zip_time(t);
        assert_eq!((d.year(), d.month(), d.day()), (2023, 11, 14));
    }
}
