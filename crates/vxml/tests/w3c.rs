//! The W3C VoiceXML IR tests that need no speech, run through the interpreter.
//!
//! The folder holds the tests converted by the W3C stylesheet (`converted-vxml/`, where
//! `conf:pass` became `<prompt>pass</prompt><exit/>` and `conf:dtmf value=X` a prompt
//! "Press 'X'") next to their `.txml` sources. There is no manifest, so a start document is
//! one that no other document of its group refers to; a test needs speech when its source
//! uses `conf:speech`, `conf:grammar`, `conf:nomatch` or `conf:recording`.
//!
//! The harness answers fetches from the folder (`X.txml` is served from the converted
//! `X.vxml`), presses the keys a prompt asks for, lets the noinput timer run otherwise, and
//! answers records. Transfers are answered as the far end the test asks for in its "Test
//! environment requirements" comment (busy, refusing network, no answer, answering and
//! hanging up, answering and staying until `maxtime`, the originator hanging up): SIP
//! statuses go through [`transfer_failure`], as `mcp` does. A test passes when it exits
//! having said "pass" and never "fail".

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use switchboard_vxml::{
    transfer_failure, Command, Config, FetchError, Input, Interpreter, PromptPart, TransferKind,
};

const ROOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/conformance/vxml-w3c"
);
const BASE: &str = "http://ir.test/";
/// The number of tests passing when this runner was last updated; it may only go up.
const FLOOR: usize = 120;

#[test]
fn w3c_ir_tests_without_speech() {
    let root = Path::new(ROOT);
    if !root.join("converted-vxml").is_dir() {
        println!(
            "!!!!!!!! SKIPPING the W3C VoiceXML IR tests: {ROOT}/converted-vxml is absent !!!!!!!!"
        );
        return;
    }
    let tests = start_documents(&root.join("converted-vxml"));
    let mut passed = 0;
    let mut failures = Vec::new();
    let mut run = 0;
    for rel in &tests {
        if needs_speech(root, rel) || is_manual(root, rel) {
            continue;
        }
        run += 1;
        match run_test(root, rel) {
            Ok(()) => passed += 1,
            Err(why) => failures.push(format!("{rel}: {why}")),
        }
    }
    for f in &failures {
        println!("FAIL {f}");
    }
    println!(
        "W3C VoiceXML IR (no speech): {passed}/{run} passed ({} start documents found)",
        tests.len()
    );
    assert!(passed >= FLOOR, "regression: {passed} < floor {FLOOR}");
}

/// Relative paths (under converted-vxml, `.vxml`) of documents no sibling refers to.
fn start_documents(dir: &Path) -> Vec<String> {
    let mut groups: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    collect(dir, &mut groups);
    let mut out = Vec::new();
    for files in groups.values() {
        let mut referenced = HashSet::new();
        for f in files {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let me = stem(f);
            for r in references(&text) {
                if r != me {
                    referenced.insert(r);
                }
            }
        }
        for f in files {
            if !referenced.contains(&stem(f)) && !stem(f).contains("ShouldFail") {
                let rel = f.strip_prefix(dir).unwrap_or(f);
                out.push(rel.to_string_lossy().to_string());
            }
        }
    }
    out.sort();
    out
}

fn collect(dir: &Path, groups: &mut BTreeMap<PathBuf, Vec<PathBuf>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, groups);
        } else if p.extension().is_some_and(|x| x == "vxml") {
            groups.entry(dir.to_path_buf()).or_default().push(p);
        }
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string()
}

/// Names `X` of every `X.txml` / `X.vxml` mentioned in a document.
fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ext in [".txml", ".vxml"] {
        for (i, _) in text.match_indices(ext) {
            let start = text[..i]
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .map(|j| j + 1)
                .unwrap_or(0);
            out.push(text[start..i].to_string());
        }
    }
    out
}

