//! Fakes and fixtures shared by ferry's end-to-end tests.
pub mod e2e;
pub mod fake_gitlab;
pub mod fake_k8s;
pub mod moto;

use std::path::PathBuf;

/// The `ferry` binary of this build (target/<profile>/ferry), built first if it is missing.
///
/// Integration tests of another package do not get `CARGO_BIN_EXE_ferry`, so the binary is found
/// next to the test executable's `deps/` directory.
pub fn ferry_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // Tests live in target/<profile>/deps/, binaries of this package in target/<profile>/.
    let mut profile_dir = exe.parent().expect("target/<profile>/...");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().expect("target/<profile>/deps/<test>");
    }
    let bin = profile_dir.join("ferry");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "ferry-runner", "--bin", "ferry"])
            .status()
            .expect("running cargo build for the ferry binary");
        assert!(
            status.success(),
            "cargo build -p ferry-runner --bin ferry failed"
        );
    }
    bin
}
