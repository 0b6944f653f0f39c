//! Which member owns a block: weighted rendezvous hashing (highest random
//! weight). Every member scores every key with `weight / -ln(u)`, `u` a
//! uniform hash of (member, key) in (0, 1]; the highest score owns the key.
//! Each member's share is its weight over the total, and a join or leave
//! moves only the keys whose owner changed: those the newcomer wins, or
//! those the leaver held. Weight 0 owns nothing (a member being drained).
//! A lookup is O(members), which is nothing next to a block transfer.

/// A member as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub addr: String,
    pub weight: u32,
}

/// FNV-1a over both parts, then a 64-bit finalizer (splitmix64) so that
/// similar keys land far apart.
fn hash(member: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn score(m: &Member, key: &str) -> f64 {
    // 53 random bits as a float in (0, 1].
    let u = ((hash(&m.id, key) >> 11) + 1) as f64 / (1u64 << 53) as f64;
    f64::from(m.weight) / -u.ln().min(-f64::MIN_POSITIVE)
}

/// The owner of `key` among `members`, or None when no member has weight.
pub fn owner<'a>(members: &'a [Member], key: &str) -> Option<&'a Member> {
    members
        .iter()
        .filter(|m| m.weight > 0)
        .map(|m| (score(m, key), m))
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.id.cmp(&a.1.id)))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn member(id: &str, weight: u32) -> Member {
        Member {
            id: id.into(),
            addr: format!("{id}:1"),
            weight,
        }
    }

    fn keys() -> Vec<String> {
        (0..30_000)
            .map(|i| format!("vol/chunks/0/{}/{i}_0_4194304", i / 1000))
            .collect()
    }

    fn shares(members: &[Member]) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for k in keys() {
            *out.entry(owner(members, &k).expect("owner").id.clone())
                .or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn shares_follow_weights() {
        let s = shares(&[member("a", 1), member("b", 1), member("c", 2)]);
        let n = keys().len() as f64;
        for (id, want) in [("a", 0.25), ("b", 0.25), ("c", 0.5)] {
            let got = s[id] as f64 / n;
            assert!(
                (got - want).abs() < 0.02,
                "{id}: {got} of the keys, want {want}"
            );
        }
    }

    #[test]
    fn a_join_moves_only_the_newcomers_share() {
        let before = vec![member("a", 1), member("b", 1), member("c", 1)];
        let mut after = before.clone();
        after.push(member("d", 1));
        let mut moved = 0;
        for k in keys() {
            let (was, now) = (
                owner(&before, &k).expect("owner"),
                owner(&after, &k).expect("owner"),
            );
            if was != now {
                assert_eq!(now.id, "d", "a key moved between old members");
                moved += 1;
            }
        }
        let frac = moved as f64 / keys().len() as f64;
        assert!(
            (frac - 0.25).abs() < 0.02,
            "{frac} of the keys moved, want about 1/4"
        );
    }

    #[test]
    fn a_leave_or_a_drain_moves_only_the_leavers_keys() {
        let all = vec![member("a", 1), member("b", 1), member("c", 1)];
        let drained = vec![member("a", 1), member("b", 1), member("c", 0)];
        let gone = vec![member("a", 1), member("b", 1)];
        for k in keys() {
            let was = owner(&all, &k).expect("owner");
            for view in [&drained, &gone] {
                let now = owner(view, &k).expect("owner");
                assert_ne!(now.id, "c", "weight 0 owns nothing");
                if was.id != "c" {
                    assert_eq!(was.id, now.id, "only c's keys move");
                }
            }
        }
        assert!(owner(&[member("z", 0)], "k").is_none());
        assert!(owner(&[], "k").is_none());
    }
}
