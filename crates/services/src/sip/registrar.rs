//! The registrar (RFC 3261 §10.3) with digest authentication (RFC 7616). Pure: a REGISTER, its
//! source and the clocks go in, the response comes out; bindings land in the shared location
//! service.

use super::location::{expires_in, remaining, Binding, Location};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use switchboard_sip::auth::{Algorithm, Challenge, Credentials, NonceKeeper, NonceState};
use switchboard_sip::{response_to, Contacts, HeaderName, Message, Peer, Uri};

/// A tenant as the SIP edge sees it: its domain (also the digest realm) and its users.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub domain: String,
    /// user -> password
    pub users: HashMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct RegistrarSettings {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub nonce_ttl_s: u64,
    /// Offered in this order, one WWW-Authenticate header each.
    pub algorithms: Vec<Algorithm>,
}

pub struct Registrar {
    settings: RegistrarSettings,
    tenants: Vec<Tenant>,
    nonces: NonceKeeper,
    location: Arc<Mutex<Location>>,
}

/// The AOR key used in the location service: `user@domain` of the tenant.
pub fn aor_key(user: &str, tenant: &Tenant) -> String {
    format!("{user}@{}", tenant.domain)
}

impl Registrar {
    pub fn new(
        settings: RegistrarSettings,
        tenants: Vec<Tenant>,
        secret: [u8; 32],
        location: Arc<Mutex<Location>>,
    ) -> Self {
        let nonces = NonceKeeper::new(secret, settings.nonce_ttl_s);
        Registrar {
            settings,
            tenants,
            nonces,
            location,
        }
    }

    /// The tenant for a host: the one whose domain it is, else the first (default) tenant, so
    /// that phones that register to an IP address land in the default tenant.
    pub fn tenant_for_host(&self, host: &str) -> Option<&Tenant> {
        self.tenants
            .iter()
            .find(|t| t.domain.eq_ignore_ascii_case(host))
            .or_else(|| self.tenants.first())
    }

    /// Handles a validated REGISTER; returns the response to send.
    pub fn handle(
        &self,
        req: &Message,
        source: Peer,
        now: Instant,
        unix_now: u64,
        tag: &str,
    ) -> Bytes {
        match self.process(req, source, now, unix_now) {
            Ok(bindings) => {
                let mut b = response_to(req, 200, Some(tag));
                for (contact, secs) in bindings {
                    b = b.header("Contact", format_args!("<{contact}>;expires={secs}"));
                }
                b.finish()
            }
            Err(Refusal::Challenge { realm, stale }) => {
                let mut b = response_to(req, 401, Some(tag));
                for alg in &self.settings.algorithms {
                    let ch = Challenge {
                        realm: realm.clone(),
                        nonce: self.nonces.issue(&realm, unix_now, rand::random()),
                        algorithm: *alg,
                        opaque: None,
                        stale,
                        qop_auth: true,
                    };
                    b = b.header("WWW-Authenticate", ch);
                }
                b.finish()
            }
            Err(Refusal::IntervalTooBrief) => response_to(req, 423, Some(tag))
                .header("Min-Expires", self.settings.min_expires)
                .finish(),
            Err(Refusal::Status(code, why)) => {
                tracing::debug!(code, why, "REGISTER refused");
                response_to(req, code, Some(tag))
                    .header("Warning", format_args!("399 switchboard \"{why}\""))
                    .finish()
            }
        }
    }

