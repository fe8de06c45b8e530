//! Where an AOR lives: rendezvous (highest-random-weight) hashing of the AOR
//! over the live front-end members, so every node computes the same home
//! without coordination, and only AORs of a departed node move.

/// FNV-1a 64: stable across builds and platforms (unlike `DefaultHasher`),
/// so nodes of different versions agree on homes.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so nearby names spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The home of `aor` among `candidates` (FQDNs); `None` when there are none.
pub fn home<'a>(aor: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .max_by_key(|node| (fnv1a(&[aor.as_bytes(), node.as_bytes()]), *node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_deterministic_and_spreads() {
        let nodes = ["fe1.contoso.test", "fe2.contoso.test", "fe3.contoso.test"];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let aor = format!("sip:user{i}@contoso.test");
            let h = home(&aor, nodes).unwrap();
            assert_eq!(
                home(&aor, nodes.iter().rev().copied()),
                Some(h),
                "order must not matter"
            );
            counts[nodes.iter().position(|n| *n == h).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
        assert_eq!(home("sip:a@b.c", std::iter::empty()), None);
    }

    #[test]
    fn only_the_departed_nodes_aors_move() {
        let all = ["fe1.contoso.test", "fe2.contoso.test", "fe3.contoso.test"];
        let without = ["fe1.contoso.test", "fe3.contoso.test"];
        for i in 0..500 {
            let aor = format!("sip:user{i}@contoso.test");
            let before = home(&aor, all).unwrap();
            let after = home(&aor, without).unwrap();
            if before != "fe2.contoso.test" {
                assert_eq!(before, after);
            }
        }
    }
}
