//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! A lookup table of prime size `M` is filled by letting endpoints take turns, each claiming
//! the next free slot along its own permutation of the table (`offset + j * skip mod M`, both
//! derived from the endpoint's address). Lookups are then one hash and one array read, load is
//! even to within about 1% when `M` ≥ 100 × endpoints, and a change of endpoint set moves few
//! keys. Weights set how many turns an endpoint gets (by earliest-deadline-first, the same order
//! Envoy's weighted Maglev produces). The table is 65 537 entries (256 KiB), or 655 373 for more
//! than 655 endpoints; never larger.
//!
//! When the table's endpoint for a key is unavailable, the lookup walks on to the following
//! slots, which belong to endpoints spread evenly, so the unavailable endpoint's keys share out
//! over the rest and everyone else's keys stay put.
use super::hash::{fnv1a, mix64};
use super::weighted::{effective_weight, Edf};
use super::Endpoint;

const SMALL_TABLE: usize = 65_537;
const LARGE_TABLE: usize = 655_373;
const EMPTY: u32 = u32::MAX;
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66;
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b;

#[derive(Debug)]
pub(super) struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub(super) fn new(endpoints: &[Endpoint]) -> Self {
        let n = endpoints.len();
        // Indices must fit below the EMPTY marker.
        if n == 0 || u32::try_from(n).map_or(true, |n| n == EMPTY) {
            return Self { table: Vec::new() };
        }
        let size = if n.saturating_mul(100) <= SMALL_TABLE {
            SMALL_TABLE
        } else {
            LARGE_TABLE
        };
        let m = size as u64;
        let perms: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|e| {
                let h = fnv1a(e.addr.to_string().as_bytes());
                (
                    mix64(h ^ OFFSET_SEED) % m,
                    mix64(h ^ SKIP_SEED) % (m - 1) + 1,
                )
            })
            .collect();
        let weights: Vec<u64> = endpoints.iter().map(effective_weight).collect();
        let mut next = vec![0u64; n];
        let mut table = vec![EMPTY; size];
        // Each turn claims one slot, so `size` turns fill the table.
        for i in Edf::new(&weights).take(size) {
            let (Some(&(offset, skip)), Some(tries), Ok(owner)) =
                (perms.get(i), next.get_mut(i), u32::try_from(i))
            else {
                break;
            };
            // The permutation visits every slot once in `m` steps, so a free one is found.
            for _ in 0..m {
                let slot = (offset + (*tries % m) * skip) % m;
                *tries += 1;
                match usize::try_from(slot).ok().and_then(|s| table.get_mut(s)) {
                    Some(entry) if *entry == EMPTY => {
                        *entry = owner;
                        break;
                    }
                    _ => {}
                }
            }
        }
        Self { table }
    }

    /// The endpoint for `key`, walking on past unavailable ones.
    pub(super) fn pick(&self, key: u64, available: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        let start = usize::try_from(mix64(key) % len as u64).unwrap_or(0);
        (0..len)
            .filter_map(|k| self.table.get((start + k) % len))
            .filter(|&&owner| owner != EMPTY)
            .filter_map(|&owner| usize::try_from(owner).ok())
            .find(|&i| available(i))
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}
