//! The location service: address-of-record -> registered contacts (RFC 3261 §10.3). Pure data
//! with the caller's clock; the registrar writes it and the proxy reads it.

use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchboard_sip::Peer;

#[derive(Clone, Debug)]
pub struct Binding {
    /// The Contact URI as the UA wrote it (without header parameters).
    pub contact: String,
    pub expires_at: Instant,
    /// q-value in thousandths (1000 = 1.0).
    pub q: u16,
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER came from: requests go there (NAT-friendly, RFC 5626 style).
    pub source: Peer,
    pub user_agent: Option<String>,
}

/// One binding as listed on `GET /v1/registrations`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BindingView {
    pub aor: String,
    pub contact: String,
    pub expires_in: u64,
    pub q: f32,
    pub source: String,
    pub transport: String,
    pub call_id: String,
    pub user_agent: Option<String>,
}

#[derive(Default)]
pub struct Location {
    aors: HashMap<String, Vec<Binding>>,
}

impl Location {
    /// Live bindings of an AOR, best q first.
    pub fn lookup(&self, aor: &str, now: Instant) -> Vec<&Binding> {
        let mut list: Vec<&Binding> = self
            .aors
            .get(aor)
            .map(|v| v.iter().filter(|b| b.expires_at > now).collect())
            .unwrap_or_default();
        list.sort_by_key(|b| std::cmp::Reverse(b.q));
        list
    }

    pub fn bindings_mut(&mut self, aor: &str) -> &mut Vec<Binding> {
        self.aors.entry(aor.to_string()).or_default()
    }

    pub fn remove_all(&mut self, aor: &str) {
        self.aors.remove(aor);
    }

    /// Drops expired bindings; returns how many went.
    pub fn purge(&mut self, now: Instant) -> usize {
        let mut gone = 0;
        self.aors.retain(|_, list| {
            let before = list.len();
            list.retain(|b| b.expires_at > now);
            gone += before - list.len();
            !list.is_empty()
        });
        gone
    }

    pub fn binding_count(&self) -> usize {
        self.aors.values().map(Vec::len).sum()
    }

    pub fn views(&self, now: Instant) -> Vec<BindingView> {
        let mut out: Vec<BindingView> = self
            .aors
            .iter()
            .flat_map(|(aor, list)| {
                list.iter()
                    .filter(|b| b.expires_at > now)
                    .map(move |b| BindingView {
                        aor: aor.clone(),
                        contact: b.contact.clone(),
                        expires_in: b.expires_at.saturating_duration_since(now).as_secs(),
                        q: f32::from(b.q) / 1000.0,
                        source: b.source.addr.to_string(),
                        transport: b.source.transport.via_token().to_string(),
                        call_id: b.call_id.clone(),
                        user_agent: b.user_agent.clone(),
                    })
            })
            .collect();
        out.sort_by(|a, b| (&a.aor, &a.contact).cmp(&(&b.aor, &b.contact)));
        out
    }
}

/// Seconds left on a binding, as written in the 200 OK's Contact `expires`.
pub fn remaining(b: &Binding, now: Instant) -> u64 {
    b.expires_at
        .saturating_duration_since(now)
        .as_secs()
        .max(u64::from(b.expires_at > now))
}

pub fn expires_in(now: Instant, secs: u32) -> Instant {
    now + Duration::from_secs(u64::from(secs))
}
