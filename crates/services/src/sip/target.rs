//! Turning URIs into transport destinations, and recognising our own addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use switchboard_sip::{Peer, SipUri, Transport, Uri};

/// Who we are on the wire: listen addresses and the domains we answer for.
#[derive(Clone, Debug)]
pub struct Identity {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub domains: Vec<String>,
}

impl Identity {
    /// Our address for a transport (the one we put in Via and Record-Route).
    pub fn local(&self, t: Transport) -> Option<SocketAddr> {
        match t {
            Transport::Udp => self.udp,
            _ => self.tcp,
        }
    }

    /// True if the URI's host:port is one of our listen addresses (wildcard binds match any
    /// local-looking address) or one of our domains without a port.
    pub fn is_us(&self, u: &SipUri<'_>) -> bool {
        let host = u.host.as_str();
        if u.port.is_none() && self.domains.iter().any(|d| d.eq_ignore_ascii_case(host)) {
            return true;
        }
        let Some(ip) = host_ip(host) else {
            return false;
        };
        let port = u.port.unwrap_or(if u.secure { 5061 } else { 5060 });
        [self.udp, self.tcp].into_iter().flatten().any(|a| {
            a.port() == port
                && (a.ip() == ip
                    || (a.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        })
    }

    pub fn is_us_uri(&self, u: &Uri<'_>) -> bool {
        u.as_sip().is_some_and(|s| self.is_us(s))
    }

    pub fn sent_by_is_us(&self, host: &str, port: Option<u16>) -> bool {
        let Some(ip) = host_ip(host) else {
            return false;
        };
        let port = port.unwrap_or(5060);
        [self.udp, self.tcp]
            .into_iter()
            .flatten()
            .any(|a| a.port() == port && a.ip() == ip)
    }
}

/// An IP address from a URI host: IP literals (IPv6 with or without brackets) and `localhost`.
/// Names are not resolved: Switchboard routes on addresses from registrations, configuration
/// and Record-Route, which are addresses.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if h.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    h.parse().ok()
}

/// Where a request for this URI goes (RFC 3263 without DNS): maddr or host, port, transport.
pub fn uri_peer(u: &SipUri<'_>) -> Option<Peer> {
    let host = u.param("maddr").unwrap_or(u.host.as_str());
    let ip = host_ip(host)?;
    let transport = match u.param("transport") {
        Some(t) => Transport::from_via_token(t)?,
        None if u.secure => Transport::Tls,
        None => Transport::Udp,
    };
    let default_port = if u.secure { 5061 } else { 5060 };
    Some(Peer {
        addr: SocketAddr::new(ip, u.port.unwrap_or(default_port)),
        transport,
    })
}
