//! Each cage's share of the application socket: an agent that opens connection after
//! connection holds at most [`PER_CAGE`] of them, so it cannot take the slots every other
//! agent needs to report its tool calls (and be answered).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Application connections one cage may hold at once.
pub const PER_CAGE: usize = 32;

/// Open application connections, by agent.
#[derive(Debug, Default)]
pub struct CageShare {
    open: Mutex<HashMap<String, usize>>,
}

/// One connection's place in its cage's share; given back when dropped.
pub struct Slot {
    share: Arc<CageShare>,
    agent: String,
}

impl CageShare {
    /// A slot for one more connection of `agent`, if its share has room.
    pub fn take(self: &Arc<Self>, agent: &str) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(agent.to_owned()).or_default();
        if *n >= PER_CAGE {
            return None;
        }
        *n += 1;
        Some(Slot {
            share: Arc::clone(self),
            agent: agent.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.share.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.agent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cage_has_its_own_share() {
        let share = Arc::new(CageShare::default());
        let held: Vec<Slot> = (0..PER_CAGE)
            .map(|_| share.take("greedy").unwrap())
            .collect();
        assert!(share.take("greedy").is_none());
        assert!(share.take("other").is_some());
        drop(held);
        assert!(share.take("greedy").is_some(), "given back");
        assert_eq!(
            share.open.lock().unwrap().get("other"),
            None,
            "forgotten when unused"
        );
    }
}
