//! Documents the VoiceXML browser makes itself instead of fetching them (the SIP Server's
//! CollectDigits treatment needs no application server):
//!
//! `builtin:collect-digits?prompt=URL&max_digits=N&timeout_s=T` plays `prompt` (an audio URL,
//! or `tts:TEXT`), collects 1 to `max_digits` DTMF digits (`#` ends early; `timeout_s` is the
//! wait for the first digit and between digits) and exits with the namelist `digits` (empty
//! when nothing was entered). Query values are %-escaped.

use switchboard_media::prompt::percent_decode;
use switchboard_vxml::FetchError;

/// The scheme and name of the collect-digits document.
pub const COLLECT_DIGITS: &str = "builtin:collect-digits";
/// Most digits and longest timeout accepted.
pub const MAX_DIGITS: u32 = 32;
pub const MAX_TIMEOUT_S: u32 = 60;

/// The built-in document `url` names: `None` when it is not a `builtin:` URL (it is fetched).
pub fn document(url: &str) -> Option<Result<String, FetchError>> {
    let rest = url.strip_prefix("builtin:")?;
    let bad = |reason: String| {
        Some(Err(FetchError {
            status: None,
            reason,
        }))
    };
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    if name != "collect-digits" {
        return bad(format!("no built-in document {name:?}"));
    }
    let mut prompt = None;
    let mut max_digits = None;
    let mut timeout_s = 5;
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        let v = percent_decode(v);
        match k {
            "prompt" => prompt = Some(v),
            "max_digits" => max_digits = v.parse::<u32>().ok(),
            "timeout_s" => match v.parse::<u32>() {
                Ok(t) => timeout_s = t,
                Err(_) => return bad(format!("bad timeout_s {v:?}")),
            },
            _ => {}
        }
    }
    let Some(max) = max_digits.filter(|n| (1..=MAX_DIGITS).contains(n)) else {
        return bad(format!("max_digits must be 1 to {MAX_DIGITS}"));
    };
    if !(1..=MAX_TIMEOUT_S).contains(&timeout_s) {
        return bad(format!("timeout_s must be 1 to {MAX_TIMEOUT_S}"));
    }
    let prompt = match prompt.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(p) => match p.strip_prefix("tts:") {
            Some(text) => xml_escape(text),
            None => format!("<audio src=\"{}\"/>", xml_escape(p)),
        },
    };
    Some(Ok(format!(
        "<?xml version=\"1.0\"?>\n\
         <vxml version=\"2.1\" xmlns=\"http://www.w3.org/2001/vxml\">\
         <property name=\"timeout\" value=\"{timeout_s}s\"/>\
         <property name=\"interdigittimeout\" value=\"{timeout_s}s\"/>\
         <form><var name=\"digits\" expr=\"''\"/>\
         <field name=\"collected\" type=\"digits?minlength=1;maxlength={max}\">\
         <prompt>{prompt}</prompt>\
         <filled><assign name=\"digits\" expr=\"collected\"/><exit namelist=\"digits\"/></filled>\
         <noinput><exit namelist=\"digits\"/></noinput>\
         <nomatch><exit namelist=\"digits\"/></nomatch>\
         </field></form></vxml>"
    )))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_digits_documents() {
        let doc =
            document("builtin:collect-digits?prompt=tone%3A440%2F300&max_digits=4&timeout_s=3")
                .expect("builtin")
                .expect("a document");
        assert!(
            doc.contains("type=\"digits?minlength=1;maxlength=4\""),
            "{doc}"
        );
        assert!(doc.contains("<audio src=\"tone:440/300\"/>"), "{doc}");
        assert!(
            doc.contains("<property name=\"timeout\" value=\"3s\"/>"),
            "{doc}"
        );
        let doc =
            document("builtin:collect-digits?prompt=tts%3AYour%20PIN%20%3C%26%3E&max_digits=1")
                .expect("builtin")
                .expect("a document");
        assert!(
            doc.contains("<prompt>Your PIN &lt;&amp;&gt;</prompt>"),
            "{doc}"
        );
        assert!(doc.contains("value=\"5s\""), "the default timeout: {doc}");
    }

    /// The document in the interpreter: two digits and the exit namelist; no input: empty.
    #[test]
    fn the_interpreter_collects_the_digits() {
        use switchboard_vxml::{Command, Config, Input, Interpreter, Json};
        let run = |digits: &str| -> Json {
            let url = "builtin:collect-digits?prompt=tts%3Ahi&max_digits=2&timeout_s=1";
            let mut vx = Interpreter::new(Config::new(url)).expect("interpreter");
            let Some(Command::Fetch { url, .. }) = vx.poll_command() else {
                panic!("a fetch first")
            };
            let doc = document(&url).expect("builtin").expect("a document");
            vx.handle(
                Input::DocumentFetched {
                    url,
                    result: Ok(doc),
                },
                0,
            );
            let mut now = 0;
            for d in digits.chars() {
                vx.handle(Input::Dtmf(d), now);
            }
            for _ in 0..20 {
                while let Some(c) = vx.poll_command() {
                    match c {
                        Command::Exit { values } => return values,
                        Command::Play { .. } => vx.handle(Input::PromptsDone, now),
                        _ => {}
                    }
                }
                now += 1_000;
                vx.handle_timeout(now);
            }
            panic!("no exit")
        };
        assert_eq!(run("42"), serde_json::json!({"digits": "42"}));
        assert_eq!(run(""), serde_json::json!({"digits": ""}));
    }

    #[test]
    fn other_urls_and_bad_parameters() {
        assert!(document("http://as/a.vxml").is_none());
        for url in [
            "builtin:other",
            "builtin:collect-digits?prompt=x",
            "builtin:collect-digits?max_digits=0",
            "builtin:collect-digits?max_digits=33",
            "builtin:collect-digits?max_digits=2&timeout_s=0",
            "builtin:collect-digits?max_digits=2&timeout_s=soon",
        ] {
            assert!(matches!(document(url), Some(Err(_))), "{url}");
        }
    }
}
