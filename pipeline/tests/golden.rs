//! The corpus `tests/pipelines/`: each directory is a repository (its `.gitlab-ci.yml` and
//! included files); each `input[.NAME].json` in it is a pipeline (ref, source, variables,
//! changed paths) and `expected[.NAME].json` what GitLab would create for it: the jobs with
//! their payload fields and the excluded jobs with the reason, or the error GitLab would show.
//! `FERRY_BLESS=1` rewrites the expected files.

use std::path::Path;

use ferry_pipeline::{Input, plan};

fn render(dir: &Path, input: &Input) -> String {
    // the fields in the model's order, for reading
    match plan(dir, input) {
        Ok(pipeline) => serde_json::to_string_pretty(&pipeline).unwrap() + "\n",
        Err(e) => {
            serde_json::to_string_pretty(&serde_json::json!({ "error": e.to_string() })).unwrap()
                + "\n"
        }
    }
}

#[test]
fn corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines");
    let bless = std::env::var_os("FERRY_BLESS").is_some();
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("input") && n.ends_with(".json"))
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{dir:?} has no input*.json");
        for name in inputs {
            cases += 1;
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let input: Input =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{dir:?}/{name}: {e}"));
            let got = render(&dir, &input);
            let golden = dir.join(name.replacen("input", "expected", 1));
            if bless {
                std::fs::write(&golden, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_default();
            if got != want {
                failures.push(format!("{}\n--- got:\n{got}", golden.display()));
            }
        }
    }
    assert!(cases > 0);
    assert!(
        failures.is_empty(),
        "{} case(s) differ from their golden file (FERRY_BLESS=1 rewrites):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
