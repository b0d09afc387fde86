//! One agent's process tree, rebuilt from fork, exec and exit events.
//!
//! Events of a child can arrive before its parent's fork event (the child may exec on
//! another CPU before the parent's tracepoint reserves its record), so every event creates
//! the node it names if it is missing, and the fork event only fills in the parent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::ExitDetail;

/// Nodes kept per agent; past it, the oldest ended processes are forgotten first.
const MAX_NODES: usize = 4096;

/// One process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessNode {
    /// Process id.
    pub pid: u32,
    /// Parent process id (0 when unknown).
    pub ppid: u32,
    /// The program it runs (its last exec), or its command name before any exec was seen.
    pub program: String,
    /// Its arguments at the last exec.
    pub argv: Vec<String>,
    /// How it ended, once it has.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit: Option<ExitDetail>,
    /// Kernel timestamp (CLOCK_BOOTTIME ns) of the first event about it.
    pub first_seen_ns: u64,
    /// Kernel timestamp of the last event about it.
    #[serde(skip)]
    last_ns: u64,
}

/// The processes of one agent, alive and recently ended.
#[derive(Clone, Debug, Default)]
pub struct ProcessTree {
    nodes: BTreeMap<u32, ProcessNode>,
    /// Ended processes in the order they ended, to forget the oldest first.
    ended: std::collections::VecDeque<u32>,
}

impl ProcessTree {
    fn node(&mut self, pid: u32, ts: u64) -> &mut ProcessNode {
        if !self.nodes.contains_key(&pid) {
            self.make_room();
        }
        self.nodes.entry(pid).or_insert_with(|| ProcessNode {
            pid,
            first_seen_ns: ts,
            ..ProcessNode::default()
        })
    }

    fn make_room(&mut self) {
        while self.nodes.len() >= MAX_NODES {
            match self.ended.pop_front() {
                Some(pid) => {
                    // Only if it has not been reused by a live process since.
                    if self.nodes.get(&pid).is_some_and(|n| n.exit.is_some()) {
                        self.nodes.remove(&pid);
                    }
                }
                None => break,
            }
        }
    }

    /// A process that entered the cage from outside (`run`, `adopt`).
    pub fn on_join(&mut self, pid: u32, ppid: u32, program: String, argv: Vec<String>, ts: u64) {
        let n = self.node(pid, ts);
        n.ppid = ppid;
        n.program = program;
        n.argv = argv;
        n.exit = None;
    }

    /// `parent` made `child`.
    pub fn on_fork(&mut self, parent: u32, parent_comm: &str, child: u32, ts: u64) {
        let p = self.node(parent, ts);
        if p.program.is_empty() {
            p.program = parent_comm.to_owned();
        }
        let program = p.program.clone();
        let argv = p.argv.clone();
        let c = self.node(child, ts);
        // A pid that ended before this fork was reused: a new process. (One whose events
        // are later than the fork is this child, reported out of order.)
        if c.exit.is_some() && c.last_ns <= ts {
            *c = ProcessNode {
                pid: child,
                first_seen_ns: ts,
                ..ProcessNode::default()
            };
        }
        c.ppid = parent;
        c.last_ns = c.last_ns.max(ts);
        // A fork runs its parent's program until it execs.
        if c.program.is_empty() {
            c.program = program;
            c.argv = argv;
        }
    }

    /// `pid` now runs `program`.
    pub fn on_exec(&mut self, pid: u32, ppid: u32, program: String, argv: Vec<String>, ts: u64) {
        let n = self.node(pid, ts);
        // An ended process whose pid shows up again later is a new process.
        if n.exit.is_some() && n.last_ns <= ts {
            *n = ProcessNode {
                pid,
                first_seen_ns: ts,
                ..ProcessNode::default()
            };
        }
        n.last_ns = n.last_ns.max(ts);
        if ppid != 0 {
            n.ppid = ppid;
        }
        n.program = program;
        n.argv = argv;
    }

    /// `pid` ended.
    pub fn on_exit(&mut self, pid: u32, comm: &str, exit: ExitDetail, ts: u64) {
        let n = self.node(pid, ts);
        if n.program.is_empty() {
            n.program = comm.to_owned();
        }
        n.exit = Some(exit);
        n.last_ns = n.last_ns.max(ts);
        self.ended.push_back(pid);
    }

    /// Every node, by pid.
    pub fn nodes(&self) -> Vec<ProcessNode> {
        self.nodes.values().cloned().collect()
    }
}

/// Renders nodes as an indented tree (roots: nodes whose parent is not among them).
pub fn render(nodes: &[ProcessNode]) -> String {
    use std::fmt::Write as _;
    let pids: std::collections::HashSet<u32> = nodes.iter().map(|n| n.pid).collect();
    let mut children: BTreeMap<u32, Vec<&ProcessNode>> = BTreeMap::new();
    let mut roots = Vec::new();
    for n in nodes {
        if n.ppid != n.pid && pids.contains(&n.ppid) {
            children.entry(n.ppid).or_default().push(n);
        } else {
            roots.push(n);
        }
    }
    let mut out = String::new();
    let mut stack: Vec<(&ProcessNode, usize)> = roots.into_iter().rev().map(|n| (n, 0)).collect();
    while let Some((n, depth)) = stack.pop() {
        let status = match &n.exit {
            None => "running".to_owned(),
            Some(ExitDetail {
                exit_code: Some(c), ..
            }) => format!("exited {c}"),
            Some(ExitDetail {
                signal: Some(s), ..
            }) => format!("killed by signal {s}"),
            Some(_) => "ended".to_owned(),
        };
        let args = if n.argv.is_empty() {
            n.program.clone()
        } else {
            n.argv.join(" ")
        };
        let _ = writeln!(out, "{}{} {} [{}]", "  ".repeat(depth), n.pid, args, status);
        if let Some(kids) = children.get(&n.pid) {
            for k in kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_events_build_the_same_tree() {
        let mut t = ProcessTree::default();
        // The child's exec and exit arrive before the parent's fork.
        t.on_exec(11, 10, "/bin/true".into(), vec!["true".into()], 2);
        t.on_exit(11, "true", ExitDetail::from_status(0), 3);
        t.on_fork(10, "sh", 11, 1);
        t.on_exit(10, "sh", ExitDetail::from_status(2 << 8), 4);
        let nodes = t.nodes();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].ppid, 10);
        assert_eq!(nodes[1].program, "/bin/true");
        assert_eq!(nodes[1].exit.as_ref().unwrap().exit_code, Some(0));
        let text = render(&nodes);
        assert_eq!(text, "10 sh [exited 2]\n  11 true [exited 0]\n");
    }

    #[test]
    fn stays_bounded() {
        let mut t = ProcessTree::default();
        for pid in 1..=(MAX_NODES as u32 * 2) {
            t.on_exec(pid, 1, "/bin/true".into(), Vec::new(), 0);
            t.on_exit(pid, "true", ExitDetail::from_status(0), 0);
        }
        assert!(t.nodes().len() <= MAX_NODES);
    }
}
