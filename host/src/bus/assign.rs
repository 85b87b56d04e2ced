//! Which node routes each slot (a partition, or the relay). Pure.
//!
//! Every node computes the same answer from the same inputs (the eligible
//! nodes and the current owners), so no coordinator is needed; the leases
//! settle the moments when two nodes see different inputs.
//!
//! The rule is sticky rather than a pure function of the node set:
//! - a slot stays with its owner while that owner is eligible and holds no
//!   more than ⌈slots/n⌉ slots; an owner over that cap (a node joined)
//!   keeps the slots it ranks highest and sheds the rest;
//! - while nodes below ⌊slots/n⌋ (one that just joined) are owed more
//!   than there are free slots, the fullest node sheds its lowest-ranked;
//! - slots without an eligible owner (a node left, or never owned) go, in
//!   slot order, to the node ranking them highest (rendezvous weight)
//!   among the nodes below ⌊slots/n⌋, else among those below the cap.
//!
//! So no node owns more than ⌈slots/n⌉, a node leaving moves only its own
//! slots, and a node joining takes only what the others shed. Plain
//! rendezvous hashing moves as little but breaks the cap for about half
//! of all node sets.

/// The rendezvous weight of `node` for `slot`: FNV-1a 64 over both, then
/// a 64-bit finalizer (the same number on every node and build).
pub fn weight(slot: usize, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain((slot as u64).to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV's low bits alone rank poorly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of each of `current.len()` slots: an index into `nodes`, or
/// `None` when no node is eligible. `nodes` are the eligible nodes (any
/// order); `current[s]` is who holds slot `s` now, if anyone.
pub fn assign(nodes: &[&str], current: &[Option<&str>]) -> Vec<Option<usize>> {
    let slots = current.len();
    let n = nodes.len();
    if n == 0 {
        return vec![None; slots];
    }
    let floor = slots / n;
    let cap = slots.div_ceil(n);
    let mut owner: Vec<Option<usize>> = current
        .iter()
        .map(|c| c.and_then(|c| nodes.iter().position(|n| *n == c)))
        .collect();
    let mut held: Vec<Vec<usize>> = (0..n)
        .map(|node| {
            let mut held: Vec<usize> = (0..slots).filter(|s| owner[*s] == Some(node)).collect();
            // Highest rank first: a node sheds from the end.
            held.sort_by_key(|s| (std::cmp::Reverse(weight(*s, nodes[node])), *s));
            held
        })
        .collect();
    fn shed(node: usize, owner: &mut [Option<usize>], held: &mut [Vec<usize>]) {
        if let Some(s) = held[node].pop() {
            owner[s] = None;
        }
    }
    for node in 0..n {
        while held[node].len() > cap {
            shed(node, &mut owner, &mut held);
        }
    }
    // Nodes below the floor (one that just joined) are owed slots: the
    // fullest nodes shed until there are enough to go round.
    loop {
        let unowned = owner.iter().filter(|o| o.is_none()).count();
        let owed: usize = held.iter().map(|h| floor.saturating_sub(h.len())).sum();
        if unowned >= owed {
            break;
        }
        let Some(fullest) = (0..n).filter(|i| held[*i].len() > floor).max_by(|a, b| {
            held[*a]
                .len()
                .cmp(&held[*b].len())
                .then(nodes[*b].cmp(nodes[*a]))
        }) else {
            break;
        };
        shed(fullest, &mut owner, &mut held);
    }
    let mut count: Vec<usize> = held.iter().map(Vec::len).collect();
    for (slot, o) in owner.iter_mut().enumerate() {
        if o.is_some() {
            continue;
        }
        let below = |limit: usize| {
            (0..n)
                .filter(|i| count[*i] < limit)
                .max_by_key(|i| (weight(slot, nodes[*i]), std::cmp::Reverse(*i)))
        };
        if let Some(node) = below(floor).or_else(|| below(cap)) {
            *o = Some(node);
            count[node] += 1;
        }
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node ids of a seeded run (xorshift), so failures reproduce.
    fn ids(seed: &mut u64, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                format!("node-{:x}", *seed % 100_000)
            })
            .collect()
    }

    fn named<'a>(nodes: &[&'a str], owners: &[Option<usize>]) -> Vec<Option<&'a str>> {
        owners.iter().map(|o| o.map(|i| nodes[i])).collect()
    }

    fn counts(owners: &[Option<usize>], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for i in owners.iter().flatten() {
            c[*i] += 1;
        }
        c
    }

    #[test]
    fn every_slot_is_owned_and_no_node_exceeds_the_cap() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for slots in [1usize, 7, 64, 65, 256] {
            for n in 1..=9 {
                let owned = ids(&mut seed, n);
                let nodes: Vec<&str> = owned.iter().map(String::as_str).collect();
                let owners = assign(&nodes, &vec![None; slots]);
                assert!(owners.iter().all(Option::is_some), "{slots} over {n}");
                let c = counts(&owners, n);
                assert!(
                    c.iter().all(|k| *k <= slots.div_ceil(n)),
                    "{slots} over {n}: {c:?}"
                );
            }
        }
        assert_eq!(assign(&[], &[None, Some("gone")]), vec![None, None]);
    }

    #[test]
    fn the_answer_depends_on_the_inputs_only() {
        let nodes = ["b", "a", "c"];
        let first = named(&nodes, &assign(&nodes, &[None; 65]));
        let mut reordered = nodes;
        reordered.reverse();
        let second = named(&reordered, &assign(&reordered, &[None; 65]));
        assert_eq!(
            first, second,
            "the order nodes are listed in does not matter"
        );
        // And the assignment is a fixed point: owners keep what they hold.
        let again = named(&nodes, &assign(&nodes, &first));
        assert_eq!(again, first);
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_slots() {
        let mut seed = 7;
        for _ in 0..200 {
            let n = 2 + (seed % 6) as usize;
            let owned = ids(&mut seed, n);
            let nodes: Vec<&str> = owned.iter().map(String::as_str).collect();
            let before = named(&nodes, &assign(&nodes, &[None; 65]));
            let gone = nodes[(seed % n as u64) as usize];
            let rest: Vec<&str> = nodes.iter().copied().filter(|x| *x != gone).collect();
            let after = named(&rest, &assign(&rest, &before));
            for (s, (b, a)) in before.iter().zip(&after).enumerate() {
                if *b != Some(gone) {
                    assert_eq!(b, a, "slot {s} moved though {gone} did not own it");
                }
            }
            let c = counts(&assign(&rest, &before), rest.len());
            assert!(
                c.iter().all(|k| *k <= 65usize.div_ceil(rest.len())),
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_node_joining_takes_only_what_the_others_shed() {
        let mut seed = 11;
        for _ in 0..200 {
            let n = 1 + (seed % 6) as usize;
            let owned = ids(&mut seed, n + 1);
            if owned[..n].contains(&owned[n]) {
                continue;
            }
            let nodes: Vec<&str> = owned[..n].iter().map(String::as_str).collect();
            let before = named(&nodes, &assign(&nodes, &[None; 64]));
            let all: Vec<&str> = owned.iter().map(String::as_str).collect();
            let after_idx = assign(&all, &before);
            let after = named(&all, &after_idx);
            let joined = all[n];
            let mut moved = 0;
            for (b, a) in before.iter().zip(&after) {
                if b != a {
                    assert_eq!(*a, Some(joined), "a slot moved between old nodes");
                    moved += 1;
                }
            }
            let c = counts(&after_idx, n + 1);
            assert!(c.iter().all(|k| *k <= 64usize.div_ceil(n + 1)), "{c:?}");
            assert_eq!(moved, c[n], "the new node gained exactly what moved");
            assert!(
                c.iter().all(|k| *k >= 64 / (n + 1)),
                "every node has its share, the new one too: {c:?}"
            );
        }
    }

    #[test]
    fn slots_of_ineligible_owners_are_given_out_again() {
        let nodes = ["a", "b"];
        let current = [Some("a"), Some("draining"), None, Some("b")];
        let owners = named(&nodes, &assign(&nodes, &current));
        assert_eq!(owners[0], Some("a"));
        assert_eq!(owners[3], Some("b"));
        assert!(owners.iter().all(Option::is_some));
    }
}
