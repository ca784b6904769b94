//! Gates the code must keep: `rust-version` is the highest MSRV among the locked dependencies
//! (so it is true, and the Dockerfile builds with exactly that toolchain).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

use std::process::Command;

fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).chain(std::iter::repeat(0)).take(3).collect()
}

#[test]
fn rust_version_is_the_highest_msrv_of_the_locked_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resolved: std::collections::HashSet<&str> =
        meta["resolve"]["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    let mut ours = String::new();
    let mut highest = (Vec::new(), String::new());
    for p in meta["packages"].as_array().unwrap() {
        if p["name"] == "hallpass" {
            ours = p["rust_version"].as_str().unwrap_or("").to_string();
            continue;
        }
        if !resolved.contains(p["id"].as_str().unwrap()) {
            continue;
        }
        if let Some(rv) = p["rust_version"].as_str() {
            if version(rv) > highest.0 {
                highest = (version(rv), format!("{} {} needs {rv}", p["name"], p["version"]));
            }
        }
    }
    assert_eq!(version(&ours), highest.0, "Cargo.toml rust-version {ours}, but {}", highest.1);
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let short = ours.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(dockerfile.contains(&format!("FROM rust:{short}-")), "the Dockerfile builds with rust {short}");
}
