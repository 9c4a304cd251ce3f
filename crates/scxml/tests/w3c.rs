//! The W3C SCXML 1.0 IRP suite (ECMAScript), run twice: plainly, and with a snapshot/restore of
//! the whole session tree after every step (every macrostep).
//!
//! Run: `cargo test -p switchboard-scxml --test w3c -- --nocapture` (prints the counts).
//! `SCXML_ONLY=144,147` restricts the run to some test ids.

mod common;

use common::*;
use std::time::Duration;

/// Tests known to fail, with the reason. Every other automatic test must pass.
const KNOWN_FAILURES: &[(&str, &str)] = &[];
/// Extra failures allowed only in the snapshot run.
const KNOWN_SNAPSHOT_FAILURES: &[(&str, &str)] = &[];

fn run_suite(snapshot: bool) {
    let Some(root) = conformance_dir() else {
        return;
    };
    let only: Option<Vec<String>> = std::env::var("SCXML_ONLY")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let opts = RunOptions {
        snapshot_every_step: snapshot,
        virtual_limit_ms: 60_000,
        wall_limit: Duration::from_secs(60),
    };
    let tests = automatic_tests(&root.join(""));
    assert!(
        tests.len() >= 190,
        "INDEX.md lists {} automatic tests",
        tests.len()
    );
    let dir = root.join("tests");
    let (mut mand_pass, mut mand_total, mut opt_pass, mut opt_total) = (0, 0, 0, 0);
    let mut runs = 0;
    let snaps_before = SNAPSHOTS.with(|c| c.get());
    let mut unexpected = Vec::new();
    let mut failures = Vec::new();
    for t in &tests {
        if only.as_ref().is_some_and(|o| !o.contains(&t.id)) {
            continue;
        }
        let mut ok = true;
        let mut why = String::new();
        for f in &t.files {
            runs += 1;
            match run_file(&dir, f, &opts) {
                Verdict::Pass => {}
                Verdict::Fail(w) => {
                    ok = false;
                    why = format!("{f}: {w}");
                }
            }
        }
        if t.mandatory {
            mand_total += 1;
        } else {
            opt_total += 1;
        }
        if ok {
            if t.mandatory {
                mand_pass += 1;
            } else {
                opt_pass += 1;
            }
        } else {
            failures.push(format!("{} ({})", t.id, why));
            let known = KNOWN_FAILURES.iter().any(|(id, _)| *id == t.id)
                || (snapshot && KNOWN_SNAPSHOT_FAILURES.iter().any(|(id, _)| *id == t.id));
            if !known {
                unexpected.push(format!("{} ({})", t.id, why));
            }
        }
    }
    let mode = if snapshot {
        "with snapshot/restore after every step"
    } else {
        "plain"
    };
    let snaps = SNAPSHOTS.with(|c| c.get()) - snaps_before;
    eprintln!(
        "SCXML W3C {mode}: mandatory {mand_pass}/{mand_total}, optional {opt_pass}/{opt_total} \
         ({runs} start documents; {snaps} snapshot/restore round trips)"
    );
    if snapshot && only.is_none() {
        assert!(
            snaps > runs,
            "the snapshot run made only {snaps} round trips"
        );
    }
    for f in &failures {
        eprintln!("  FAIL {f}");
    }
    assert!(
        unexpected.is_empty(),
        "unexpected failures ({mode}): {unexpected:#?}"
    );
}

#[test]
fn w3c_suite() {
    run_suite(false);
}

#[test]
fn w3c_suite_with_snapshots() {
    run_suite(true);
}

#[test]
fn test301_is_rejected_at_load_time() {
    let Some(root) = conformance_dir() else {
        return;
    };
    let dir = root.join("tests");
    let text = std::fs::read_to_string(dir.join("test301.scxml")).expect("test301");
    let env = switchboard_scxml::Environment::default()
        .with_fetcher(std::sync::Arc::new(DirFetcher { dir: dir.clone() }));
    let err = switchboard_scxml::Document::load(&text, Some("file:test301.scxml"), &env)
        .expect_err("test301 must be rejected");
    assert!(err.line > 0, "{err}");
}

#[test]
fn manual_as_auto_rewrites() {
    let Some(root) = conformance_dir() else {
        return;
    };
    let dir = root.join("manual-as-auto");
    let opts = RunOptions {
        snapshot_every_step: false,
        virtual_limit_ms: 60_000,
        wall_limit: Duration::from_secs(60),
    };
    for f in [
        "test230a.scxml",
        "test307a.scxml",
        "test313a.scxml",
        "test314a.scxml",
        "test415a.scxml",
    ] {
        if !dir.join(f).exists() {
            continue;
        }
        let v = run_file(&dir, f, &opts);
        eprintln!("manual-as-auto {f}: {v:?}");
        assert_eq!(v, Verdict::Pass, "{f}");
    }
}
