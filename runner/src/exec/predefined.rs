//! The predefined variables of a local pipeline (docs/exec.md, "Variables"), read from the
//! local repository as GitLab sets them from the project and the pushed commit.

use std::path::Path;

/// The commit, ref and project a local pipeline runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFacts {
    /// The user's HEAD; `None` in a repository without commits.
    pub sha: Option<String>,
    /// Branch or tag name the pipeline runs for.
    pub ref_name: String,
    pub is_tag: bool,
    pub default_branch: String,
    pub title: String,
    pub message: String,
    pub description: String,
    pub timestamp: String,
    pub author: String,
    /// `group/sub/project`.
    pub project_path: String,
    /// `https://host` of the origin remote, when it has one.
    pub server_url: Option<String>,
}

/// `git args` in `dir`: its stdout, `None` when it fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    super::git::git(dir, args, &[]).ok()
}

/// Reads the facts of the repository at `top`; `ref_override` is `--ref`.
pub fn read(top: &Path, ref_override: Option<&str>) -> RepoFacts {
    let sha = git(top, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]);
    let branch = git(top, &["symbolic-ref", "--quiet", "--short", "HEAD"]);
    let tag = sha
        .as_ref()
        .and_then(|_| git(top, &["describe", "--tags", "--exact-match", "HEAD"]));
    let (ref_name, is_tag) = match (ref_override, branch, tag) {
        (Some(r), _, _) => {
            let is_tag = git(
                top,
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("refs/tags/{r}"),
                ],
            )
            .is_some();
            (r.to_string(), is_tag)
        }
        (None, Some(b), _) => (b, false),
        (None, None, Some(t)) => (t, true),
        // A detached HEAD without a tag: GitLab has no such pipeline; the commit names it.
        (None, None, None) => (
            sha.as_deref()
                .map_or("HEAD", |s| &s[..s.len().min(8)])
                .to_string(),
            false,
        ),
    };
    let default_branch = git(
        top,
        &[
            "symbolic-ref",
            "--quiet",
            "--short",
            "refs/remotes/origin/HEAD",
        ],
    )
    .and_then(|r| r.strip_prefix("origin/").map(str::to_string))
    .or_else(|| git(top, &["config", "init.defaultBranch"]))
    .unwrap_or_else(|| "main".to_string());
    let has_commit = sha.is_some();
    let field = |format: &str| {
        has_commit
            .then(|| git(top, &["log", "-1", &format!("--format={format}"), "HEAD"]))
            .flatten()
            .unwrap_or_default()
    };
    let message = field("%B");
    let title = message.lines().next().unwrap_or_default().to_string();
    let description = message
        .split_once('\n')
        .map(|(_, rest)| rest.trim_start_matches('\n').to_string())
        .unwrap_or_default();
    let origin = git(top, &["remote", "get-url", "origin"]);
    let (server_url, project_path) = match origin.as_deref().and_then(parse_remote) {
        Some((server, path)) => (Some(server), path),
        None => {
            let name = top
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "project".into());
            (None, format!("local/{name}"))
        }
    };
    RepoFacts {
        sha,
        ref_name,
        is_tag,
        default_branch,
        title,
        message,
        description,
        timestamp: field("%cI"),
        author: field("%an <%ae>"),
        project_path,
        server_url,
    }
}

/// `https://host/group/project(.git)`, `ssh://git@host[:port]/group/project.git` or
/// `git@host:group/project.git` → (`https://host`, `group/project`).
pub fn parse_remote(url: &str) -> Option<(String, String)> {
    let (host, path) = if let Some((scheme, rest)) = url.split_once("://") {
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let (authority, path) = rest.split_once('/')?;
        let host = if scheme == "ssh" || scheme == "git" {
            authority.split(':').next().unwrap_or(authority)
        } else {
            authority
        };
        (host.to_string(), path.to_string())
    } else {
        // scp-like syntax.
        let (user_host, path) = url.split_once(':')?;
        let host = user_host.rsplit_once('@').map_or(user_host, |(_, h)| h);
        (host.to_string(), path.to_string())
    };
    let path = path.trim_matches('/').trim_end_matches(".git").to_string();
    (!host.is_empty() && path.contains('/')).then(|| (format!("https://{host}"), path))
}

/// GitLab's `CI_COMMIT_REF_SLUG`: lowercased, every character but `0-9a-z` replaced by `-`, at
/// most 63 bytes, no leading or trailing `-`.
pub fn slug(s: &str) -> String {
    let replaced: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cut: String = replaced.chars().take(63).collect();
    cut.trim_matches('-').to_string()
}

