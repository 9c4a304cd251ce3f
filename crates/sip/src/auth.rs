//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616): challenges, credentials, and
//! response computation for MD5 and SHA-256 (and their -sess forms) with qop=auth.
//!
//! Nonces are stateless: `hex(issued_at) . hex(HMAC-SHA256(secret, issued_at . realm . salt))`, so
//! any node holding the secret can check one, and an expired one yields `stale=true` instead of a
//! failure (the UA retries with the same password without asking the user).

use crate::text::{is_token_char, unquote, Cursor};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Algorithm> {
        Some(match s.to_ascii_uppercase().as_str() {
            "MD5" => Algorithm::Md5,
            "MD5-SESS" => Algorithm::Md5Sess,
            "SHA-256" => Algorithm::Sha256,
            "SHA-256-SESS" => Algorithm::Sha256Sess,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn hash(self, parts: &[&[u8]]) -> String {
        fn run<D: Digest>(parts: &[&[u8]]) -> String {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex::encode(d.finalize())
        }
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => run::<Md5>(parts),
            Algorithm::Sha256 | Algorithm::Sha256Sess => run::<Sha256>(parts),
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }
}

/// Parsed `Digest k=v, k="v", ...` parameters of a challenge or credentials header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestParams<'a> {
    list: Vec<(&'a str, &'a str)>,
}

impl<'a> DigestParams<'a> {
    /// Parses a header value; the scheme must be `Digest`.
    pub fn parse(value: &'a str) -> Result<Self, &'static str> {
        let mut c = Cursor::new(value);
        c.ws();
        let scheme = c.token().ok_or("missing auth scheme")?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err("auth scheme is not Digest");
        }
        let mut list = Vec::with_capacity(10);
        loop {
            c.ws();
            let name = c.token().ok_or("missing parameter name")?;
            if !c.sep(b'=') {
                return Err("parameter without '='");
            }
            let v = if c.peek() == Some(b'"') {
                c.quoted()?
            } else {
                let v = c.take_while(|b| is_token_char(b) || b == b'/' || b == b':');
                if v.is_empty() {
                    return Err("empty parameter value");
                }
                v
            };
            list.push((name, v));
            c.ws();
            if c.at_end() {
                break;
            }
            if !c.eat(b',') {
                return Err("expected ',' between parameters");
            }
        }
        Ok(DigestParams { list })
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.list
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| unquote(v))
    }

    fn require(&self, name: &'static str) -> Result<&'a str, AuthError> {
        self.get(name).ok_or(AuthError::Missing(name))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("credentials lack the {0} parameter")]
    Missing(&'static str),
    #[error("unsupported digest algorithm")]
    Algorithm,
    #[error("unsupported qop")]
    Qop,
}

/// A `WWW-Authenticate`/`Proxy-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: Algorithm,
    pub opaque: Option<String>,
    pub stale: bool,
    pub qop_auth: bool,
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest realm=\"{}\", nonce=\"{}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.as_str()
        )?;
        if self.qop_auth {
            f.write_str(", qop=\"auth\"")?;
        }
        if let Some(o) = &self.opaque {
            write!(f, ", opaque=\"{o}\"")?;
        }
        if self.stale {
            f.write_str(", stale=true")?;
        }
        Ok(())
    }
}

impl Challenge {
    pub fn parse(value: &str) -> Result<Challenge, AuthError> {
        let p = DigestParams::parse(value).map_err(AuthError::Malformed)?;
        let algorithm = match p.get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or(AuthError::Algorithm)?,
        };
        Ok(Challenge {
            realm: p.require("realm")?.to_string(),
            nonce: p.require("nonce")?.to_string(),
            algorithm,
            opaque: p.get("opaque").map(str::to_string),
            stale: p
                .get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
            qop_auth: p
                .get("qop")
                .is_some_and(|q| q.split(',').any(|t| t.trim() == "auth")),
        })
    }

    /// The `Authorization` value a UA sends in answer (client side; used by tests and UAC legs).
    pub fn answer(
        &self,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let nc = format!("{nc:08x}");
        let qop = self.qop_auth.then_some("auth");
        let response = compute_response(
            self.algorithm,
            &Inputs {
                user,
                realm: &self.realm,
                password,
                nonce: &self.nonce,
                method,
                uri,
                cnonce,
                nc: &nc,
                qop,
            },
        );
        let mut v = format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.as_str()
        );
        if qop.is_some() {
            v.push_str(&format!(", qop=auth, cnonce=\"{cnonce}\", nc={nc}"));
        }
        if let Some(o) = &self.opaque {
            v.push_str(&format!(", opaque=\"{o}\""));
        }
        v
    }
}

