//! Finding the `gateway` binary.
//!
//! Cargo only offers `CARGO_BIN_EXE_<name>` to the tests of the package that owns the
//! binary, and a test must not build anything itself. CI runs
//! `cargo build --release --workspace --bins` before `cargo test --release`, so the
//! binary sits in the same target directory as the test executable
//! (`target/<profile>/deps/<test>-<hash>`): we look there first, then in the other
//! profile's directory.

use std::path::{Path, PathBuf};

/// Overrides the search: the path of the `gateway` binary to run.
pub const GATEWAY_BIN_ENV: &str = "GATEWAY_BIN";

const BINARY_NAME: &str = if cfg!(windows) { "gateway.exe" } else { "gateway" };

/// The candidates, best first: `$GATEWAY_BIN`, then `gateway` in each ancestor of the
/// test executable (which finds `target/<profile>/gateway`), then the same in the
/// sibling profile directories (`release`, then `debug`).
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(GATEWAY_BIN_ENV) {
        out.push(PathBuf::from(p));
    }
    let Ok(exe) = std::env::current_exe() else {
        return out;
    };
    for dir in exe.ancestors().skip(1) {
        out.push(dir.join(BINARY_NAME));
        // `dir` is `target/<profile>` once its parent holds the profiles.
        if dir.file_name().is_some_and(|n| n == "deps") {
            continue;
        }
        if let Some(target) = dir.parent() {
            if target.join("CACHEDIR.TAG").exists() || dir.join("deps").is_dir() {
                for profile in ["release", "debug"] {
                    let p = target.join(profile).join(BINARY_NAME);
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                break;
            }
        }
    }
    out
}

fn is_file(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file())
}

/// The `gateway` binary, or an explanation of where it was looked for and how to
/// build it.
pub fn find_gateway() -> Result<PathBuf, String> {
    let candidates = candidates();
    if let Some(found) = candidates.iter().find(|p| is_file(p)) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|p| format!("  {}", p.display())).collect();
    Err(format!(
        "the gateway binary was not found. These tests run the real binary; build it first with\n\
         \n    cargo build --release --workspace --bins\n\n\
         (or point {GATEWAY_BIN_ENV} at it). Looked in:\n{}",
        tried.join("\n")
    ))
}

/// The `gateway` binary; panics with [`find_gateway`]'s explanation if it is missing.
pub fn gateway_binary() -> PathBuf {
    match find_gateway() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_profiles_of_the_test_executables_target_directory_are_searched() {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test>
        let target = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("target dir");
        let c = candidates();
        for profile in ["release", "debug"] {
            let p = target.join(profile).join(BINARY_NAME);
            assert!(c.contains(&p), "{} not among {c:?}", p.display());
        }
        let own = exe
            .parent()
            .and_then(Path::parent)
            .expect("profile dir")
            .join(BINARY_NAME);
        let pos = |p: &PathBuf| c.iter().position(|x| x == p);
        assert!(pos(&own) <= pos(&target.join("debug").join(BINARY_NAME)));
        assert!(pos(&own) <= pos(&target.join("release").join(BINARY_NAME)));
    }
}