/// The pipeline's predefined variables (before the job's own: `CI_JOB_*` and `CI_NODE_*`
/// are added per job).
pub fn pipeline_variables(
    facts: &RepoFacts,
    pipeline_id: u64,
    source: &str,
) -> Vec<(String, String)> {
    let sha = facts.sha.clone().unwrap_or_else(|| "0".repeat(40));
    let (namespace, name) = facts
        .project_path
        .rsplit_once('/')
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .unwrap_or_else(|| (String::new(), facts.project_path.clone()));
    let server = facts
        .server_url
        .clone()
        .unwrap_or_else(|| "https://gitlab.invalid".to_string());
    let host = server.trim_start_matches("https://").to_string();
    let mut v: Vec<(String, String)> = vec![
        ("CI".into(), "true".into()),
        ("GITLAB_CI".into(), "true".into()),
        ("CI_SERVER".into(), "yes".into()),
        ("CI_SERVER_URL".into(), server.clone()),
        ("CI_SERVER_HOST".into(), host),
        ("CI_PIPELINE_ID".into(), pipeline_id.to_string()),
        ("CI_PIPELINE_IID".into(), pipeline_id.to_string()),
        ("CI_PIPELINE_SOURCE".into(), source.to_string()),
        ("CI_COMMIT_SHA".into(), sha.clone()),
        (
            "CI_COMMIT_SHORT_SHA".into(),
            sha[..8.min(sha.len())].to_string(),
        ),
        ("CI_COMMIT_BEFORE_SHA".into(), "0".repeat(40)),
        ("CI_COMMIT_REF_NAME".into(), facts.ref_name.clone()),
        ("CI_COMMIT_REF_SLUG".into(), slug(&facts.ref_name)),
        ("CI_COMMIT_TITLE".into(), facts.title.clone()),
        ("CI_COMMIT_MESSAGE".into(), facts.message.clone()),
        ("CI_COMMIT_DESCRIPTION".into(), facts.description.clone()),
        ("CI_COMMIT_TIMESTAMP".into(), facts.timestamp.clone()),
        ("CI_COMMIT_AUTHOR".into(), facts.author.clone()),
        ("CI_DEFAULT_BRANCH".into(), facts.default_branch.clone()),
        ("CI_PROJECT_NAME".into(), name.clone()),
        ("CI_PROJECT_TITLE".into(), name.clone()),
        ("CI_PROJECT_PATH".into(), facts.project_path.clone()),
        ("CI_PROJECT_PATH_SLUG".into(), slug(&facts.project_path)),
        ("CI_PROJECT_NAMESPACE".into(), namespace.clone()),
        (
            "CI_PROJECT_ROOT_NAMESPACE".into(),
            namespace.split('/').next().unwrap_or_default().to_string(),
        ),
        (
            "CI_PROJECT_URL".into(),
            format!("{server}/{}", facts.project_path),
        ),
        (
            "CI_PIPELINE_URL".into(),
            format!("{server}/{}/-/pipelines/{pipeline_id}", facts.project_path),
        ),
    ];
    if facts.is_tag {
        v.push(("CI_COMMIT_TAG".into(), facts.ref_name.clone()));
    } else {
        v.push(("CI_COMMIT_BRANCH".into(), facts.ref_name.clone()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn remotes_as_gitlab_projects() {
        assert_eq!(
            parse_remote("git@gitlab.example.com:group/sub/app.git"),
            Some(("https://gitlab.example.com".into(), "group/sub/app".into()))
        );
        assert_eq!(
            parse_remote("https://user:pw@gitlab.com/acme/web.git"),
            Some(("https://gitlab.com".into(), "acme/web".into()))
        );
        assert_eq!(
            parse_remote("ssh://git@gitlab.com:2222/acme/web.git"),
            Some(("https://gitlab.com".into(), "acme/web".into()))
        );
        assert_eq!(parse_remote("/srv/repos/app.git"), None);
    }

    #[test]
    fn ref_slugs_as_gitlab_makes_them() {
        assert_eq!(slug("Feature/ABC_12.x"), "feature-abc-12-x");
        assert_eq!(slug("-v1.0-"), "v1-0");
        assert_eq!(slug(&"a".repeat(70)).len(), 63);
    }

    #[test]
    fn facts_of_a_repository() {
        let d = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let (name, email) = (OsStr::new("Ada"), OsStr::new("ada@example.com"));
            let identity = [
                ("GIT_AUTHOR_NAME", name),
                ("GIT_AUTHOR_EMAIL", email),
                ("GIT_COMMITTER_NAME", name),
                ("GIT_COMMITTER_EMAIL", email),
            ];
            super::super::git::git(d.path(), args, &identity).unwrap_or_else(|e| panic!("{e}"));
        };
        run(&["init", "-q", "-b", "feature/x"]);
        run(&[
            "remote",
            "add",
            "origin",
            "git@gitlab.example.com:acme/tools/app.git",
        ]);
        run(&[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "Add the thing\n\nLonger text.",
        ]);
        let f = read(d.path(), None);
        assert_eq!(f.ref_name, "feature/x");
        assert!(!f.is_tag);
        assert_eq!(f.title, "Add the thing");
        assert_eq!(f.description, "Longer text.");
        assert_eq!(f.author, "Ada <ada@example.com>");
        let vars = pipeline_variables(&f, 7, "push");
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CI_COMMIT_REF_SLUG"), Some("feature-x"));
        assert_eq!(get("CI_COMMIT_BRANCH"), Some("feature/x"));
        assert_eq!(get("CI_PROJECT_NAMESPACE"), Some("acme/tools"));
        assert_eq!(get("CI_PROJECT_ROOT_NAMESPACE"), Some("acme"));
        assert_eq!(
            get("CI_PROJECT_URL"),
            Some("https://gitlab.example.com/acme/tools/app")
        );
        assert_eq!(get("CI_PIPELINE_SOURCE"), Some("push"));
        assert_eq!(get("CI_COMMIT_SHA").map(str::len), Some(40));
        run(&["tag", "v1.2"]);
        run(&["checkout", "-q", "--detach"]);
        let f = read(d.path(), None);
        assert_eq!((f.ref_name.as_str(), f.is_tag), ("v1.2", true));
    }
}
