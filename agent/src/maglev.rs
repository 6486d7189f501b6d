//! Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4), computed here and copied into the datapath's
//! `SKIFF_MAGLEV_V1` array. Every node builds the same table from the same backend set,
//! whatever order the backends arrive in, so every node sends a flow to the same backend;
//! removing one of N backends remaps about 1/N of the table.
//!
//! Memory is visible on purpose: one table is `TABLE_SIZE` × 4 bytes = 64 KiB at the
//! default size (Cilium users hit 655 MB with 10k Maglev services), and the number of
//! tables is a configured capacity.

use std::net::SocketAddrV4;

/// FNV-1a 64 over `seed` then `data`: stable across builds and platforms (std's hasher is
/// not guaranteed to be), which the cross-node agreement needs.
fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in seed.to_le_bytes().iter().chain(data) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Builds a table of `size` (a prime) entries over `backends` (address, backend id).
/// Entries hold backend ids; an empty backend set gives an all-zero table (no backend).
pub fn build(backends: &[(SocketAddrV4, u32)], size: u32) -> Vec<u32> {
    let m = size as usize;
    if backends.is_empty() {
        return vec![0; m];
    }
    // The backend's address, not its id, seeds its permutation: ids differ between
    // nodes, addresses do not. Sorting makes the fill order node-independent too.
    let mut sorted: Vec<(SocketAddrV4, u32)> = backends.to_vec();
    sorted.sort();
    sorted.dedup_by_key(|(a, _)| *a);
    let perms: Vec<(usize, usize)> = sorted
        .iter()
        .map(|(addr, _)| {
            let name = addr.to_string();
            let offset = (fnv1a(0x6d61_676c_6576_3031, name.as_bytes()) % size as u64) as usize;
            let skip =
                (fnv1a(0x736b_6970_7069_6e67, name.as_bytes()) % (size as u64 - 1) + 1) as usize;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; sorted.len()];
    let mut table = vec![usize::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c] != usize::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c] = i;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table.into_iter().map(|i| sorted[i].1).collect()
}

#[cfg(test)]
mod tests {
    use skiff_datapath_abi::maglev::{flow_hash, TABLE_SIZE};

    use super::*;

    fn backends(n: u8) -> Vec<(SocketAddrV4, u32)> {
        (0..n)
            .map(|i| {
                (
                    SocketAddrV4::new([10, 42, 0, 10 + i].into(), 8080),
                    100 + u32::from(i),
                )
            })
            .collect()
    }

    fn flows() -> impl Iterator<Item = u32> {
        (0..20_000u32).map(|i| {
            flow_hash(
                i.wrapping_mul(2_654_435_761),
                0x0a2b_0001,
                (i % 60000) as u16,
                80,
                6,
            )
        })
    }

    #[test]
    fn tables_are_balanced_and_independent_of_input_order_and_ids() {
        let b = backends(10);
        let t = build(&b, TABLE_SIZE);
        let mut counts = std::collections::BTreeMap::new();
        for id in &t {
            *counts.entry(*id).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 10);
        // Maglev fills round-robin: each backend holds floor or ceil of M/N entries.
        assert!(
            counts.values().all(|c| (1638..=1639).contains(c)),
            "{counts:?}"
        );
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(
            build(&reversed, TABLE_SIZE),
            t,
            "input order does not matter"
        );
        // Another node numbers its backends differently: same addresses, same choices.
        let renumbered: Vec<_> = b.iter().map(|(a, id)| (*a, id + 1000)).collect();
        let t2 = build(&renumbered, TABLE_SIZE);
        assert!(t.iter().zip(&t2).all(|(x, y)| x + 1000 == *y));
        assert_eq!(build(&[], TABLE_SIZE), vec![0; TABLE_SIZE as usize]);
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_the_flows() {
        for n in [5u8, 10, 50] {
            let b = backends(n);
            let before = build(&b, TABLE_SIZE);
            let after = build(&b[1..], TABLE_SIZE);
            let (mut moved, mut total) = (0u32, 0u32);
            for h in flows() {
                let i = (h % TABLE_SIZE) as usize;
                total += 1;
                if before[i] != after[i] {
                    moved += 1;
                }
            }
            let frac = f64::from(moved) / f64::from(total);
            // The removed backend's 1/N must move; Maglev moves a little more because the
            // fill order shifts. ≤ 1.2/N holds while M/N is large (N ≤ ~10 at M = 16381);
            // beyond, the bound is Cilium's rule for M ≥ 100·N: at most 1% extra.
            let bound = (1.2 / f64::from(n)).max(1.0 / f64::from(n) + 0.01);
            assert!(
                frac <= bound,
                "n={n}: {:.4} of {total} flows moved, bound {bound:.4}",
                frac
            );
            // At least the removed backend's own flows moved.
            assert!(frac >= 0.8 / f64::from(n), "n={n}: only {frac:.4} moved");
        }
    }
}