struct Inputs<'a> {
    user: &'a str,
    realm: &'a str,
    password: &'a str,
    nonce: &'a str,
    method: &'a str,
    uri: &'a str,
    cnonce: &'a str,
    nc: &'a str,
    qop: Option<&'a str>,
}

fn compute_response(alg: Algorithm, i: &Inputs<'_>) -> String {
    let mut ha1 = alg.hash(&[i.user.as_bytes(), i.realm.as_bytes(), i.password.as_bytes()]);
    if alg.is_sess() {
        ha1 = alg.hash(&[ha1.as_bytes(), i.nonce.as_bytes(), i.cnonce.as_bytes()]);
    }
    let ha2 = alg.hash(&[i.method.as_bytes(), i.uri.as_bytes()]);
    match i.qop {
        Some(q) => alg.hash(&[
            ha1.as_bytes(),
            i.nonce.as_bytes(),
            i.nc.as_bytes(),
            i.cnonce.as_bytes(),
            q.as_bytes(),
            ha2.as_bytes(),
        ]),
        None => alg.hash(&[ha1.as_bytes(), i.nonce.as_bytes(), ha2.as_bytes()]),
    }
}

/// `Authorization` / `Proxy-Authorization` credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
    pub uri: &'a str,
    pub response: &'a str,
    pub algorithm: Algorithm,
    pub cnonce: Option<&'a str>,
    pub nc: Option<&'a str>,
    pub qop: Option<&'a str>,
    pub opaque: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    pub fn parse(value: &'a str) -> Result<Self, AuthError> {
        let p = DigestParams::parse(value).map_err(AuthError::Malformed)?;
        let algorithm = match p.get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or(AuthError::Algorithm)?,
        };
        let qop = p.get("qop");
        if qop.is_some_and(|q| q != "auth") {
            return Err(AuthError::Qop);
        }
        let c = Credentials {
            username: p.require("username")?,
            realm: p.require("realm")?,
            nonce: p.require("nonce")?,
            uri: p.require("uri")?,
            response: p.require("response")?,
            algorithm,
            cnonce: p.get("cnonce"),
            nc: p.get("nc"),
            qop,
            opaque: p.get("opaque"),
        };
        if c.qop.is_some() && (c.cnonce.is_none() || c.nc.is_none()) {
            return Err(AuthError::Missing("cnonce/nc"));
        }
        Ok(c)
    }

    /// True if the response matches `password` for a request with this method.
    pub fn verify(&self, password: &str, method: &str) -> bool {
        let expected = compute_response(
            self.algorithm,
            &Inputs {
                user: self.username,
                realm: self.realm,
                password,
                nonce: self.nonce,
                method,
                uri: self.uri,
                cnonce: self.cnonce.unwrap_or(""),
                nc: self.nc.unwrap_or(""),
                qop: self.qop,
            },
        );
        constant_time_eq(
            expected.as_bytes(),
            self.response.to_ascii_lowercase().as_bytes(),
        )
    }

    /// The nonce count as a number (qop=auth), for replay checks.
    pub fn nonce_count(&self) -> Option<u32> {
        self.nc.and_then(|n| u32::from_str_radix(n, 16).ok())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a nonce check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceState {
    Valid,
    /// Ours, but older than the lifetime: challenge again with `stale=true`.
    Stale,
    /// Not ours (forged, other realm, garbled).
    Invalid,
}

/// Issues and checks stateless nonces. `now` is seconds since the Unix epoch, from the caller.
#[derive(Clone)]
pub struct NonceKeeper {
    secret: [u8; 32],
    lifetime_s: u64,
}

impl NonceKeeper {
    pub fn new(secret: [u8; 32], lifetime_s: u64) -> Self {
        NonceKeeper { secret, lifetime_s }
    }

    /// A fresh nonce; `salt` makes two nonces of the same second differ (caller's randomness).
    pub fn issue(&self, realm: &str, now: u64, salt: u64) -> String {
        let head = format!("{now:x}.{salt:x}");
        format!("{head}.{}", self.mac(realm, &head))
    }

    pub fn check(&self, realm: &str, nonce: &str, now: u64) -> NonceState {
        let Some((head, mac)) = nonce.rsplit_once('.') else {
            return NonceState::Invalid;
        };
        if !constant_time_eq(self.mac(realm, head).as_bytes(), mac.as_bytes()) {
            return NonceState::Invalid;
        }
        let issued = head
            .split('.')
            .next()
            .and_then(|t| u64::from_str_radix(t, 16).ok());
        match issued {
            Some(t) if t <= now + 5 && now.saturating_sub(t) <= self.lifetime_s => {
                NonceState::Valid
            }
            Some(_) => NonceState::Stale,
            None => NonceState::Invalid,
        }
    }

    fn mac(&self, realm: &str, head: &str) -> String {
        hex::encode(&hmac_sha256(&self.secret, &[head.as_bytes(), b"|", realm.as_bytes()])[..16])
    }
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_md5_vector() {
        // RFC 2617 §3.5 example (HTTP), which exercises the same arithmetic.
        let i = Inputs {
            user: "Mufasa",
            realm: "testrealm@host.com",
            password: "Circle Of Life",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            method: "GET",
            uri: "/dir/index.html",
            cnonce: "0a4f113b",
            nc: "00000001",
            qop: Some("auth"),
        };
        assert_eq!(
            compute_response(Algorithm::Md5, &i),
            "6629fae49393a05397450978507c4ef1"
        );
    }

    #[test]
    fn rfc7616_sha256_vector() {
        // RFC 7616 §3.9.1 example.
        let i = Inputs {
            user: "Mufasa",
            realm: "http-auth@example.org",
            password: "Circle of Life",
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            method: "GET",
            uri: "/dir/index.html",
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            nc: "00000001",
            qop: Some("auth"),
        };
        assert_eq!(
            compute_response(Algorithm::Sha256, &i),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn challenge_answer_verify_round_trip() {
        for alg in [Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha256Sess] {
            let ch = Challenge {
                realm: "switchboard".into(),
                nonce: "abc".into(),
                algorithm: alg,
                opaque: Some("op".into()),
                stale: false,
                qop_auth: true,
            };
            let parsed = Challenge::parse(&ch.to_string()).unwrap();
            assert_eq!(parsed, ch);
            let auth = parsed.answer("1001", "secret", "REGISTER", "sip:switchboard", "cn", 1);
            let cred = Credentials::parse(&auth).unwrap();
            assert_eq!(cred.username, "1001");
            assert!(cred.verify("secret", "REGISTER"));
            assert!(!cred.verify("wrong", "REGISTER"));
            assert!(!cred.verify("secret", "INVITE"));
            assert_eq!(cred.nonce_count(), Some(1));
        }
    }

    #[test]
    fn malformed_and_unknown_schemes() {
        assert!(Credentials::parse("NoOneKnowsThisScheme opaque-data=here").is_err());
        assert!(Credentials::parse("Digest username=").is_err());
        assert_eq!(
            Credentials::parse("Digest username=\"a\""),
            Err(AuthError::Missing("realm"))
        );
        assert_eq!(
            Credentials::parse("Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", algorithm=SHA-512"),
            Err(AuthError::Algorithm)
        );
    }

    #[test]
    fn nonces_expire_to_stale_and_reject_forgeries() {
        let k = NonceKeeper::new([7; 32], 300);
        let n = k.issue("switchboard", 1000, 42);
        assert_eq!(k.check("switchboard", &n, 1100), NonceState::Valid);
        assert_eq!(k.check("switchboard", &n, 1301), NonceState::Stale);
        assert_eq!(k.check("other", &n, 1100), NonceState::Invalid);
        let forged = n.replacen("3e8", "3e9", 1);
        assert_eq!(k.check("switchboard", &forged, 1100), NonceState::Invalid);
        assert_eq!(k.check("switchboard", "garbage", 1100), NonceState::Invalid);
        assert_ne!(k.issue("switchboard", 1000, 43), n);
    }
}
