//! The VoiceXML documents of the deposit and access menus, as text. Pure: every value that
//! goes into a document is XML-escaped here, and URLs are built from escaped parts, so
//! nothing a caller or the configuration holds can change a document's structure.

use super::menu::MessageKey;
use crate::sip_node::core::query_escape;
use std::fmt::Write as _;

/// The media type of the documents.
pub const VXML_TYPE: &str = "application/voicexml+xml";

/// Silence that ends a message, ms. The media server counts it from the beep (not from the
/// first words), so it is also how long a caller may think before speaking.
pub const FINAL_SILENCE_MS: u64 = 5_000;
/// Longest greeting, s.
pub const MAX_GREETING_S: u32 = 60;

/// `&`, `<`, `>`, `"` and `'` as entities.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A number read digit by digit ("8 1 0 0"), so TTS does not say "eight thousand".
pub fn digits(n: &str) -> String {
    let spaced: Vec<String> = n
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
        .map(|c| c.to_string())
        .collect();
    spaced.join(" ")
}

fn wrap(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <vxml version=\"2.1\" xmlns=\"http://www.w3.org/2001/vxml\">\n{body}</vxml>\n"
    )
}

fn say(text: &str) -> String {
    format!("<prompt>{}</prompt>", xml_escape(text))
}

/// A URL path with a query of `(name, value)` pairs, escaped for the XML attribute.
pub fn url(path: &str, query: &[(&str, &str)]) -> String {
    let mut u = path.to_owned();
    for (i, (k, v)) in query.iter().enumerate() {
        u.push(if i == 0 { '?' } else { '&' });
        let _ = write!(u, "{k}={}", query_escape(v));
    }
    xml_escape(&u)
}

/// Says `text` and ends the call.
pub fn goodbye(text: &str) -> String {
    wrap(&format!(
        "<form><block>{}<disconnect/></block></form>\n",
        say(text)
    ))
}

/// Says `text` and goes to `next` (an escaped URL from [`url`]).
pub fn say_then(text: &str, next: &str) -> String {
    wrap(&format!(
        "<form><block>{}<goto next=\"{next}\"/></block></form>\n",
        say(text)
    ))
}

/// What the deposit menu needs.
pub struct Deposit<'a> {
    pub mailbox: &'a str,
    /// The recorded greeting's URL (escaped), if the mailbox has one.
    pub greeting: Option<&'a str>,
    pub max_message_s: u32,
    /// Where the recording is posted (escaped).
    pub submit: &'a str,
}

/// Greeting, beep, record until silence, `#` or the longest message; then the recording
/// is posted as a WAV part. A caller who says nothing leaves no message.
pub fn deposit(d: &Deposit<'_>) -> String {
    let default_greeting = format!(
        "The person at mailbox {} is not available. Please leave a message after the tone, \
         and press pound when you are done.",
        digits(d.mailbox)
    );
    let greeting = match d.greeting {
        Some(g) => format!(
            "<prompt><audio src=\"{g}\">{}</audio></prompt>",
            xml_escape(&default_greeting)
        ),
        None => say(&default_greeting),
    };
    wrap(&format!(
        "<form id=\"deposit\">\n\
         <record name=\"msg\" beep=\"true\" maxtime=\"{max}s\" finalsilence=\"{FINAL_SILENCE_MS}ms\" \
         dtmfterm=\"true\" type=\"audio/x-wav\">\n{greeting}\n\
         <filled><submit next=\"{submit}\" method=\"post\" enctype=\"multipart/form-data\" namelist=\"msg\"/></filled>\n\
         <noinput>{nothing}<disconnect/></noinput>\n\
         </record>\n</form>\n",
        max = d.max_message_s,
        submit = d.submit,
        nothing = say("No message was recorded. Goodbye."),
    ))
}

/// A form collecting the PIN (and the mailbox number when `ask_mailbox`), submitted to
/// `login` (escaped) by GET; `intro` is said first.
pub fn login(intro: &str, ask_mailbox: bool, login: &str) -> String {
    let mailbox = if ask_mailbox {
        format!(
            "<field name=\"mailbox\" type=\"digits\">{}<noinput count=\"3\">{}<disconnect/></noinput><noinput><reprompt/></noinput></field>\n",
            say("Please enter your mailbox number, then press pound."),
            say("Goodbye.")
        )
    } else {
        String::new()
    };
    let names = if ask_mailbox { "mailbox pin" } else { "pin" };
    wrap(&format!(
        "<form id=\"login\">\n<block>{intro}</block>\n{mailbox}\
         <field name=\"pin\" type=\"digits\">{ask}<noinput count=\"3\">{bye}<disconnect/></noinput><noinput><reprompt/></noinput></field>\n\
         <block><submit next=\"{login}\" method=\"get\" namelist=\"{names}\"/></block>\n</form>\n",
        intro = if intro.is_empty() { String::new() } else { say(intro) },
        ask = say("Please enter your PIN, then press pound."),
        bye = say("Goodbye."),
    ))
}

