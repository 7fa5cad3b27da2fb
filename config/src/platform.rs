//! The platform names GitLab expects from a runner: Go's `GOARCH` values, which gitlab-runner
//! reports (the `architecture` of the runner info, `CI_RUNNER_EXECUTABLE_ARCH`, `User-Agent`).

/// This build's architecture as a Go `GOARCH` name ([`go_arch_for`]).
pub fn go_arch() -> &'static str {
    go_arch_for(std::env::consts::ARCH, cfg!(target_endian = "little"))
}

/// Rust's `target_arch` (and byte order) → Go's `GOARCH`. Rust names both byte orders of 64-bit
/// PowerPC and MIPS alike; Go tells them apart (`ppc64` is big-endian, `ppc64le` little-endian).
/// Architectures whose names agree (`riscv64`, `s390x`, …) pass through.
pub fn go_arch_for(rust_arch: &'static str, little_endian: bool) -> &'static str {
    match (rust_arch, little_endian) {
        ("x86_64", _) => "amd64",
        ("x86", _) => "386",
        ("aarch64", _) => "arm64",
        ("arm", _) => "arm",
        ("powerpc64", true) => "ppc64le",
        ("powerpc64", false) => "ppc64",
        ("mips", true) => "mipsle",
        ("mips", false) => "mips",
        ("mips64", true) => "mips64le",
        ("mips64", false) => "mips64",
        ("loongarch64", _) => "loong64",
        ("wasm32", _) => "wasm",
        (other, _) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_architectures_get_go_names() {
        assert_eq!(go_arch_for("x86_64", true), "amd64");
        assert_eq!(go_arch_for("x86", true), "386");
        assert_eq!(go_arch_for("aarch64", true), "arm64");
        assert_eq!(go_arch_for("arm", true), "arm");
        assert_eq!(go_arch_for("powerpc64", true), "ppc64le");
        assert_eq!(go_arch_for("powerpc64", false), "ppc64");
        assert_eq!(go_arch_for("mips64", true), "mips64le");
        assert_eq!(go_arch_for("loongarch64", true), "loong64");
        assert_eq!(go_arch_for("riscv64", true), "riscv64");
        assert_eq!(go_arch_for("s390x", false), "s390x");
    }

    #[test]
    fn this_build() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(go_arch(), "amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(go_arch(), "arm64");
        assert!(!go_arch().is_empty());
    }
}
