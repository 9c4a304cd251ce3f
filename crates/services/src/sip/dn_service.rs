//! EventDNBackInService / EventDNOutOfService from registrations: an extension DN of a tenant
//! is in service while a device is registered for `{dn}@{tenant domain}`. The registrar's
//! location service is polled (it lives on the SIP edge's thread); the diff against the last
//! poll is published on `events:{tenant}`.
//!
//! A DN nobody ever registered has no event: agent-state and routing treat a DN as in service
//! until told otherwise, so agents on phones that never register (tests, external devices)
//! stay routable.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use switchboard_bus::SharedBus;
use switchboard_config::{Config, DnKind};
use switchboard_events::{DnAttrs, Event};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::location::Location;
use super::role::SharedLocation;

/// `(tenant, dn)`.
pub type TenantDn = (String, String);

/// The extension DNs of every tenant, by their AOR in the location service.
#[derive(Clone, Debug, Default)]
pub struct Extensions {
    /// `(aor, tenant, dn)`.
    aors: Vec<(String, String, String)>,
}

impl Extensions {
    pub fn from_config(config: &Config) -> Extensions {
        let aors = config
            .tenants
            .iter()
            .flat_map(|t| {
                t.dns
                    .iter()
                    .filter(|d| d.kind == DnKind::Extension)
                    .map(move |d| {
                        (
                            format!("{}@{}", d.number, t.domain),
                            t.name.clone(),
                            d.number.clone(),
                        )
                    })
            })
            .collect();
        Extensions { aors }
    }

    /// The extensions with a live registration.
    pub fn registered(&self, location: &Location, now: Instant) -> BTreeSet<TenantDn> {
        self.aors
            .iter()
            .filter(|(aor, _, _)| !location.lookup(aor, now).is_empty())
            .map(|(_, t, d)| (t.clone(), d.clone()))
            .collect()
    }
}

/// What changed since the last poll.
#[derive(Debug, Default)]
pub struct DnWatch {
    registered: BTreeSet<TenantDn>,
}

impl DnWatch {
    /// The events for DNs that registered (back in service) or lost their last registration
    /// (out of service) since the last call.
    pub fn update(&mut self, now_registered: BTreeSet<TenantDn>, ts_ms: u64) -> Vec<Event> {
        let attrs = |(tenant, dn): &TenantDn| DnAttrs {
            tenant: tenant.clone(),
            this_dn: dn.clone(),
            ts_ms,
        };
        let mut out: Vec<Event> = now_registered
            .difference(&self.registered)
            .map(|d| Event::EventDNBackInService(attrs(d)))
            .collect();
        out.extend(
            self.registered
                .difference(&now_registered)
                .map(|d| Event::EventDNOutOfService(attrs(d))),
        );
        self.registered = now_registered;
        out
    }
}

/// How often the location service is looked at.
const POLL: Duration = Duration::from_millis(500);

/// Publishes the DN service events of the registrations in `location` until the drain.
pub fn spawn(
    config: &Config,
    location: SharedLocation,
    bus: SharedBus,
    drain: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let extensions = Extensions::from_config(config);
    tokio::spawn(async move {
        let mut watch = DnWatch::default();
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = drain.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let registered = match location.0.lock() {
                Ok(l) => extensions.registered(&l, Instant::now()),
                Err(_) => continue,
            };
            for event in watch.update(registered, crate::single_writer::now_ms()) {
                tracing::info!(
                    tenant = event.tenant(),
                    dn = event.this_dn().unwrap_or(""),
                    event = event.name(),
                    "DN service changed"
                );
                if let Err(e) = crate::bus::publish_event(bus.as_ref(), &event).await {
                    metrics::counter!("switchboard_dn_service_errors_total").increment(1);
                    tracing::warn!(error = %e, "DN service event not published");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::location::Binding;
    use switchboard_sip::{Peer, Transport};

    fn binding(now: Instant, secs: u64) -> Binding {
        Binding {
            contact: "sip:1001@127.0.0.1:5099".into(),
            expires_at: now + Duration::from_secs(secs),
            q: 1000,
            call_id: "c".into(),
            cseq: 1,
            source: Peer {
                addr: "127.0.0.1:5099".parse().unwrap(),
                transport: Transport::Udp,
            },
            user_agent: None,
        }
    }

    #[test]
    fn registrations_move_dns_in_and_out_of_service() {
        let config = Config::demo();
        let ext = Extensions::from_config(&config);
        let now = Instant::now();
        let mut loc = Location::default();
        let mut watch = DnWatch::default();
        assert!(watch.update(ext.registered(&loc, now), 1).is_empty());
        loc.bindings_mut("1001@switchboard").push(binding(now, 60));
        // Not an extension of the tenant: ignored.
        loc.bindings_mut("5000@switchboard").push(binding(now, 60));
        let events = watch.update(ext.registered(&loc, now), 2);
        assert_eq!(events.len(), 1);
        match &events[0] {
            Event::EventDNBackInService(d) => {
                assert_eq!(
                    (d.tenant.as_str(), d.this_dn.as_str(), d.ts_ms),
                    ("demo", "1001", 2)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(watch.update(ext.registered(&loc, now), 3).is_empty());
        // The registration expires.
        let later = now + Duration::from_secs(61);
        let events = watch.update(ext.registered(&loc, later), 4);
        assert!(matches!(&events[..], [Event::EventDNOutOfService(d)] if d.this_dn == "1001"));
        // Registered again, then removed (REGISTER with Expires: 0).
        loc.bindings_mut("1001@switchboard")
            .push(binding(later, 60));
        assert_eq!(watch.update(ext.registered(&loc, later), 5).len(), 1);
        loc.remove_all("1001@switchboard");
        let events = watch.update(ext.registered(&loc, later), 6);
        assert!(matches!(&events[..], [Event::EventDNOutOfService(_)]));
    }
}
