//! `ferry exec --artifacts-to-source` (docs/exec.md, "Artifacts into the working tree"): after
//! each successful job, its `archive` artifact is unpacked into the user's working tree, with
//! the extraction code dependencies use (nothing followed through a link, nothing outside the
//! tree) and the rules of a tree ferry does not own (`.git` and ferry's own dirs refused,
//! directories never replaced, existing files overwritten).

use std::path::{Path, PathBuf};

use ferry_executor::artifacts::{self, TreeRules};
use ferry_executor::jobfs::Limits;
use tokio_util::sync::CancellationToken;

/// Where artifacts go and where they never do.
#[derive(Debug, Clone)]
pub struct ToSource {
    /// The working tree's top.
    pub tree: PathBuf,
    pub rules: TreeRules,
}

impl ToSource {
    /// The tree `top`, refusing `.ferry` and each of `own` (ferry's output and working dirs)
    /// that lies inside it.
    pub fn new(top: &Path, own: &[&Path]) -> ToSource {
        let mut refused = vec![PathBuf::from(".ferry")];
        for dir in own {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            if let Ok(rel) = dir.strip_prefix(top)
                && !rel.as_os_str().is_empty()
                && !refused.iter().any(|r| r == rel)
            {
                refused.push(rel.to_path_buf());
            }
        }
        ToSource {
            tree: top.to_path_buf(),
            rules: TreeRules { refused },
        }
    }

    /// Unpacks `archive` (the job `job`'s) into the tree; returns the lines to show.
    pub async fn extract(
        &self,
        job: &str,
        archive: PathBuf,
        stop: CancellationToken,
    ) -> Vec<String> {
        let (tree, rules) = (self.tree.clone(), self.rules.clone());
        let done = tokio::task::spawn_blocking(move || {
            artifacts::extract_into_tree(&archive, &tree, &rules, &Limits::new(stop))
        })
        .await;
        let summary = match done.map_err(|e| e.to_string()) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return vec![not_extracted(job, &e.to_string())],
            Err(e) => return vec![not_extracted(job, &e)],
        };
        let mut lines: Vec<String> = summary
            .notes
            .iter()
            .map(|n| {
                if n.warning {
                    format!("ferry: WARNING: {job}: {}", n.text)
                } else {
                    format!("ferry: {job}: {}", n.text)
                }
            })
            .collect();
        lines.push(format!(
            "ferry: extracted the artifacts of {job} into {}: {} files ({} bytes)",
            self.tree.display(),
            summary.files,
            summary.bytes
        ));
        lines
    }
}

fn not_extracted(job: &str, why: &str) -> String {
    format!(
        "ferry: WARNING: the artifacts of {job} were not extracted into the working tree: {why}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferrys_own_dirs_inside_the_tree_are_refused() {
        let t = ToSource::new(
            Path::new("/src/app"),
            &[
                Path::new("/src/app/out/logs"),
                Path::new("/home/u/.cache/ferry"),
                Path::new("/src/app"),
            ],
        );
        assert_eq!(
            t.rules.refused,
            [PathBuf::from(".ferry"), PathBuf::from("out/logs")]
        );
    }
}
