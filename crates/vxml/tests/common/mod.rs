//! A scripted host: answers fetches from a map of URL to document text and records every
//! other command.

#![allow(dead_code)]

use std::collections::HashMap;
use switchboard_vxml::{Command, Config, FetchError, Input, Interpreter, Json, Limits, PromptPart};

pub struct Host {
    pub vx: Interpreter,
    pub docs: HashMap<String, String>,
    /// Every command seen, fetches included, in order.
    pub log: Vec<Command>,
    pub now: u64,
}

impl Host {
    pub fn new(start: &str, docs: &[(&str, &str)]) -> Host {
        Self::with_limits(start, docs, Limits::default())
    }

    pub fn with_limits(start: &str, docs: &[(&str, &str)], limits: Limits) -> Host {
        let mut cfg = Config::new(start);
        cfg.limits = limits;
        Self::with_config(cfg, docs)
    }

    pub fn with_config(cfg: Config, docs: &[(&str, &str)]) -> Host {
        let mut h = Host {
            vx: Interpreter::new(cfg).expect("engine"),
            docs: docs
                .iter()
                .map(|(u, t)| (u.to_string(), t.to_string()))
                .collect(),
            log: Vec::new(),
            now: 0,
        };
        h.pump();
        h
    }

    /// Drains commands, answering fetches from the map (a missing URL is a 404).
    pub fn pump(&mut self) {
        while let Some(c) = self.vx.poll_command() {
            self.log.push(c.clone());
            if let Command::Fetch { url, .. } = c {
                let key = url.split('#').next().unwrap_or(&url).to_string();
                let result = match self.docs.get(&key) {
                    Some(t) => Ok(t.clone()),
                    None => Err(FetchError {
                        status: Some(404),
                        reason: "Not Found".into(),
                    }),
                };
                self.vx
                    .handle(Input::DocumentFetched { url, result }, self.now);
            }
        }
    }

    pub fn input(&mut self, i: Input) {
        self.vx.handle(i, self.now);
        self.pump();
    }

    pub fn keys(&mut self, keys: &str) {
        for k in keys.chars() {
            self.input(Input::Dtmf(k));
        }
    }

    /// Advances the clock to the next deadline and fires it.
    pub fn timeout(&mut self) {
        let d = self.vx.next_deadline().expect("a deadline");
        self.now = self.now.max(d);
        self.vx.handle_timeout(self.now);
        self.pump();
    }

    /// All prompt text played so far, joined by `|` between Play commands.
    pub fn spoken(&self) -> String {
        self.log
            .iter()
            .filter_map(|c| match c {
                Command::Play { prompts, .. } => Some(text_of(prompts)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("|")
    }

    pub fn exit_values(&self) -> Option<Json> {
        self.log.iter().find_map(|c| match c {
            Command::Exit { values } => Some(values.clone()),
            _ => None,
        })
    }

    pub fn fetches(&self) -> Vec<Command> {
        self.log
            .iter()
            .filter(|c| matches!(c, Command::Fetch { .. }))
            .cloned()
            .collect()
    }

    pub fn logs(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|c| match c {
                Command::Log { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }
}

pub fn text_of(parts: &[PromptPart]) -> String {
    parts
        .iter()
        .map(|p| match p {
            PromptPart::Text(t) => t.clone(),
            PromptPart::Audio { url, fallback } => format!("[{url}:{}]", text_of(fallback)),
            PromptPart::Break { ms } => format!("<{ms}>"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