    fn process(
        &self,
        req: &Message,
        source: Peer,
        now: Instant,
        unix_now: u64,
    ) -> Result<Vec<(String, u64)>, Refusal> {
        let to = req.to().map_err(|_| Refusal::Status(400, "bad To"))?;
        let Uri::Sip(to_uri) = to.uri else {
            return Err(Refusal::Status(416, "To must be a SIP URI"));
        };
        let tenant = self
            .tenant_for_host(to_uri.host.as_str())
            .ok_or(Refusal::Status(404, "no tenant"))?;
        let user = to_uri
            .user_unescaped()
            .ok_or(Refusal::Status(400, "To has no user"))?;
        self.authenticate(req, tenant, &user, unix_now)?;
        let aor = aor_key(&user, tenant);
        let call_id = req
            .call_id()
            .map_err(|_| Refusal::Status(400, "bad Call-ID"))?
            .to_string();
        let cseq = req
            .cseq()
            .map_err(|_| Refusal::Status(400, "bad CSeq"))?
            .seq;
        let header_expires = req
            .expires()
            .map_err(|_| Refusal::Status(400, "bad Expires"))?;
        let contacts = req
            .contacts()
            .map_err(|_| Refusal::Status(400, "bad Contact"))?;
        let mut loc = self
            .location
            .lock()
            .map_err(|_| Refusal::Status(500, "location store poisoned"))?;
        match contacts {
            Contacts::Star => {
                if header_expires != Some(0) {
                    return Err(Refusal::Status(400, "Contact: * needs Expires: 0"));
                }
                loc.remove_all(&aor);
                return Ok(Vec::new());
            }
            Contacts::List(list) => {
                // Check every contact before changing anything (§10.3 step 6/7 are atomic).
                let mut updates = Vec::with_capacity(list.len());
                for c in &list {
                    let asked = match c.params.get("expires") {
                        Some(v) => v.parse::<u32>().unwrap_or(self.settings.default_expires),
                        None => header_expires.unwrap_or(self.settings.default_expires),
                    };
                    if asked > 0 && asked < self.settings.min_expires {
                        return Err(Refusal::IntervalTooBrief);
                    }
                    let q = c.params.get("q").and_then(parse_q).unwrap_or(1000);
                    updates.push((c.uri.to_string(), asked.min(self.settings.max_expires), q));
                }
                let ua = req.get(HeaderName::UserAgent).map(str::to_string);
                let bindings = loc.bindings_mut(&aor);
                for (contact, secs, q) in updates {
                    let existing = bindings.iter().position(|b| b.contact == contact);
                    if let Some(i) = existing {
                        if bindings[i].call_id == call_id && bindings[i].cseq >= cseq {
                            return Err(Refusal::Status(500, "out-of-order REGISTER"));
                        }
                        bindings.remove(i);
                    }
                    if secs > 0 {
                        bindings.push(Binding {
                            contact,
                            expires_at: expires_in(now, secs),
                            q,
                            call_id: call_id.clone(),
                            cseq,
                            source,
                            user_agent: ua.clone(),
                        });
                    }
                }
            }
        }
        let current = loc
            .lookup(&aor, now)
            .into_iter()
            .map(|b| (b.contact.clone(), remaining(b, now)))
            .collect();
        metrics::gauge!("registrar_bindings").set(loc.binding_count() as f64);
        Ok(current)
    }

    fn authenticate(
        &self,
        req: &Message,
        tenant: &Tenant,
        user: &str,
        unix_now: u64,
    ) -> Result<(), Refusal> {
        let realm = tenant.domain.clone();
        let challenge = |stale| Refusal::Challenge {
            realm: realm.clone(),
            stale,
        };
        // Several Authorization headers may come (one per realm); use ours.
        let creds = req
            .fields_named(HeaderName::Authorization)
            .filter_map(|h| req.value(h).ok())
            .filter_map(|v| Credentials::parse(v).ok())
            .find(|c| c.realm == tenant.domain);
        let Some(creds) = creds else {
            return Err(challenge(false));
        };
        if !self.settings.algorithms.contains(&creds.algorithm) {
            return Err(challenge(false));
        }
        match self.nonces.check(&realm, creds.nonce, unix_now) {
            NonceState::Valid => {}
            NonceState::Stale => return Err(challenge(true)),
            NonceState::Invalid => return Err(challenge(false)),
        }
        let password = tenant
            .users
            .get(creds.username)
            .ok_or(Refusal::Status(403, "unknown user"))?;
        let method = req.method().map(|m| m.as_str()).unwrap_or("REGISTER");
        if !creds.verify(password, method) {
            metrics::counter!("registrar_auth_failures_total").increment(1);
            return Err(challenge(false));
        }
        if creds.username != user {
            return Err(Refusal::Status(403, "credentials do not match the To user"));
        }
        Ok(())
    }

    pub fn user_exists(&self, tenant: &Tenant, user: &str) -> bool {
        tenant.users.contains_key(user)
    }

    pub fn location(&self) -> &Arc<Mutex<Location>> {
        &self.location
    }
}

