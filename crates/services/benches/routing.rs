//! Routing throughput: submissions per second through queue and agent selection, with
//! simulated agents (no media, no SIP).
//!
//! The tenant: 200 agents on 200 DNs, 20 skills, each agent with 4 of them at levels 1..=10;
//! calls ask for one of 50 expressions over those skills (`s3 >= 4 & s7`, `s1 | s12 > 5`, ...).
//!
//! * `cycle/reducer`: the pure reducer. One iteration = one call: submitted (it takes the
//!   longest idle matching agent, or waits), and the call placed 100 calls earlier ends: its
//!   agent's DN rings, answers, releases, and the agent is Ready again (the events agent-state
//!   would publish), which gives it the first waiting call it matches. So agents cycle
//!   ready -> reserved -> busy -> ready and the queue holds a steady backlog.
//! * `cycle/json`: the same through the role's `Core` face: the request parsed from JSON,
//!   replies serialized, as the glue does before touching the bus.
//! * `cycle/strategy`: the same with a routing strategy in front: per call a new SCXML session
//!   (the ECMAScript data model) reads the call's data, picks the skill expression and
//!   priority, and `<send>`s the submission; its parameters become the `RoutingRequest`.
//! * `role/embedded`: the role on an embedded bus: 200 Ready agents, 200 submissions
//!   published by 8 concurrent submitters, the time until their 200 targets are on the reply
//!   stream (read, parse, select, publish EventAgentReserved and the reply, snapshot, ack).
//!
//! `cargo bench -p switchboard-services --bench routing`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard_bus::{EmbeddedBus, SharedBus};
use switchboard_config::{Agent, AgentGroup, Config, Dn, DnKind, Skill, Tenant};
use switchboard_events::requests::{routing_requests_stream, RoutingRequest};
use switchboard_events::{AgentAttrs, CallAttrs, ConnId, Event, UserData};
use switchboard_services::routing::{self, Output, Queues};
use switchboard_services::single_writer::{Core, Timing};
use tokio_util::sync::CancellationToken;

const AGENTS: usize = 200;
const SKILLS: usize = 20;
const EXPRESSIONS: usize = 50;
/// Calls in progress while the reducer benches run (the backlog waits behind them).
const IN_FLIGHT: usize = 100;

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn tenant() -> Tenant {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut t = Config::demo().tenants.remove(0);
    t.skills = (0..SKILLS)
        .map(|i| Skill {
            name: format!("s{i}"),
            description: String::new(),
        })
        .collect();
    t.agent_groups = vec![AgentGroup {
        name: "all".into(),
        description: String::new(),
        after_call_work_s: 0,
    }];
    t.dns = (0..AGENTS)
        .map(|i| Dn::new(format!("{}", 20_000 + i), DnKind::Extension))
        .collect();
    t.agents = (0..AGENTS)
        .map(|i| Agent {
            login_id: format!("ag{i}"),
            name: String::new(),
            dn: Some(format!("{}", 20_000 + i)),
            skills: (0..4)
                .map(|_| (format!("s{}", rng.next(SKILLS)), 1 + rng.next(10) as u32))
                .collect(),
            groups: vec!["all".into()],
        })
        .collect();
    t.route_points.clear();
    t.mailboxes.clear();
    t.dialplan.clear();
    t
}

fn expressions() -> Vec<String> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..EXPRESSIONS)
        .map(|i| match i % 3 {
            0 => format!("s{} >= {}", rng.next(SKILLS), 1 + rng.next(5)),
            1 => format!("s{} & s{}", rng.next(SKILLS), rng.next(SKILLS)),
            _ => format!(
                "s{} | s{} > {}",
                rng.next(SKILLS),
                rng.next(SKILLS),
                rng.next(6)
            ),
        })
        .collect()
}

fn agent_event(kind: fn(AgentAttrs) -> Event, i: usize, ts: u64) -> Event {
    kind(AgentAttrs {
        tenant: "demo".into(),
        agent_id: format!("ag{i}"),
        this_dn: format!("{}", 20_000 + i),
        ts_ms: ts,
        ..Default::default()
    })
}

fn call_event(kind: fn(CallAttrs) -> Event, conn: u64, dn: &str, ts: u64) -> Event {
    kind(CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(ConnId(conn)),
        this_dn: dn.into(),
        ts_ms: ts,
        ..Default::default()
    })
}

fn submission(conn: u64, skills: &str, now: u64) -> RoutingRequest {
    RoutingRequest::Submit {
        tenant: "demo".into(),
        request_id: format!("r{conn}"),
        conn_id: ConnId(conn),
        queue: "q".into(),
        skills: skills.into(),
        agent_group: None,
        priority: (conn % 3) as i32,
        enqueued_ms: now,
        timeout_s: None,
        reply_to: "replies".into(),
        user_data: UserData::new(),
    }
}

