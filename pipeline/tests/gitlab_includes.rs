//! Includes only GitLab can read: the content sent to GitLab's CI lint API (the repository's
//! own includes merged in from its files) and the pipeline planned from GitLab's merged YAML.

use std::path::{Path, PathBuf};

use ferry_pipeline::yaml::{self, Node, Value};
use ferry_pipeline::{Input, RefKind, gitlab_request, load, plan, plan_merged};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str, files: &[(&str, &str)]) -> Dir {
        let dir = std::env::temp_dir().join(format!("ferry-gl-inc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Dir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MAIN: &str = r#"include:
  - local: ci/base.yml
  - project: $GROUP/ci
    ref: $SERVER_SIDE_VAR
    file: /templates/build.yml
    rules:
      - if: $CI_COMMIT_BRANCH == "main"
  - remote: https://example.com/skipped.yml
    rules:
      - if: $NOPE
  - https://example.com/plain.yml
build:
  extends: .base
  script:
    - !reference [.setup, script]
    - make
"#;

const BASE: &str = "include:\n  - template: Jobs/Lint.gitlab-ci.yml\n.base:\n  image: alpine\n.setup:\n  script: [echo setup]\n";

fn input() -> Input {
    let mut input = Input::new("main", RefKind::Branch, "push");
    input.variables.insert("GROUP".into(), "acme".into());
    input
}

fn map(n: &Node) -> &yaml::Map {
    n.as_map().unwrap_or_else(|| panic!("not a hash: {n:?}"))
}

#[test]
fn the_content_holds_the_working_tree_and_leaves_the_rest_to_gitlab() {
    let d = Dir::new(
        "request",
        &[(".gitlab-ci.yml", MAIN), ("ci/base.yml", BASE)],
    );
    let req = gitlab_request(d.path(), &input())
        .unwrap()
        .expect("includes for GitLab");
    // In the order met (the local file's own include first), each as sent.
    assert_eq!(
        req.includes,
        [
            r#"{"template": "Jobs/Lint.gitlab-ci.yml"}"#,
            r#"{"project": "acme/ci", "ref": "$SERVER_SIDE_VAR", "file": "/templates/build.yml"}"#,
            r#"{"remote": "https://example.com/plain.yml"}"#,
        ]
    );
    let root = yaml::parse(&req.content, "sent").unwrap();
    let m = map(&root);
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        ["include", ".base", ".setup", "build"],
        "{}",
        req.content
    );
    let Value::Seq(includes) = &m["include"].value else {
        panic!("{}", req.content)
    };
    assert_eq!(includes.len(), 3);
    // rules were evaluated by ferry: not sent
    assert!(!map(&includes[1]).contains_key("rules"));
    // the local file's content is inlined; !reference and extends are left for GitLab
    assert_eq!(map(&m[".base"])["image"].as_str(), Some("alpine"));
    let script = &map(&m["build"])["script"];
    let Value::Seq(items) = &script.value else {
        panic!()
    };
    assert!(matches!(&items[0].value, Value::Reference(p) if p == &[".setup", "script"]));
    assert_eq!(map(&m["build"])["extends"].as_str(), Some(".base"));
}

#[test]
fn no_request_without_such_includes_and_a_clear_error_without_gitlab() {
    let d = Dir::new(
        "none",
        &[
            (
                ".gitlab-ci.yml",
                "include: ci/base.yml\njob:\n  script: x\n",
            ),
            ("ci/base.yml", ".base: {}\n"),
        ],
    );
    assert_eq!(gitlab_request(d.path(), &input()).unwrap(), None);

    let d = Dir::new("plain", &[(".gitlab-ci.yml", MAIN), ("ci/base.yml", BASE)]);
    let e = plan(d.path(), &input()).unwrap_err().to_string();
    assert!(
        e.starts_with("ci/base.yml:2: include:template `Jobs/Lint.gitlab-ci.yml` needs GitLab: run `ferry exec --gitlab URL`"),
        "{e}"
    );
}

/// What GitLab answers for the content above (Psych's output: includes merged, `extends`
/// and `!reference` resolved, `.pre`/`.post` added).
const MERGED: &str = r#"---
stages:
- ".pre"
- build
- test
- ".post"
lint:
  stage: test
  script:
  - run lint
".base":
  image: alpine
".setup":
  script:
  - echo setup
build:
  extends: ".base"
  script:
  - - echo setup
  - make
  image: alpine
"#;

#[test]
fn the_merged_yaml_plans_with_the_working_tree_positions() {
    let d = Dir::new("merged", &[(".gitlab-ci.yml", MAIN), ("ci/base.yml", BASE)]);
    let p = plan_merged(d.path(), &input(), MERGED).unwrap();
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    // both in `test` (build's default stage), in the merged hash's order
    assert_eq!(names, ["lint", "build"]);
    let build = &p.jobs[1];
    assert_eq!(build.script, ["echo setup", "make"]);
    assert_eq!(
        build.image.as_ref().map(|i| i.name.as_str()),
        Some("alpine")
    );
    assert_eq!(build.defined_at, ".gitlab-ci.yml:12");
    assert_eq!(p.jobs[0].defined_at, format!("{}:7", load::MERGED_FILE));

    // An error in what GitLab read points into the merged YAML.
    let bad = MERGED.replace("stage: test", "stage: nope");
    let e = plan_merged(d.path(), &input(), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("{}:", load::MERGED_FILE)), "{e}");
    assert!(e.contains("chosen stage nope does not exist"), "{e}");
    // A very old GitLab answered its symbolized hash: refused, saying so.
    let e = plan_merged(
        d.path(),
        &input(),
        "---\n:stages:\n- build\n\":quoted\":\n  script: x\n",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "{}:2: GitLab's merged YAML has Ruby symbol keys (`:stages`): this GitLab is too old \
             for ferry exec --gitlab (its CI lint API must answer string keys)",
            load::MERGED_FILE
        )
    );
    let e = plan_merged(d.path(), &input(), "- a\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a hash"), "{e}");
}

/// GitLab merges an include again each time it is listed (its `expandset` is a list, not a
/// set): in `[T1, T2, T1]` T1 wins over T2. Every occurrence is sent, in order, and a local
/// file listed twice is merged twice.
#[test]
fn a_repeated_include_is_merged_again_at_each_occurrence() {
    let main = "include:\n  - template: T1.yml\n  - template: T2.yml\n  - template: T1.yml\n  \
                - local: ci/l1.yml\n  - local: ci/l2.yml\n  - local: ci/l1.yml\njob:\n  script: x\n";
    let d = Dir::new(
        "repeat",
        &[
            (".gitlab-ci.yml", main),
            ("ci/l1.yml", ".v:\n  value: l1\n"),
            ("ci/l2.yml", ".v:\n  value: l2\n"),
        ],
    );
    let req = gitlab_request(d.path(), &input()).unwrap().unwrap();
    assert_eq!(
        req.includes,
        [
            r#"{"template": "T1.yml"}"#,
            r#"{"template": "T2.yml"}"#,
            r#"{"template": "T1.yml"}"#,
        ]
    );
    let root = yaml::parse(&req.content, "sent").unwrap();
    let m = map(&root);
    let Value::Seq(includes) = &m["include"].value else {
        panic!("{}", req.content)
    };
    assert_eq!(includes.len(), 3, "{}", req.content);
    assert_eq!(
        map(&m[".v"])["value"].as_str(),
        Some("l1"),
        "{}",
        req.content
    );
}
