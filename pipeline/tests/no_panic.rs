//! Whatever a repository holds, planning ends with a pipeline or an error, never a panic.

use ferry_pipeline::{Input, RefKind, plan, plan_merged};
use proptest::prelude::*;

/// YAML-ish text built from the pieces a `.gitlab-ci.yml` is made of.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("job:\n".to_string()),
        Just("  script: echo\n".to_string()),
        Just("  extends: .a\n".to_string()),
        Just(".a: &a\n".to_string()),
        Just("  <<: *a\n".to_string()),
        Just("  - !reference [.a, script]\n".to_string()),
        Just("  rules:\n    - if: $X =~ /a(/\n".to_string()),
        Just("  needs: [job]\n".to_string()),
        Just("  parallel:\n    matrix:\n      - A: [1, 2]\n".to_string()),
        Just("  stage: nope\n".to_string()),
        Just("include: x.yml\n".to_string()),
        Just("[{\n".to_string()),
        Just("  when: manual\n".to_string()),
        "[a-z:\\-\\[\\]{}&*!<$ \n]{0,12}".prop_map(|s| s),
    ];
    proptest::collection::vec(piece, 0..14).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn planning_never_panics(text in yamlish()) {
        let dir = std::env::temp_dir().join(format!("ferry-pipeline-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".gitlab-ci.yml"), &text).unwrap();
        std::fs::write(dir.join("x.yml"), &text).unwrap();
        let input = Input::new("main", RefKind::Branch, "push");
        let _ = plan(&dir, &input);
        // GitLab's merged YAML is read as carefully as the repository's files.
        let _ = plan_merged(&dir, &input, &text);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
