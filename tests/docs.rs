//! Every policy shown in the README and docs/ is a real policy: each ```yaml block that
//! starts with `version: 1` must load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

use std::path::Path;

use hallpass::policy::Policy;

fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") => cur = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn documented_policies_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, block) in yaml_blocks(&text).into_iter().enumerate() {
            if !block.trim_start().starts_with("version: 1") {
                continue;
            }
            checked += 1;
            if let Err(e) = Policy::from_yaml(&block, &format!("{} block {}", f.display(), i + 1)) {
                failures.push(e.to_string());
            }
        }
    }
    assert!(checked >= 2, "expected policies in README.md and docs/policy.md, found {checked}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
