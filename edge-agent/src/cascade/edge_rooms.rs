//! (Edge role) Which nodes placed this edge's callers in which rooms: the table the edge's
//! `Interest` announcements and its export filter are read from.

use std::collections::{HashMap, HashSet};

/// (Edge role) The rooms this edge has callers in, and for each the nodes that placed them
/// there: a room's local speakers go only to those nodes' trunks.
#[derive(Debug, Default)]
pub struct EdgeRooms {
    rooms: HashMap<u64, HashSet<String>>,
}

impl EdgeRooms {
    /// The nodes that placed callers of `room` here are now `nodes` (empty: none). Returns
    /// the nodes added and the nodes removed.
    pub fn set(&mut self, room: u64, nodes: &[String]) -> (Vec<String>, Vec<String>) {
        let new: HashSet<String> = nodes.iter().cloned().collect();
        let old = self.rooms.remove(&room).unwrap_or_default();
        let mut added: Vec<String> = new.difference(&old).cloned().collect();
        let mut removed: Vec<String> = old.difference(&new).cloned().collect();
        added.sort();
        removed.sort();
        if !new.is_empty() {
            self.rooms.insert(room, new);
        }
        (added, removed)
    }

    /// Whether `room`'s local speakers go to `node`'s trunk.
    pub fn wants(&self, room: u64, node: &str) -> bool {
        self.rooms.get(&room).is_some_and(|n| n.contains(node))
    }

    /// The rooms `node` placed callers of (announced again when its trunk comes back).
    pub fn rooms_of(&self, node: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .rooms
            .iter()
            .filter(|(_, n)| n.contains(node))
            .map(|(r, _)| *r)
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::EdgeRooms;

    #[test]
    fn two_trunks_two_rooms_each_room_only_on_its_trunk() {
        let (a, b) = ("node-a".to_string(), "node-b".to_string());
        let mut r = EdgeRooms::default();
        assert_eq!(
            r.set(1, std::slice::from_ref(&a)),
            (vec![a.clone()], vec![])
        );
        assert_eq!(
            r.set(2, std::slice::from_ref(&b)),
            (vec![b.clone()], vec![])
        );
        // Placed again by the same node: nothing new to announce.
        assert_eq!(r.set(1, std::slice::from_ref(&a)), (vec![], vec![]));
        assert!(r.wants(1, &a) && !r.wants(1, &b));
        assert!(r.wants(2, &b) && !r.wants(2, &a));
        assert!(!r.wants(3, &a));
        assert_eq!(r.rooms_of(&a), vec![1]);
        assert_eq!(r.rooms_of(&b), vec![2]);
        // Room 1's callers are placed again through node-b (node-a died): node-a is dropped,
        // so a node-a that comes back is not sent room 1 again.
        assert_eq!(
            r.set(1, std::slice::from_ref(&b)),
            (vec![b.clone()], vec![a.clone()])
        );
        assert!(r.wants(1, &b) && !r.wants(1, &a));
        assert_eq!(r.rooms_of(&a), Vec::<u64>::new());
        assert_eq!(r.rooms_of(&b), vec![1, 2]);
        // The room empties.
        assert_eq!(r.set(1, &[]), (vec![], vec![b.clone()]));
        assert!(!r.wants(1, &b));
        assert_eq!(r.set(1, &[]), (vec![], vec![]));
    }
}
