//! The simulated network: nodes with an upload and a download capacity, and flows between them
//! that share those capacities.
//!
//! # Model
//! A flow from `a` to `b` runs at `min(up(a) / uploads(a), down(b) / downloads(b))`: each node
//! splits its uplink equally among the flows it sends and its downlink equally among the flows
//! it receives, and a flow gets the smaller of its two shares. This is what per-flow fair
//! queueing gives when every flow is limited at one of its two ends, and it is local: when a
//! flow starts or ends only the flows sharing one of its two ends change rate, so an event costs
//! O(flows at two nodes) however many hosts there are. It is conservative: a flow held back at
//! its receiver leaves part of its sender's share unused (max-min fairness would hand it to the
//! sender's other flows), so simulated completion times err on the slow side. No latency inside
//! a flow: the simulator adds round trips around it (request, first byte, reports).

/// Index of a node: hosts are `0..n`, then the supernode and the origin.
pub(crate) type NodeId = usize;

/// Index of a flow in [`Net`] (slots are reused).
pub(crate) type FlowId = usize;

/// What a flow carries, for the simulator to act on when it finishes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cargo {
    /// A piece for a host (from a peer or the supernode).
    Piece { task: usize, piece: u32 },
    /// A piece of a task from the origin to the supernode.
    Origin { task: usize, piece: u32 },
}

#[derive(Debug)]
struct Node {
    up: f64,
    down: f64,
    ups: Vec<FlowId>,
    downs: Vec<FlowId>,
}

#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) from: NodeId,
    pub(crate) to: NodeId,
    pub(crate) bytes: u64,
    pub(crate) cargo: Cargo,
    remaining: f64,
    rate: f64,
    since: f64,
    pub(crate) version: u64,
}

/// When a flow will finish at its current rate; stale once the flow's version moved on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Due {
    pub(crate) flow: FlowId,
    pub(crate) version: u64,
    pub(crate) at: f64,
}

/// Nodes and the flows between them.
#[derive(Debug, Default)]
pub(crate) struct Net {
    nodes: Vec<Node>,
    flows: Vec<Option<Flow>>,
    free: Vec<FlowId>,
    active: usize,
    /// Versions are global, so a stale [`Due`] never matches a later flow in a reused slot.
    next_version: u64,
}

impl Net {
    /// Adds a node with `up` / `down` bytes per second; returns its id.
    pub(crate) fn add_node(&mut self, up: f64, down: f64) -> NodeId {
        self.nodes.push(Node { up, down, ups: Vec::new(), downs: Vec::new() });
        self.nodes.len() - 1
    }

    /// Flows in progress.
    /// Whether a flow leaves `node` now (its uplink queue is standing).
    pub(crate) fn up_busy(&self, node: NodeId) -> bool {
        !self.nodes[node].ups.is_empty()
    }

    /// Whether a flow enters `node` now (its downlink queue is standing).
    pub(crate) fn down_busy(&self, node: NodeId) -> bool {
        !self.nodes[node].downs.is_empty()
    }

    pub(crate) fn active(&self) -> usize {
        self.active
    }

    /// The flow, if `due` is still its latest finish time.
    pub(crate) fn current(&self, due: &Due) -> Option<&Flow> {
        self.flows.get(due.flow)?.as_ref().filter(|f| f.version == due.version)
    }

