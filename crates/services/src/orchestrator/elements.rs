//! The Switchboard extension elements of strategies. Each evaluates its attributes in the
//! session's data model and emits one [`Command`] (as JSON) for the host; the host turns it
//! into bus requests (see [`super::core`]). The elements keep no state, so one
//! [`Environment`] serves every session and every restore.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::sync::Arc;
use switchboard_events::UserData;
use switchboard_scxml::{Environment, ExtensionCall, ExtensionElement, ExtensionEnv};

/// The namespace of the extension elements (`xmlns:sb="http://switchboard.dev/scxml/1.0"`).
pub const NS: &str = "http://switchboard.dev/scxml/1.0";

/// What an extension element asks the host to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Play {
        kind: PlayKind,
        url: String,
        #[serde(default)]
        params: UserData,
        #[serde(default)]
        repeat: Option<u32>,
    },
    Collect {
        prompt: String,
        max_digits: u32,
        timeout_s: u32,
    },
    Queue {
        queue: String,
        skills: String,
        agent_group: Option<String>,
        priority: i32,
        timeout_s: Option<u32>,
    },
    Route {
        to: String,
        /// `route.done` on EventEstablished at `to` (true, `wait="answer"`, the default) or as
        /// soon as the call left the route point for it (`wait="divert"`, e.g. for an
        /// external number, whose answer is not reported).
        #[serde(default = "yes")]
        answer: bool,
    },
    Attach {
        data: UserData,
        update: bool,
    },
    Release,
    Voicemail {
        mailbox: String,
    },
    Fetch {
        url: String,
        method: String,
        body: Option<Json>,
    },
    /// Stops the playing treatment (CancelTreatment).
    CancelTreatment,
    /// Takes the call out of its queue (RoutingRequest::Cancel).
    CancelQueue,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlayKind {
    Application,
    Music,
    Announcement,
}

/// The environment of strategies: the `sb:` elements registered, default limits.
pub fn environment() -> Environment {
    let mut env = Environment::default();
    for name in [
        "play",
        "collect",
        "queue",
        "route",
        "attach",
        "release",
        "voicemail",
        "fetch",
        "cancel",
    ] {
        env.register_element(NS, name, Arc::new(Element));
    }
    env
}

struct Element;

impl ExtensionElement for Element {
    fn execute(&self, call: &ExtensionCall, env: &mut dyn ExtensionEnv) -> Result<(), String> {
        let cmd = command(call, env).map_err(|e| format!("<sb:{}>: {e}", call.name))?;
        let payload = serde_json::to_value(&cmd).map_err(|e| e.to_string())?;
        env.emit(payload);
        Ok(())
    }
}

fn command(call: &ExtensionCall, env: &mut dyn ExtensionEnv) -> Result<Command, String> {
    let mut a = Attrs { call, env };
    Ok(match call.name.as_str() {
        "play" => {
            let kind = match call.attr("type").unwrap_or("application") {
                "application" => PlayKind::Application,
                "music" => PlayKind::Music,
                "announcement" => PlayKind::Announcement,
                other => return Err(format!("unknown type {other:?}")),
            };
            Command::Play {
                kind,
                url: a.required("src")?,
                params: a.object("params")?,
                repeat: a.number("repeat")?.map(|n| n as u32),
            }
        }
        "collect" => Command::Collect {
            prompt: a.required("prompt")?,
            max_digits: a.number("max")?.unwrap_or(1).clamp(1, 64) as u32,
            timeout_s: a.number("timeout")?.unwrap_or(5).clamp(1, 600) as u32,
        },
        "queue" => Command::Queue {
            queue: a.required("queue")?,
            skills: a.string("skills")?.unwrap_or_default(),
            agent_group: a.string("group")?,
            priority: a
                .number("priority")?
                .unwrap_or(0)
                .clamp(-1_000_000, 1_000_000) as i32,
            timeout_s: a.number("timeout")?.map(|n| n.clamp(1, 86_400) as u32),
        },
        "route" => Command::Route {
            to: a.required("to")?,
            answer: match call.attr("wait").unwrap_or("answer") {
                "answer" => true,
                "divert" => false,
                other => return Err(format!("wait {other:?} is neither answer nor divert")),
            },
        },
        "attach" => Command::Attach {
            data: a.object("data")?,
            update: call.attr("mode") != Some("attach"),
        },
        "release" => Command::Release,
        "voicemail" => Command::Voicemail {
            mailbox: a.required("mailbox")?,
        },
        "fetch" => Command::Fetch {
            url: a.required("url")?,
            method: match call.attr("method").unwrap_or("get") {
                m if m.eq_ignore_ascii_case("get") => "GET".into(),
                m if m.eq_ignore_ascii_case("post") => "POST".into(),
                other => return Err(format!("method {other:?} is neither get nor post")),
            },
            body: a.value("body")?,
        },
        "cancel" => match call.attr("what").unwrap_or("treatment") {
            "treatment" => Command::CancelTreatment,
            "queue" => Command::CancelQueue,
            other => return Err(format!("what {other:?} is neither treatment nor queue")),
        },
        other => return Err(format!("unknown element {other}")),
    })
}

/// Reads an attribute as a literal (`name`) or as an expression (`nameexpr`, or `name` for
/// the attributes that are always expressions: `params`, `data`, `body`, `priority`).
struct Attrs<'a> {
    call: &'a ExtensionCall,
    env: &'a mut dyn ExtensionEnv,
}

impl Attrs<'_> {
    fn string(&mut self, name: &str) -> Result<Option<String>, String> {
        if let Some(expr) = self.call.attr(&format!("{name}expr")) {
            return match self.env.eval(expr)? {
                Some(Json::String(s)) => Ok(Some(s)),
                Some(Json::Number(n)) => Ok(Some(n.to_string())),
                other => Err(format!("{name}expr is not a string: {other:?}")),
            };
        }
        Ok(self.call.attr(name).map(str::to_owned))
    }

    fn required(&mut self, name: &str) -> Result<String, String> {
        self.string(name)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{name} (or {name}expr) is required"))
    }

    fn number(&mut self, name: &str) -> Result<Option<i64>, String> {
        let text = match self.call.attr(&format!("{name}expr")) {
            Some(expr) => match self.env.eval(expr)? {
                Some(Json::Number(n)) => return Ok(n.as_f64().map(|f| f as i64)),
                Some(Json::String(s)) => s,
                other => return Err(format!("{name}expr is not a number: {other:?}")),
            },
            None => match self.call.attr(name) {
                Some(t) => t.to_owned(),
                None => return Ok(None),
            },
        };
        let t = text.trim().trim_end_matches('s');
        t.parse::<i64>()
            .map(Some)
            .map_err(|_| format!("{name} {text:?} is not a whole number"))
    }

    /// An expression attribute's value.
    fn value(&mut self, name: &str) -> Result<Option<Json>, String> {
        match self.call.attr(name) {
            Some(expr) => self.env.eval(expr),
            None => Ok(None),
        }
    }

    fn object(&mut self, name: &str) -> Result<UserData, String> {
        match self.value(name)? {
            None | Some(Json::Null) => Ok(UserData::new()),
            Some(Json::Object(m)) => Ok(m),
            Some(other) => Err(format!("{name} is not an object: {other}")),
        }
    }
}
