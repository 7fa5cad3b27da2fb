//! `artifact_format: gzip`: one gzip member per matched regular file, concatenated, sorted by
//! path; each member's header carries the base name as `name` and the relative path as
//! `comment`, as gitlab-runner writes them (GitLab reads e.g. several JUnit files this way).

use std::io::{self, Write};
use std::path::Path;
use std::time::UNIX_EPOCH;

use flate2::{Compression, GzBuilder};

use crate::jobfs::JobDir;

use super::paths::{EntryKind, Selection};

pub(super) fn write_gzip(root: &JobDir, sel: &Selection, out: &Path) -> io::Result<()> {
    let mut file = io::BufWriter::new(std::fs::File::create(out)?);
    for (rel, entry) in &sel.entries {
        if !matches!(entry.kind, EntryKind::File { .. }) {
            continue;
        }
        let base = Path::new(rel)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| rel.clone());
        let mtime = entry
            .mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
            .unwrap_or(0);
        let EntryKind::File { size } = entry.kind else {
            continue;
        };
        let mut src = io::Read::take(root.open_file(Path::new(rel))?, size);
        let mut enc = GzBuilder::new()
            .filename(base.as_bytes())
            .comment(rel.as_bytes())
            .mtime(mtime)
            .write(&mut file, Compression::default());
        io::copy(&mut src, &mut enc)?;
        enc.finish()?;
    }
    file.flush()
}