    /// Starts a flow of `bytes` from `from` to `to` at `now`; the new finish times of every flow
    /// whose rate changed (the new one included) are pushed onto `dues`.
    pub(crate) fn start(&mut self, now: f64, from: NodeId, to: NodeId, bytes: u64, cargo: Cargo, dues: &mut Vec<Due>) {
        let flow = Flow { from, to, bytes, cargo, remaining: bytes as f64, rate: 0.0, since: now, version: 0 };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id] = Some(flow);
                id
            }
            None => {
                self.flows.push(Some(flow));
                self.flows.len() - 1
            }
        };
        self.active += 1;
        self.nodes[from].ups.push(id);
        self.nodes[to].downs.push(id);
        self.reshare(now, from, to, dues);
    }

    /// Ends flow `id` at `now` and returns it; flows that speed up get new finish times.
    pub(crate) fn finish(&mut self, now: f64, id: FlowId, dues: &mut Vec<Due>) -> Option<Flow> {
        let flow = self.flows.get_mut(id)?.take()?;
        self.free.push(id);
        self.active -= 1;
        self.nodes[flow.from].ups.retain(|&f| f != id);
        self.nodes[flow.to].downs.retain(|&f| f != id);
        self.reshare(now, flow.from, flow.to, dues);
        Some(flow)
    }

    /// Re-rates the flows sent by `from` and received by `to` (their shares changed).
    fn reshare(&mut self, now: f64, from: NodeId, to: NodeId, dues: &mut Vec<Due>) {
        let touched: Vec<FlowId> = self.nodes[from].ups.iter().chain(self.nodes[to].downs.iter()).copied().collect();
        for id in touched {
            self.rerate(now, id, dues);
        }
    }

    fn rerate(&mut self, now: f64, id: FlowId, dues: &mut Vec<Due>) {
        let Some(Some(flow)) = self.flows.get(id) else {
            return;
        };
        let (from, to) = (&self.nodes[flow.from], &self.nodes[flow.to]);
        let rate = (from.up / from.ups.len() as f64).min(to.down / to.downs.len() as f64);
        let Some(Some(flow)) = self.flows.get_mut(id) else {
            return;
        };
        flow.remaining = (flow.remaining - flow.rate * (now - flow.since)).max(0.0);
        flow.since = now;
        if flow.rate == rate && flow.version > 0 {
            return;
        }
        self.next_version += 1;
        flow.rate = rate;
        flow.version = self.next_version;
        dues.push(Due { flow: id, version: flow.version, at: now + flow.remaining / rate });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cargo() -> Cargo {
        Cargo::Piece { task: 0, piece: 0 }
    }

    #[test]
    fn two_flows_share_an_uplink_then_one_speeds_up() {
        let mut net = Net::default();
        let a = net.add_node(10.0, 10.0);
        let b = net.add_node(10.0, 10.0);
        let c = net.add_node(10.0, 10.0);
        let mut dues = Vec::new();
        net.start(0.0, a, b, 100, cargo(), &mut dues);
        assert_eq!(dues.last().map(|d| d.at), Some(10.0));
        dues.clear();
        net.start(0.0, a, c, 50, cargo(), &mut dues);
        // Both at 5 B/s now: a→b 20 s, a→c 10 s.
        let at: Vec<f64> = dues.iter().map(|d| d.at).collect();
        assert!(at.contains(&20.0) && at.contains(&10.0), "{at:?}");
        dues.clear();
        // a→c done at 10 s: a→b has 50 bytes left at 10 B/s.
        let c_flow = 1;
        assert!(net.finish(10.0, c_flow, &mut dues).is_some());
        assert_eq!(dues.len(), 1);
        assert_eq!(dues[0].at, 15.0);
        assert_eq!(net.active(), 1);
    }

    #[test]
    fn a_stale_due_never_matches_a_flow_in_a_reused_slot() {
        let mut net = Net::default();
        let a = net.add_node(10.0, 10.0);
        let b = net.add_node(10.0, 10.0);
        let mut dues = Vec::new();
        net.start(0.0, a, b, 100, cargo(), &mut dues);
        net.start(0.0, a, b, 100, cargo(), &mut dues);
        let stale: Vec<Due> = std::mem::take(&mut dues);
        net.finish(1.0, 0, &mut dues);
        net.start(1.0, a, b, 100, cargo(), &mut dues);
        for due in stale {
            assert!(net.current(&due).is_none(), "{due:?}");
        }
    }

    #[test]
    fn receiver_limits_a_flow() {
        let mut net = Net::default();
        let a = net.add_node(100.0, 100.0);
        let b = net.add_node(100.0, 4.0);
        let mut dues = Vec::new();
        net.start(0.0, a, b, 40, cargo(), &mut dues);
        assert_eq!(dues[0].at, 10.0);
    }
}
