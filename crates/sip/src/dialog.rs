//! Dialogs (RFC 3261 §12): the state two UAs share after an INVITE (or SUBSCRIBE, REFER) is
//! answered with a tag, and the rules for requests inside it: identity, CSeq ordering, route
//! set, remote target and its refreshes.
//!
//! A [`Dialog`] is plain data owned by the TU (the B2BUA keeps one per call leg). It builds
//! in-dialog requests as a [`Builder`] the caller finishes (extra headers, body), and it checks
//! requests and responses that arrive in the dialog. Branches, tags and the transport choice
//! stay with the caller.

use crate::build::Builder;
use crate::header::{HeaderName, Method, NameAddr};
use crate::message::{Contacts, Error, Message};
use crate::uri::Uri;

/// Call-ID + local tag + remote tag (RFC 3261 §12).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

impl DialogId {
    /// The dialog a received request belongs to, from the UAS's side: local tag = To tag,
    /// remote tag = From tag. `None` when the request carries no To tag (it is not in a dialog)
    /// or lacks the headers.
    pub fn of_request(req: &Message) -> Option<DialogId> {
        Some(DialogId {
            call_id: req.call_id().ok()?.to_owned(),
            local_tag: req.to().ok()?.tag()?.to_owned(),
            remote_tag: req.from().ok()?.tag().unwrap_or("").to_owned(),
        })
    }