fn needs_speech(root: &Path, rel: &str) -> bool {
    let src = root.join(rel.replace(".vxml", ".txml"));
    let text = std::fs::read_to_string(src).unwrap_or_default();
    [
        "conf:speech",
        "conf:grammar",
        "conf:nomatch",
        "conf:recording",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// A test without `conf:pass` is judged by a listener ("pass if the user hears ..."), not by
/// its own code.
fn is_manual(root: &Path, rel: &str) -> bool {
    let src = root.join(rel.replace(".vxml", ".txml"));
    let text = std::fs::read_to_string(src).unwrap_or_default();
    let converted = std::fs::read_to_string(root.join("converted-vxml").join(rel));
    // The verdict may live in a document this one goes to.
    !text.contains("conf:pass") && references(&converted.unwrap_or_default()).is_empty()
}

/// Serves `http://ir.test/<path>.txml` from `converted-vxml/<path>.vxml`; an absolute URL
/// elsewhere (the suite's `http://localhost/vxml/X.txml`) from the test's own folder.
fn serve(root: &Path, test: &str, url: &str) -> Result<String, FetchError> {
    let doc = url.split(['#', '?']).next().unwrap_or("");
    let conv = root.join("converted-vxml");
    let file = match doc.strip_prefix(BASE) {
        Some(path) => conv.join(path.replace(".txml", ".vxml")),
        None => {
            let name = doc
                .rsplit('/')
                .next()
                .unwrap_or("")
                .replace(".txml", ".vxml");
            conv.join(test).with_file_name(name)
        }
    };
    let file = if file.exists() {
        file
    } else {
        // scripts and grammars are not converted: serve them from the sources
        root.join(file.strip_prefix(&conv).unwrap_or(&file))
    };
    std::fs::read_to_string(&file).map_err(|e| FetchError {
        status: Some(404),
        reason: e.to_string(),
    })
}

fn text(parts: &[PromptPart]) -> String {
    parts
        .iter()
        .map(|p| match p {
            PromptPart::Text(t) => t.clone(),
            PromptPart::Audio { fallback, .. } => text(fallback),
            PromptPart::Break { .. } => String::new(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The keys a "Press 'X'" prompt asks for.
fn keys_asked(said: &str) -> Option<String> {
    let i = said.rfind("Press '")?;
    let rest = &said[i + 7..];
    Some(rest[..rest.find('\'')?].to_string())
}

fn run_test(root: &Path, rel: &str) -> Result<(), String> {
    let url = format!("{BASE}{}", rel.replace(".vxml", ".txml"));
    let mut vx = Interpreter::new(Config::new(&url)).map_err(|e| e.to_string())?;
    let (mut now, mut said, mut logs) = (0u64, String::new(), Vec::new());
    for _ in 0..200 {
        let mut listening = false;
        while let Some(c) = vx.poll_command() {
            match c {
                Command::Fetch { url, .. } => {
                    let result = serve(root, rel, &url);
                    if result.is_err() {
                        logs.push(format!("not in the folder: {url}"));
                    }
                    vx.handle(Input::DocumentFetched { url, result }, now);
                }
                Command::Play { prompts, .. } => {
                    said.push_str(&text(&prompts));
                    said.push(' ');
                }
                Command::Listen { .. } => listening = true,
                Command::Record { .. } => vx.handle(
                    Input::RecordingDone {
                        url: Some("file:///rec.wav".into()),
                        duration_ms: 1000,
                        termchar: None,
                    },
                    now,
                ),
                Command::Transfer {
                    kind: TransferKind::Blind,
                    ..
                } => {}
                Command::Transfer { maxtime_ms, .. } => {
                    let far = far_end(root, rel);
                    logs.push(format!("transfer: far end {far:?}"));
                    let input = match far {
                        FarEnd::Status(code) => Input::TransferResult {
                            duration_ms: 0,
                            status: transfer_failure(code).into(),
                        },
                        FarEnd::HangsUp => Input::TransferResult {
                            duration_ms: 2000,
                            status: "far_end_disconnect".into(),
                        },
                        FarEnd::Stays if maxtime_ms > 0 => Input::TransferResult {
                            duration_ms: maxtime_ms,
                            status: "maxtime_disconnect".into(),
                        },
                        FarEnd::Stays | FarEnd::CallerHangsUp => Input::Hangup,
                    };
                    vx.handle(input, now)
                }
                Command::EndTransfer => vx.handle(
                    Input::TransferResult {
                        duration_ms: 1000,
                        status: "near_end_disconnect".into(),
                    },
                    now,
                ),
                Command::Log { text, .. } => logs.push(text),
                Command::Exit { .. } => return verdict(&said, &logs),
                Command::Hangup { .. } | Command::StopListening => {}
            }
        }
        if vx.is_done() {
            return verdict(&said, &logs);
        }
        if listening {
            vx.handle(Input::PromptsDone, now);
            if let Some(k) = keys_asked(&said) {
                said.push_str("<keys> ");
                for ch in k.chars() {
                    vx.handle(Input::Dtmf(ch), now);
                }
                continue;
            }
        }
        match vx.next_deadline() {
            Some(d) => {
                now = now.max(d);
                vx.handle_timeout(now);
            }
            None => return Err(format!("stuck; said: {said}")),
        }
    }
    Err("did not finish".into())
}

/// How the far end of a test's transfer behaves.
#[derive(Debug)]
enum FarEnd {
    /// The call fails with this SIP status.
    Status(u16),
    /// It answers and hangs up first.
    HangsUp,
    /// It answers and stays (the platform's `maxtime` ends it).
    Stays,
    /// It answers, and the originator hangs up.
    CallerHangsUp,
}

/// The far end a test's source asks for in its "Test environment requirements".
fn far_end(root: &Path, rel: &str) -> FarEnd {
    let source = std::fs::read_to_string(root.join(rel.replace(".vxml", ".txml")))
        .unwrap_or_default()
        .to_lowercase();
    let Some(i) = source.find("test environment requirements") else {
        return FarEnd::Status(408);
    };
    let req = &source[i..];
    let req = &req[..req.find("-->").unwrap_or(req.len())];
    if req.contains("is busy") {
        FarEnd::Status(486)
    } else if req.contains("refuses the call") {
        FarEnd::Status(503)
    } else if req.contains("does not answer") {
        FarEnd::Status(408)
    } else if req.contains("originator hangs up") {
        FarEnd::CallerHangsUp
    } else if req.contains("hangs up before originator") {
        FarEnd::HangsUp
    } else if req.contains("answers") {
        FarEnd::Stays
    } else {
        FarEnd::Status(408)
    }
}

fn verdict(said: &str, logs: &[String]) -> Result<(), String> {
    let words: Vec<&str> = said
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.contains(&"fail") || !words.contains(&"pass") {
        return Err(format!("said: {} logs: {}", said.trim(), logs.join(" / ")));
    }
    Ok(())
}
