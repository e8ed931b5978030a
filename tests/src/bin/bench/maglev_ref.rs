//! The Maglev paper's table population (Eisenbud et al., NSDI 2016, section 3.4, Pseudocode 1),
//! unweighted, as a reference to hold dsr's weighted builder against. Written from the paper,
//! not from dsr's code, and with its own permutation hashes, so that agreement between the
//! two is evidence rather than a tautology.

use std::net::IpAddr;

use dsr_common::{addr_words, jhash2};

const EMPTY: u32 = u32::MAX;
// The paper's h1 and h2: any two independent hashes of the backend's name (here its address).
const OFFSET_SEED: u32 = 0x5041_5031; // "PAP1"
const SKIP_SEED: u32 = 0x5041_5032; // "PAP2"

/// Table of `m` slots (a prime) over `backends` (address, id); slots hold ids. Backends take
/// turns, each claiming the next free slot of its own permutation `offset + j * skip (mod m)`,
/// until the table is full.
pub fn build(backends: &[(IpAddr, u32)], m: u32) -> Vec<u32> {
    assert!(!backends.is_empty() && m >= 2);
    let mut sorted = backends.to_vec();
    sorted.sort_by_key(|b| b.0);
    let m64 = u64::from(m);
    // (next position of the backend's permutation, skip, id)
    let mut walks: Vec<(u64, u64, u32)> = sorted
        .iter()
        .map(|&(addr, id)| {
            let w = addr_words(addr);
            let offset = u64::from(jhash2(&w, OFFSET_SEED)) % m64;
            let skip = u64::from(jhash2(&w, SKIP_SEED)) % (m64 - 1) + 1;
            (offset, skip, id)
        })
        .collect();
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u32;
    loop {
        for (pos, skip, id) in walks.iter_mut() {
            while table[*pos as usize] != EMPTY {
                *pos = (*pos + *skip) % m64;
            }
            table[*pos as usize] = *id;
            *pos = (*pos + *skip) % m64;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_within_one_slot() {
        let backends: Vec<(IpAddr, u32)> = (0..7u32)
            .map(|i| (IpAddr::from([10, 0, 0, i as u8]), i))
            .collect();
        let t = build(&backends, 251);
        let mut counts = [0u32; 7];
        for id in t {
            counts[id as usize] += 1;
        }
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "{counts:?}");
    }
}