/// The reducer with every agent logged in and Ready.
fn ready_queues(tenant: &Tenant) -> Queues {
    let mut q = Queues::new(tenant, 10_000);
    for i in 0..AGENTS {
        q.event(&agent_event(Event::EventAgentLogin, i, 1), 1);
        q.event(&agent_event(Event::EventAgentReady, i, 1 + i as u64), 1);
    }
    q
}

/// The simulated floor: calls given an agent are remembered and ended `IN_FLIGHT` calls later.
struct Floor {
    targets: std::collections::VecDeque<(u64, String)>,
}

impl Floor {
    fn note(&mut self, out: &[Output]) {
        for o in out {
            if let Output::Reply {
                reply: switchboard_events::requests::RoutingReply::Target { conn_id, dn, .. },
                ..
            } = o
            {
                self.targets.push_back((conn_id.0, dn.clone()));
            }
        }
    }

    /// Ends the oldest call: ringing, established, released, Ready again.
    fn end_one(&mut self, q: &mut Queues, now: u64) -> Vec<Output> {
        let Some((conn, dn)) = self.targets.pop_front() else {
            return Vec::new();
        };
        let agent: usize = dn.parse::<usize>().map(|d| d - 20_000).unwrap_or(0);
        q.event(&call_event(Event::EventRinging, conn, &dn, now), now);
        q.event(&call_event(Event::EventEstablished, conn, &dn, now), now);
        q.event(&call_event(Event::EventReleased, conn, &dn, now), now);
        q.event(&agent_event(Event::EventAgentReady, agent, now), now)
    }
}

fn cycle(c: &mut Criterion) {
    let tenant = tenant();
    let exprs = expressions();
    let mut g = c.benchmark_group("cycle");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));

    let mut q = ready_queues(&tenant);
    let mut floor = Floor {
        targets: Default::default(),
    };
    let mut conn = 0u64;
    let mut now = 1_000_000u64;
    g.bench_function("reducer", |b| {
        b.iter(|| {
            conn += 1;
            now += 1;
            let out = q.request(
                &submission(conn, &exprs[conn as usize % EXPRESSIONS], now),
                now,
            );
            floor.note(&out);
            if floor.targets.len() > IN_FLIGHT {
                let out = floor.end_one(&mut q, now);
                floor.note(&out);
            }
        })
    });
    eprintln!(
        "cycle/reducer: {} calls waiting, {} in progress at the end",
        q.waiting().count(),
        floor.targets.len()
    );

    let mut q = ready_queues(&tenant);
    let mut floor = Floor {
        targets: Default::default(),
    };
    g.bench_function("json", |b| {
        b.iter(|| {
            conn += 1;
            now += 1;
            let json =
                serde_json::to_vec(&submission(conn, &exprs[conn as usize % EXPRESSIONS], now))
                    .unwrap_or_default();
            let req: RoutingRequest = match serde_json::from_slice(&json) {
                Ok(r) => r,
                Err(_) => return,
            };
            // Through the reducer for the floor's bookkeeping, and the Core face for the
            // serialization of what goes to the bus.
            let out = q.request(&req, now);
            floor.note(&out);
            std::hint::black_box(routing::emits("demo", out));
            if floor.targets.len() > IN_FLIGHT {
                let out = floor.end_one(&mut q, now);
                floor.note(&out);
                std::hint::black_box(routing::emits("demo", out));
            }
        })
    });
    g.finish();
    let _ = <Queues as Core>::next_deadline(&q);
}

/// A strategy: language and value of the call decide the skill expression and priority.
const STRATEGY: &str = r##"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="classify">
<datamodel><data id="call" expr="null"/></datamodel>
<state id="classify">
  <transition event="call.arrived" target="queue">
    <assign location="call" expr="_event.data"/>
  </transition>
</state>
<state id="queue">
  <onentry>
    <send event="queue.submit" target="#_scxml_routing">
      <param name="skills" expr="call.lang == 'es' ? 'spanish' : call.expr"/>
      <param name="priority" expr="call.vip ? 5 : 0"/>
    </send>
  </onentry>
  <transition event="queue.target" target="done"/>
</state>
<final id="done"/>
</scxml>"##;