enum Refusal {
    Challenge { realm: String, stale: bool },
    IntervalTooBrief,
    Status(u16, &'static str),
}

/// `q` as thousandths: "0.5" -> 500, "1" -> 1000.
fn parse_q(v: &str) -> Option<u16> {
    let f: f32 = v.parse().ok()?;
    (0.0..=1.0)
        .contains(&f)
        .then(|| (f * 1000.0).round() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_sip::Message;

    fn registrar() -> Registrar {
        let tenant = Tenant {
            name: "demo".into(),
            domain: "switchboard".into(),
            users: [("1001".to_string(), "secret".to_string())]
                .into_iter()
                .collect(),
        };
        let settings = RegistrarSettings {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            nonce_ttl_s: 300,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        };
        Registrar::new(
            settings,
            vec![tenant],
            [1; 32],
            Arc::new(Mutex::new(Location::default())),
        )
    }

    fn register(extra: &str, cseq: u32) -> Message {
        let text = format!(
            "REGISTER sip:switchboard SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK{cseq}\r\nMax-Forwards: 70\r\nTo: <sip:1001@switchboard>\r\nFrom: <sip:1001@switchboard>;tag=a\r\nCall-ID: reg1\r\nCSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        let m = Message::parse(Bytes::from(text)).unwrap();
        m.validate().unwrap();
        m
    }

    fn run(r: &Registrar, req: &Message, unix: u64) -> Message {
        let peer = Peer::udp("127.0.0.1:5062".parse().unwrap());
        Message::parse(r.handle(req, peer, Instant::now(), unix, "t")).unwrap()
    }

    fn answer(challenge_resp: &Message, alg: &str) -> String {
        let ch = challenge_resp
            .fields_named(HeaderName::WwwAuthenticate)
            .map(|h| Challenge::parse(challenge_resp.value(h).unwrap()).unwrap())
            .find(|c| c.algorithm.as_str() == alg)
            .unwrap();
        ch.answer("1001", "secret", "REGISTER", "sip:switchboard", "cn", 1)
    }

    #[test]
    fn challenge_then_register_with_each_algorithm() {
        let r = registrar();
        for alg in ["SHA-256", "MD5"] {
            let resp = run(
                &r,
                &register("Contact: <sip:1001@127.0.0.1:5062>\r\n", 1),
                1000,
            );
            assert_eq!(resp.status(), Some(401));
            assert_eq!(resp.fields_named(HeaderName::WwwAuthenticate).count(), 2);
            let auth = answer(&resp, alg);
            let req = register(
                &format!(
                    "Contact: <sip:1001@127.0.0.1:5062>;expires=120\r\nAuthorization: {auth}\r\n"
                ),
                2,
            );
            let ok = run(&r, &req, 1001);
            assert_eq!(ok.status(), Some(200), "{alg}: {ok:?}");
            let Contacts::List(c) = ok.contacts().unwrap() else {
                panic!()
            };
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].params.get("expires"), Some("120"));
            r.location.lock().unwrap().remove_all("1001@switchboard");
        }
    }

    #[test]
    fn wrong_password_stale_nonce_interval_and_star() {
        let r = registrar();
        let ch = run(&r, &register("", 1), 1000);
        let bad = answer(&ch, "MD5").replace("response=\"", "response=\"0");
        assert_eq!(
            run(&r, &register(&format!("Authorization: {bad}\r\n"), 2), 1000).status(),
            Some(401)
        );
        let good = answer(&ch, "MD5");
        let stale = run(
            &r,
            &register(
                &format!("Authorization: {good}\r\nContact: <sip:1001@h>\r\n"),
                3,
            ),
            2000,
        );
        assert_eq!(stale.status(), Some(401));
        assert!(stale
            .get(HeaderName::WwwAuthenticate)
            .unwrap()
            .contains("stale=true"));
        let brief = run(
            &r,
            &register(
                &format!("Authorization: {good}\r\nContact: <sip:1001@h>;expires=5\r\n"),
                4,
            ),
            1000,
        );
        assert_eq!(brief.status(), Some(423));
        assert_eq!(brief.min_expires().unwrap(), Some(60));
        let ok = run(
            &r,
            &register(
                &format!("Authorization: {good}\r\nContact: <sip:1001@h>, <sip:1001@g>;q=0.5\r\n"),
                5,
            ),
            1000,
        );
        assert_eq!(ok.status(), Some(200));
        assert_eq!(
            r.location
                .lock()
                .unwrap()
                .lookup("1001@switchboard", Instant::now())
                .len(),
            2
        );
        let star_bad = run(
            &r,
            &register(&format!("Authorization: {good}\r\nContact: *\r\n"), 6),
            1000,
        );
        assert_eq!(star_bad.status(), Some(400));
        let star = run(
            &r,
            &register(
                &format!("Authorization: {good}\r\nContact: *\r\nExpires: 0\r\n"),
                7,
            ),
            1000,
        );
        assert_eq!(star.status(), Some(200));
        assert!(r
            .location
            .lock()
            .unwrap()
            .lookup("1001@switchboard", Instant::now())
            .is_empty());
    }

    #[test]
    fn out_of_order_register_is_refused() {
        let r = registrar();
        let good = answer(&run(&r, &register("", 1), 1000), "SHA-256");
        let reg = |cseq| {
            register(
                &format!("Authorization: {good}\r\nContact: <sip:1001@h>\r\n"),
                cseq,
            )
        };
        assert_eq!(run(&r, &reg(10), 1000).status(), Some(200));
        assert_eq!(run(&r, &reg(9), 1000).status(), Some(500));
    }
}