/// The main menu: the counts, then 1 to listen, 5 to record the greeting, 9 to hang up.
/// `before` is said first (e.g. what the last key did).
pub fn main_menu(before: &str, new: u32, saved: u32, base: &str) -> String {
    let plural = |n: u32| if n == 1 { "message" } else { "messages" };
    let counts = format!(
        "You have {new} new {} and {saved} saved {}.",
        plural(new),
        plural(saved)
    );
    let text = format!("{before} {counts}").trim().to_owned();
    wrap(&format!(
        "<menu id=\"main\">\n{}\n{}\n\
         <choice dtmf=\"1\" next=\"{}\"/>\n<choice dtmf=\"5\" next=\"{}\"/>\n<choice dtmf=\"9\" next=\"{}\"/>\n\
         <noinput count=\"3\">{}<disconnect/></noinput>\n</menu>\n",
        say(&text),
        say("To listen to your messages, press 1. To record your greeting, press 5. To hang up, press 9."),
        url(&format!("{base}/play"), &[("i", "0")]),
        url(&format!("{base}/greeting"), &[]),
        url(&format!("{base}/bye"), &[]),
        say("Goodbye."),
    ))
}

/// What the caller hears about one message.
pub struct Play<'a> {
    pub before: &'a str,
    /// Position in the session (0-based).
    pub index: usize,
    pub caller: Option<&'a str>,
    /// The message's audio (escaped URL).
    pub audio: &'a str,
    pub base: &'a str,
}

/// Plays a message, then offers the message keys ([`MessageKey::ALL`]).
pub fn play(p: &Play<'_>) -> String {
    let from = p
        .caller
        .map(|c| format!(" from {}", digits(c)))
        .unwrap_or_default();
    let head = format!("{} Message {}{from}.", p.before, p.index + 1);
    let mut choices = String::new();
    for (key, _) in MessageKey::ALL {
        let next = url(
            &format!("{}/key", p.base),
            &[("i", &p.index.to_string()), ("k", &key.to_string())],
        );
        let _ = writeln!(choices, "<choice dtmf=\"{key}\" next=\"{next}\"/>");
    }
    wrap(&format!(
        "<menu id=\"message\">\n<prompt>{}<audio src=\"{}\"/></prompt>\n{}\n{choices}\
         <noinput count=\"3\">{}<disconnect/></noinput>\n</menu>\n",
        xml_escape(head.trim()),
        p.audio,
        say("To replay, press 1. To save, press 2. To delete, press 3. For the previous message, press 4. For the next message, press 6. For the main menu, press 0."),
        say("Goodbye."),
    ))
}

/// Records a new greeting and posts it to `submit` (escaped).
pub fn record_greeting(submit: &str, back: &str) -> String {
    wrap(&format!(
        "<form id=\"greeting\">\n\
         <record name=\"greeting\" beep=\"true\" maxtime=\"{MAX_GREETING_S}s\" finalsilence=\"{FINAL_SILENCE_MS}ms\" dtmfterm=\"true\" type=\"audio/x-wav\">\n\
         {}\n\
         <filled><submit next=\"{submit}\" method=\"post\" enctype=\"multipart/form-data\" namelist=\"greeting\"/></filled>\n\
         <noinput>{}<goto next=\"{back}\"/></noinput>\n\
         </record>\n</form>\n",
        say("Record your greeting after the tone, then press pound."),
        say("No greeting was recorded."),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document is well-formed XML whose root is `<vxml>` with one dialog, and no
    /// element other than the ones we write.
    fn well_formed(doc: &str) {
        let parsed = roxmltree::Document::parse(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        let root = parsed.root_element();
        assert_eq!(root.tag_name().name(), "vxml");
        let dialogs = root.children().filter(|n| n.is_element()).count();
        assert_eq!(dialogs, 1, "{doc}");
        assert!(
            !root
                .descendants()
                .any(|n| n.tag_name().name() == "exit" || n.tag_name().name() == "x"),
            "injected: {doc}"
        );
    }

    #[test]
    fn escaping() {
        assert_eq!(xml_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
        assert_eq!(digits("8100"), "8 1 0 0");
        assert_eq!(
            url("/v1/x", &[("caller", "+1 <x>"), ("i", "2")]),
            "/v1/x?caller=%2B1%20%3Cx%3E&amp;i=2"
        );
    }

    #[test]
    fn documents_are_well_formed_whatever_the_values() {
        let evil = "\"/><exit/><x a=\"";
        well_formed(&deposit(&Deposit {
            mailbox: evil,
            greeting: Some(&url("/g.wav", &[("v", evil)])),
            max_message_s: 120,
            submit: &url("/submit", &[("caller", evil)]),
        }));
        well_formed(&login(evil, true, &url("/login", &[("caller", evil)])));
        well_formed(&main_menu(evil, 1, 2, "/voicemail/v1/sessions/tok"));
        well_formed(&play(&Play {
            before: evil,
            index: 0,
            caller: Some(evil),
            audio: &url("/a.wav", &[]),
            base: "/voicemail/v1/sessions/tok",
        }));
        well_formed(&record_greeting("/g", "/m"));
        well_formed(&goodbye(evil));
        well_formed(&say_then(evil, "/next"));
        let d = deposit(&Deposit {
            mailbox: "8100",
            greeting: None,
            max_message_s: 120,
            submit: "/s",
        });
        assert!(d.contains("maxtime=\"120s\""), "{d}");
        assert!(d.contains("beep=\"true\""), "{d}");
        assert!(d.contains("dtmfterm=\"true\""), "{d}");
        assert!(d.contains("8 1 0 0"), "{d}");
    }

    #[test]
    fn the_message_menu_offers_every_key() {
        let doc = play(&Play {
            before: "",
            index: 2,
            caller: None,
            audio: "/a.wav",
            base: "/b",
        });
        for (k, _) in MessageKey::ALL {
            assert!(
                doc.contains(&format!(
                    "<choice dtmf=\"{k}\" next=\"/b/key?i=2&amp;k={k}\"/>"
                )),
                "{doc}"
            );
        }
        assert!(doc.contains("Message 3."), "{doc}");
    }
}