fn strategy(c: &mut Criterion) {
    use switchboard_scxml::{
        Document, Environment, Event as ScxmlEvent, Output as ScxmlOutput, Session,
    };
    let tenant = tenant();
    let exprs = expressions();
    // The strategy's sends to `#_scxml_routing` are outputs for the host.
    let mut env = Environment::default();
    env.session_exists = Some(Arc::new(|id: &str| id == "routing"));
    let doc = Document::load(STRATEGY, None, &env).expect("strategy loads");
    let mut g = c.benchmark_group("cycle");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    let mut q = ready_queues(&tenant);
    let mut floor = Floor {
        targets: Default::default(),
    };
    let mut conn = 0u64;
    let mut now = 1_000_000u64;
    let mut submitted = 0u64;
    g.bench_function("strategy", |b| {
        b.iter(|| {
            conn += 1;
            now += 1;
            let Ok(mut session) = Session::new(doc.clone(), env.clone(), format!("s{conn}")) else {
                return;
            };
            session.run(now);
            let data = serde_json::json!({
                "lang": if conn.is_multiple_of(10) { "es" } else { "en" },
                "vip": conn.is_multiple_of(7),
                "expr": exprs[conn as usize % EXPRESSIONS],
            });
            session.push_event(ScxmlEvent::external("call.arrived", Some(data)));
            session.run(now);
            while let Some(out) = session.poll_output() {
                let ScxmlOutput::SendToSession { event, .. } = out else {
                    continue;
                };
                let data = event.data.unwrap_or_default();
                let skills = data["skills"].as_str().unwrap_or("");
                let mut req = submission(conn, skills, now);
                if let RoutingRequest::Submit { priority, .. } = &mut req {
                    *priority = data["priority"].as_i64().unwrap_or(0) as i32;
                }
                let out = q.request(&req, now);
                floor.note(&out);
                submitted += 1;
            }
            if floor.targets.len() > IN_FLIGHT {
                let out = floor.end_one(&mut q, now);
                floor.note(&out);
            }
        })
    });
    g.finish();
    // The strategy really submitted every call (a broken chart would measure nothing).
    assert_eq!(submitted, conn, "calls the strategy did not submit");
    eprintln!("cycle/strategy: {submitted} calls submitted by the strategy");
}

fn role(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).expect("bus"));
    let mut config = Config::demo();
    config.tenants = vec![tenant()];
    let config = Arc::new(config);
    let drain = CancellationToken::new();
    let role = rt
        .block_on(routing::start(
            config.clone(),
            bus.clone(),
            drain.clone(),
            switchboard_services::single_writer::fixed_tenants(&config),
            routing::Options {
                timing: Timing {
                    idle_wait: Duration::from_millis(5),
                    ..Timing::default()
                },
                consumer: "bench".into(),
            },
        ))
        .expect("routing starts");
    let conn = Arc::new(Mutex::new(0u64));
    let mut g = c.benchmark_group("role");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(AGENTS as u64));
    g.bench_function("embedded", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Every agent Ready (again), after the calls of the last round ended.
                    let mut ended = Vec::new();
                    for i in 0..AGENTS {
                        ended.push(agent_event(Event::EventAgentLogout, i, 1));
                        ended.push(agent_event(Event::EventAgentLogin, i, 1));
                        ended.push(agent_event(Event::EventAgentReady, i, 1 + i as u64));
                    }
                    for e in &ended {
                        bus.publish("events:demo", e.to_json().as_bytes())
                            .await
                            .expect("publish");
                    }
                    let replies_before = bus.last_id("replies").await.expect("last id");
                    let start = Instant::now();
                    // 8 submitters publishing at once, as many orchestrators would.
                    let first = {
                        let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
                        *c += AGENTS as u64;
                        *c - AGENTS as u64 + 1
                    };
                    let last_conn = first + AGENTS as u64 - 1;
                    let mut set = tokio::task::JoinSet::new();
                    for p in 0..8u64 {
                        let bus = bus.clone();
                        set.spawn(async move {
                            for n in (first + p..=last_conn).step_by(8) {
                                // Any agent: each of the round's calls finds one.
                                let req = submission(n, "", 1);
                                bus.publish(
                                    &routing_requests_stream("demo"),
                                    &serde_json::to_vec(&req).unwrap_or_default(),
                                )
                                .await
                                .expect("publish");
                            }
                        });
                    }
                    while set.join_next().await.is_some() {}
                    let mut after = replies_before;
                    let mut seen = 0usize;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while seen < AGENTS {
                        assert!(Instant::now() < deadline, "{seen} of {AGENTS} replies");
                        let page = bus.read_range("replies", after, 1000).await.expect("read");
                        seen += page.len();
                        match page.last() {
                            Some(e) => after = Some(e.id),
                            None => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                    total += start.elapsed();
                    // Cancelled: the reservations end, the agents are free for the next round.
                    for n in last_conn + 1 - AGENTS as u64..=last_conn {
                        let cancel = RoutingRequest::Cancel {
                            tenant: "demo".into(),
                            conn_id: ConnId(n),
                        };
                        bus.publish(
                            &routing_requests_stream("demo"),
                            &serde_json::to_vec(&cancel).unwrap_or_default(),
                        )
                        .await
                        .expect("publish");
                    }
                }
                total
            })
        })
    });
    g.finish();
    drain.cancel();
    let _ = rt.block_on(role.task);
}

criterion_group!(benches, cycle, strategy, role);
criterion_main!(benches);
