//! Downstream routing for the proxy: prefix rules mapping a called user to a set of nodes,
//! node health from OPTIONS probes and failures, and sticky selection by Call-ID.
//!
//! Selection is rendezvous (highest-random-weight) hashing of the Call-ID over the nodes that
//! are up: a call keeps its node while that node lives, and when one node dies only its calls
//! move. Pure: the caller passes `now`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Node {
    pub addr: SocketAddr,
    pub up: bool,
    pub since: Option<Instant>,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub prefix: String,
    pub nodes: Vec<usize>,
    /// Not matched against users: selected by name (e.g. the call-control nodes).
    pub internal: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    nodes: Vec<Node>,
}

pub type NodeId = usize;

impl Routes {
    /// Builds the table; a node listed under several prefixes is one node (one health state).
    pub fn new(rules: &[(String, Vec<SocketAddr>)]) -> Routes {
        let mut t = Routes::default();
        for (prefix, addrs) in rules {
            let nodes = addrs.iter().map(|a| t.node_id(*a)).collect();
            t.routes.push(Route {
                prefix: prefix.clone(),
                nodes,
                internal: false,
            });
        }
        // Longest prefix first, so the first match is the most specific.
        t.routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        t
    }

    fn node_id(&mut self, addr: SocketAddr) -> NodeId {
        if let Some(i) = self.nodes.iter().position(|n| n.addr == addr) {
            return i;
        }
        self.nodes.push(Node {
            addr,
            up: true,
            since: None,
        });
        self.nodes.len() - 1
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub fn node_by_addr(&self, addr: SocketAddr) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    pub fn route_for(&self, user: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| !r.internal && user.starts_with(r.prefix.as_str()))
    }

    /// An internal route by its exact name.
    pub fn named(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.internal && r.prefix == name)
    }

    /// Sets (replaces) an internal route; its nodes share health state with the others.
    pub fn set_named(&mut self, name: &str, addrs: &[SocketAddr]) {
        let nodes = addrs.iter().map(|a| self.node_id(*a)).collect();
        self.routes.retain(|r| !(r.internal && r.prefix == name));
        self.routes.push(Route {
            prefix: name.to_string(),
            nodes,
            internal: true,
        });
    }

    /// The node for a call: the best-scoring live node not yet tried; if every untried node is
    /// down, the best of those (a node marked down may be back, and trying beats failing).
    pub fn pick(&self, route: &Route, call_id: &str, tried: &[NodeId]) -> Option<NodeId> {
        let candidates = route.nodes.iter().copied().filter(|n| !tried.contains(n));
        let score = |n: &NodeId| {
            let mut h = DefaultHasher::new();
            call_id.hash(&mut h);
            self.nodes[*n].addr.hash(&mut h);
            h.finish()
        };
        let (up, down): (Vec<NodeId>, Vec<NodeId>) = candidates.partition(|n| self.nodes[*n].up);
        up.iter()
            .max_by_key(|n| score(n))
            .or_else(|| down.iter().max_by_key(|n| score(n)))
            .copied()
    }

    /// Records a node's health; returns true when its state changed.
    pub fn set_up(&mut self, id: NodeId, up: bool, now: Instant) -> bool {
        let n = &mut self.nodes[id];
        if n.up == up {
            return false;
        }
        n.up = up;
        n.since = Some(now);
        metrics::gauge!("proxy_nodes_up").set(self.nodes.iter().filter(|n| n.up).count() as f64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Routes {
        let a: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5071".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:5072".parse().unwrap();
        Routes::new(&[
            ("5".into(), vec![a, b]),
            ("55".into(), vec![c]),
            ("6".into(), vec![b, c]),
        ])
    }

    #[test]
    fn longest_prefix_wins_and_nodes_are_shared() {
        let t = table();
        assert_eq!(t.route_for("5000").unwrap().prefix, "5");
        assert_eq!(t.route_for("5500").unwrap().prefix, "55");
        assert!(t.route_for("7000").is_none());
        assert_eq!(t.nodes().len(), 3);
    }

    #[test]
    fn sticky_by_call_id_and_only_dead_nodes_calls_move() {
        let mut t = table();
        let route = t.route_for("5000").unwrap().clone();
        let ids: Vec<String> = (0..200).map(|i| format!("call-{i}")).collect();
        let before: Vec<NodeId> = ids
            .iter()
            .map(|c| t.pick(&route, c, &[]).unwrap())
            .collect();
        let again: Vec<NodeId> = ids
            .iter()
            .map(|c| t.pick(&route, c, &[]).unwrap())
            .collect();
        assert_eq!(before, again);
        let on_a = before.iter().filter(|&&n| n == route.nodes[0]).count();
        assert!(on_a > 60 && on_a < 140, "uneven spread: {on_a}/200");
        t.set_up(route.nodes[0], false, Instant::now());
        for (c, old) in ids.iter().zip(&before) {
            let now = t.pick(&route, c, &[]).unwrap();
            if *old != route.nodes[0] {
                assert_eq!(now, *old, "a call on a live node moved");
            } else {
                assert_eq!(now, route.nodes[1]);
            }
        }
    }

    #[test]
    fn failover_skips_tried_nodes_then_tries_down_ones() {
        let mut t = table();
        let route = t.route_for("5000").unwrap().clone();
        let first = t.pick(&route, "x", &[]).unwrap();
        let second = t.pick(&route, "x", &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(t.pick(&route, "x", &[first, second]), None);
        t.set_up(first, false, Instant::now());
        t.set_up(second, false, Instant::now());
        assert!(t.pick(&route, "x", &[]).is_some());
    }
}