    /// The dialog a response to our request belongs to, from the UAC's side: local tag = From
    /// tag, remote tag = To tag. `None` without a To tag.
    pub fn of_response(resp: &Message) -> Option<DialogId> {
        Some(DialogId {
            call_id: resp.call_id().ok()?.to_owned(),
            local_tag: resp.from().ok()?.tag()?.to_owned(),
            remote_tag: resp.to().ok()?.tag()?.to_owned(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialogState {
    /// Created by a provisional response with a To tag.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
}

/// Which side of the dialog-creating request we were.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Uac,
    Uas,
}

/// Why a dialog could not be created or a message was refused. [`DialogError::status`] is
/// what to answer a refused request with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error(transparent)]
    Message(#[from] Error),
    #[error("status {0} does not create a dialog (101-299 with a To tag does)")]
    NotDialogCreating(u16),
    #[error("missing {0} tag")]
    MissingTag(&'static str),
    #[error("no usable Contact: {0}")]
    Contact(&'static str),
    #[error("the message does not belong to this dialog")]
    NotThisDialog,
    #[error("CSeq {got} is lower than the last one received ({last})")]
    OutOfOrder { got: u32, last: u32 },
    #[error("{0} is not sent with Dialog::request (use Dialog::ack or build::cancel_for)")]
    Method(&'static str),
    #[error("the local CSeq would reach 2**31")]
    CSeqExhausted,
}

impl DialogError {
    /// The response status for a request refused with this error (RFC 3261 §12.2.2).
    pub fn status(&self) -> u16 {
        match self {
            DialogError::Message(e) => e.status(),
            DialogError::NotThisDialog => 481,
            DialogError::OutOfOrder { .. } => 500,
            _ => 400,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    id: DialogId,
    role: Role,
    state: DialogState,
    local_seq: Option<u32>,
    remote_seq: Option<u32>,
    /// The From value of our requests: local URI with display name, parameters and our tag.
    local_party: String,
    /// The To value of our requests: remote URI with the remote tag.
    remote_party: String,
    remote_target: String,
    /// Our Contact, put in target refresh requests.
    local_target: Option<String>,
    /// URIs in the order our requests carry them as Route headers.
    route_set: Vec<String>,
    secure: bool,
}

/// Requests that replace the remote target (RFC 3261 §12.2, RFC 3311, RFC 6665).
pub fn is_target_refresh(method: &Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
    )
}

/// A header value on one line: folds become the white space after them.
fn one_line(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// A URI as a Request-URI: without the `?headers` part, which a Request-URI may not carry.
fn as_request_uri(uri: &Uri<'_>) -> String {
    match uri {
        Uri::Sip(u) => {
            let raw = u.raw;
            match u.headers {
                Some(h) => raw[..raw.len() - h.len() - 1].to_owned(),
                None => raw.to_owned(),
            }
        }
        other => other.to_string(),
    }
}

/// The first Contact URI of a message.
fn contact_uri(msg: &Message) -> Result<Option<String>, DialogError> {
    match msg.contacts()? {
        Contacts::Star => Err(DialogError::Contact("'*' is not a target")),
        Contacts::List(list) => Ok(list.first().map(|c| c.uri.to_string())),
    }
}

/// The Contact header value as written, for our own Contact.
fn contact_value(msg: &Message) -> Option<String> {
    msg.get(HeaderName::Contact).map(one_line)
}

fn uris<'a>(list: &'a [NameAddr<'a>]) -> impl DoubleEndedIterator<Item = String> + 'a {
    list.iter().map(|r| r.uri.to_string())
}

fn is_sips(uri: Option<&str>) -> bool {
    uri.is_some_and(|u| u.len() >= 5 && u[..5].eq_ignore_ascii_case("sips:"))
}

impl Dialog {
    /// The UAC's dialog from the request it sent and a response to it: a 101-199 with a To
    /// tag makes an early dialog, a 2xx a confirmed one (RFC 3261 §12.1.2). Each To tag
    /// (fork) is its own dialog.
    pub fn uac(req: &Message, resp: &Message) -> Result<Dialog, DialogError> {
        let code = resp.status().ok_or(Error::Invalid("not a response"))?;
        let state = match code {
            101..=199 => DialogState::Early,
            200..=299 => DialogState::Confirmed,
            c => return Err(DialogError::NotDialogCreating(c)),
        };
        let id = DialogId::of_response(resp).ok_or(DialogError::MissingTag("To"))?;
        let remote_target = match contact_uri(resp)? {
            Some(c) => c,
            // A provisional may omit it; the request's target stands in until one comes.
            None if state == DialogState::Early => {
                req.request_uri_str().unwrap_or_default().to_owned()
            }
            None => {
                return Err(DialogError::Contact(
                    "a 2xx that creates a dialog needs one",
                ))
            }
        };
        let route_set = uris(&resp.record_routes()?).rev().collect();
        Ok(Dialog {
            id,
            role: Role::Uac,
            state,
            local_seq: Some(req.cseq()?.seq),
            remote_seq: None,
            local_party: one_line(req.get(HeaderName::From).unwrap_or_default()),
            remote_party: one_line(resp.get(HeaderName::To).unwrap_or_default()),
            remote_target,
            local_target: contact_value(req),
            route_set,
            secure: is_sips(req.request_uri_str()),
        })
    }

    /// The UAS's dialog from the request it received and the response it sends (with its To
    /// tag and Contact): 101-199 makes it early, 2xx confirmed (RFC 3261 §12.1.1).
    pub fn uas(req: &Message, resp: &Message) -> Result<Dialog, DialogError> {
        let code = resp.status().ok_or(Error::Invalid("not a response"))?;
        let state = match code {
            101..=199 => DialogState::Early,
            200..=299 => DialogState::Confirmed,
            c => return Err(DialogError::NotDialogCreating(c)),
        };
        let local_tag = resp.to()?.tag().ok_or(DialogError::MissingTag("To"))?;
        let remote_target =
            contact_uri(req)?.ok_or(DialogError::Contact("a dialog-creating request needs one"))?;
        Ok(Dialog {
            id: DialogId {
                call_id: req.call_id()?.to_owned(),
                local_tag: local_tag.to_owned(),
                // RFC 2543 clients may send no From tag: the remote tag is then empty.
                remote_tag: req.from()?.tag().unwrap_or("").to_owned(),
            },
            role: Role::Uas,
            state,
            local_seq: None,
            remote_seq: Some(req.cseq()?.seq),
            local_party: one_line(resp.get(HeaderName::To).unwrap_or_default()),
            remote_party: one_line(req.get(HeaderName::From).unwrap_or_default()),
            remote_target,
            local_target: contact_value(resp),
            route_set: uris(&req.record_routes()?).collect(),
            secure: is_sips(req.request_uri_str()),
        })
    }

    pub fn id(&self) -> &DialogId {
        &self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> DialogState {
        self.state
    }

    pub fn local_seq(&self) -> Option<u32> {
        self.local_seq
    }

    pub fn remote_seq(&self) -> Option<u32> {
        self.remote_seq
    }

    pub fn remote_target(&self) -> &str {
        &self.remote_target
    }

    /// Route URIs in the order our requests list them.
    pub fn route_set(&self) -> &[String] {
        &self.route_set
    }

    /// True if the dialog was set up over SIPS: requests in it must use TLS.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Our From value (with our tag).
    pub fn local_party(&self) -> &str {
        &self.local_party
    }

    /// Our To value (with the remote tag).
    pub fn remote_party(&self) -> &str {
        &self.remote_party
    }

    /// Replaces the Contact our target refresh requests carry.
    pub fn set_local_target(&mut self, contact: impl Into<String>) {
        self.local_target = Some(contact.into());
    }

    /// Sets the number the next local CSeq continues from (a UAS dialog starts empty, and
    /// then its first request uses 1).
    pub fn set_local_seq(&mut self, seq: u32) {
        self.local_seq = Some(seq);
    }

    /// An early dialog became confirmed: the UAS sent its 2xx.
    pub fn confirm(&mut self) {
        self.state = DialogState::Confirmed;
    }

    /// The URI the next hop of in-dialog requests is resolved from (RFC 3263): the first
    /// route, else the remote target.
    pub fn next_hop(&self) -> &str {
        self.route_set
            .first()
            .map_or(self.remote_target.as_str(), String::as_str)
    }

    /// Starts a request inside the dialog (BYE, re-INVITE, INFO, UPDATE, NOTIFY, REFER,
    /// PRACK, MESSAGE...) with the next local CSeq. `via` is the whole Via value with a fresh
    /// branch. The caller adds headers and finishes with a body or `finish()`.
    pub fn request(&mut self, method: &Method, via: &str) -> Result<Builder, DialogError> {
        match method {
            Method::Ack => return Err(DialogError::Method("ACK")),
            Method::Cancel => return Err(DialogError::Method("CANCEL")),
            _ => {}
        }
        let seq = match self.local_seq {
            Some(s) if s >= (1 << 31) - 1 => return Err(DialogError::CSeqExhausted),
            Some(s) => s + 1,
            None => 1,
        };
        self.local_seq = Some(seq);
        let mut b = self.start(method, via, seq);
        if is_target_refresh(method) {
            if let Some(c) = &self.local_target {
                b = b.header("Contact", c);
            }
        }
        Ok(b)
    }

    /// The ACK for a 2xx to the INVITE sent with CSeq `invite_seq` (RFC 3261 §13.2.2.4):
    /// same CSeq number, its own branch in `via`, routed like any in-dialog request. Add the
    /// INVITE's credentials and, for offers in the 2xx, the answer body.
    pub fn ack(&self, invite_seq: u32, via: &str) -> Builder {
        self.start(&Method::Ack, via, invite_seq)
    }

    fn start(&self, method: &Method, via: &str, seq: u32) -> Builder {
        let strict = self.route_set.first().is_some_and(|first| {
            // A route we cannot parse is treated as loose: it still gets the request.
            Uri::parse(first)
                .ok()
                .and_then(|u| u.as_sip().map(|s| !s.params.has("lr")))
                .unwrap_or(false)
        });
        let mut b;
        if strict {
            // RFC 3261 §12.2.1.1: the strict router gets the request addressed to itself,
            // and the remote target rides at the end of the Route list.
            let first = &self.route_set[0];
            let ruri = Uri::parse(first)
                .map(|u| strip_for_request_uri(&u))
                .unwrap_or_else(|_| first.clone());
            b = Builder::request(method, &ruri)
                .header("Via", via)
                .header("Max-Forwards", 70);
            for r in &self.route_set[1..] {
                b = b.header("Route", format_args!("<{r}>"));
            }
            b = b.header("Route", format_args!("<{}>", self.remote_target));
        } else {
            let ruri = Uri::parse(&self.remote_target)
                .map(|u| as_request_uri(&u))
                .unwrap_or_else(|_| self.remote_target.clone());
            b = Builder::request(method, &ruri)
                .header("Via", via)
                .header("Max-Forwards", 70);
            for r in &self.route_set {
                b = b.header("Route", format_args!("<{r}>"));
            }
        }
        b.header("From", &self.local_party)
            .header("To", &self.remote_party)
            .header("Call-ID", &self.id.call_id)
            .header("CSeq", format_args!("{seq} {method}"))
    }

    /// True if `req` (received) carries this dialog's Call-ID and tags.
    pub fn matches_request(&self, req: &Message) -> bool {
        DialogId::of_request(req).is_some_and(|id| id == self.id)
    }

    /// Checks a request received in the dialog (RFC 3261 §12.2.2): it must carry the dialog's
    /// identity (else 481) and a CSeq not lower than the last one (else 500); ACK and CANCEL
    /// reuse their INVITE's number and are exempt. Records the CSeq and, for a target refresh
    /// request with a Contact, the new remote target.
    pub fn on_request(&mut self, req: &Message) -> Result<(), DialogError> {
        if !self.matches_request(req) {
            return Err(DialogError::NotThisDialog);
        }
        let method = req.method().ok_or(Error::Invalid("not a request"))?;
        if matches!(method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        let seq = req.cseq()?.seq;
        if let Some(last) = self.remote_seq {
            if seq < last {
                return Err(DialogError::OutOfOrder { got: seq, last });
            }
        }
        let target = if is_target_refresh(method) {
            contact_uri(req)?
        } else {
            None
        };
        self.remote_seq = Some(seq);
        if let Some(t) = target {
            self.remote_target = t;
        }
        Ok(())
    }

    /// Applies a response to a request we sent in the dialog (or to the INVITE that created
    /// it): a 2xx to INVITE confirms an early UAC dialog and, as RFC 3261 §13.2.2.4 asks,
    /// recomputes its route set; a 2xx to a target refresh request (and a provisional in an
    /// early dialog) carries the new remote target.
    pub fn on_response(&mut self, method: &Method, resp: &Message) -> Result<(), DialogError> {
        let code = resp.status().ok_or(Error::Invalid("not a response"))?;
        let id = DialogId::of_response(resp).ok_or(DialogError::NotThisDialog)?;
        if id != self.id {
            return Err(DialogError::NotThisDialog);
        }
        let early = self.state == DialogState::Early;
        let refresh = match code {
            101..=199 => early,
            200..=299 => is_target_refresh(method),
            _ => false,
        };
        let target = if refresh { contact_uri(resp)? } else { None };
        if early && self.role == Role::Uac && *method == Method::Invite && code / 100 == 2 {
            self.state = DialogState::Confirmed;
            self.route_set = uris(&resp.record_routes()?).rev().collect();
        }
        if let Some(t) = target {
            self.remote_target = t;
        }
        Ok(())
    }
}

/// A route URI as a Request-URI for a strict router: no `?headers`, no `method` parameter
/// (RFC 3261 §19.1.1 allows neither there).
fn strip_for_request_uri(uri: &Uri<'_>) -> String {
    let base = as_request_uri(uri);
    let Some(sip) = uri.as_sip() else {
        return base;
    };
    let params = sip.params.raw();
    let Some(r) = crate::text::param_span(params, "method") else {
        return base;
    };
    // The parameters are a slice of the URI text and end before any `?headers`.
    let at = params.as_ptr() as usize - sip.raw.as_ptr() as usize;
    match (base.get(..at + r.start), base.get(at + r.end..)) {
        (Some(head), Some(tail)) => format!("{head}{tail}"),
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn strict_route_uri_loses_headers_and_method() {
        let u = Uri::parse("sip:p1.example.com;method=INVITE;transport=udp?x=y").unwrap();
        assert_eq!(
            strip_for_request_uri(&u),
            "sip:p1.example.com;transport=udp"
        );
        let u = Uri::parse("sip:p1.example.com;transport=udp").unwrap();
        assert_eq!(
            strip_for_request_uri(&u),
            "sip:p1.example.com;transport=udp"
        );
    }

    #[test]
    fn folded_party_is_kept_on_one_line() {
        let m = parse("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: \"A\"\r\n <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n");
        assert_eq!(
            one_line(m.get(HeaderName::From).unwrap()),
            "\"A\" <sip:a@h>;tag=1"
        );
    }
}
