//! TABLES: mapped into our memory, for writing a whole table at memory speed, and shared out
//! between the VIPs in runs of chunks ([`Chunks`]).

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use aya::maps::MapData;
use dsr_common::{TABLE_CHUNK, TableChunk};

/// TABLES elements a table of `slots` slots takes.
pub fn chunks_of(slots: u32) -> u32 {
    slots.div_ceil(TABLE_CHUNK)
}

/// How long a run that a VIP no longer points at stays unused: a program that read the VIP's
/// old entry just before the switch may still be reading it. A program runs for microseconds;
/// this also covers a vCPU stalled by its hypervisor in the middle of one.
const COOLING: Duration = Duration::from_millis(50);

/// The next step towards a free run (see [`Chunks::make_room`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Room {
    At(u32),
    /// Copy the table at `from` (`len` elements) to `to` and point its VIPS entries there.
    Move {
        from: u32,
        len: u32,
        to: u32,
    },
    Wait,
    Full,
}

/// Which TABLES elements hold a table and which are free. Rebuilt from VIPS whenever the data
/// path is loaded (the kernel's map is the truth: a run no VIPS entry points at is free, such
/// as one written by a daemon killed before it switched).
#[derive(Debug)]
pub struct Chunks {
    total: u32,
    /// Runs in use: first element -> (elements, VIPS entries pointing at it). A run just
    /// allocated has no entry yet.
    used: BTreeMap<u32, (u32, u32)>,
    /// Runs given up recently, with when: reusable after [`COOLING`].
    cooling: Vec<(Instant, u32, u32)>,
}

impl Chunks {
    /// `live`: (first element, slots) of every table VIPS points at. A fragment alias points
    /// at its VIP's run: the same run counts once.
    pub fn new(total: u32, live: impl IntoIterator<Item = (u32, u32)>) -> Result<Self> {
        let mut used = BTreeMap::new();
        for (base, slots) in live {
            let len = chunks_of(slots);
            if len == 0 {
                continue;
            }
            if base.checked_add(len).is_none_or(|end| end > total) {
                bail!("a VIP's table (elements {base}+{len}) lies beyond TABLES ({total})");
            }
            let (l, refs) = used.entry(base).or_insert((len, 0));
            if *l != len {
                bail!("two VIPs' tables start at TABLES element {base} with other sizes");
            }
            *refs += 1;
        }
        let mut end = 0;
        for (&b, &(l, _)) in &used {
            if b < end {
                bail!("two VIPs' tables overlap at TABLES element {b}");
            }
            end = b + l;
        }
        Ok(Chunks {
            total,
            used,
            cooling: Vec::new(),
        })
    }

    /// The first free run of `len` elements (lowest address first), marked used; `None` when
    /// there is none, even after waiting for cooling runs and moving other tables (see
    /// [`Chunks::make_room`]; here without tables to move).
    #[cfg(test)]
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        loop {
            match self.make_room(len) {
                Room::At(base) => return Some(base),
                Room::Wait => self.wait(),
                Room::Move { to, .. } => {
                    // Nothing here moves tables: the run reserved for one was never written.
                    self.used.remove(&to);
                    return None;
                }
                Room::Full => return None,
            }
        }
    }

    /// What to do next for a run of `len` elements: take the one found (marked used), move a
    /// table lower (its new run is marked used) so that free runs merge, wait for cooling
    /// runs, or give up (less free than `len`, or free space cut into holes no table fits).
    pub fn make_room(&mut self, len: u32) -> Room {
        let now = Instant::now();
        self.cooling
            .retain(|&(at, _, _)| now.duration_since(at) < COOLING);
        if let Some(base) = self.first_fit(len, u32::MAX) {
            self.used.insert(base, (len, 0));
            return Room::At(base);
        }
        let free = self.total - self.usage().0;
        if free < len {
            return Room::Full;
        }
        // The lowest table that fits a hole below it goes there: tables sink, free space
        // rises and merges at the top.
        let moves: Vec<(u32, u32)> = self.used.iter().map(|(&b, &(l, _))| (b, l)).collect();
        for (from, l) in moves {
            if let Some(to) = self.first_fit(l, from) {
                self.used.insert(to, (l, 0));
                return Room::Move { from, len: l, to };
            }
        }
        if self.cooling.is_empty() {
            Room::Full
        } else {
            Room::Wait
        }
    }

    /// Sleeps until the oldest cooling run may be reused.
    pub fn wait(&self) {
        if let Some(oldest) = self.cooling.iter().map(|c| c.0).min() {
            std::thread::sleep((oldest + COOLING).saturating_duration_since(Instant::now()));
        }
    }

    /// The lowest free run of `len` elements that ends at or below `limit`.
    fn first_fit(&self, len: u32, limit: u32) -> Option<u32> {
        let mut taken: Vec<(u32, u32)> = self.used.iter().map(|(&b, &(l, _))| (b, l)).collect();
        taken.extend(self.cooling.iter().map(|&(_, b, l)| (b, l)));
        taken.sort_unstable();
        let fits = |at: u32, end: u32| end - at >= len && at + len <= limit;
        let mut at = 0u32;
        for (b, l) in taken {
            if b >= at && fits(at, b) {
                return Some(at);
            }
            at = at.max(b + l);
        }
        fits(at, self.total).then_some(at)
    }

    /// A VIPS entry now points at the run at `base`.
    pub fn hold(&mut self, base: u32) {
        if let Some((_, refs)) = self.used.get_mut(&base) {
            *refs += 1;
        }
    }

    /// A VIPS entry no longer points at the run at `base`: the last one gone, the run is
    /// reusable once cooled.
    pub fn release(&mut self, base: u32) {
        if let Some((_, refs)) = self.used.get_mut(&base) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.abandon(base);
            }
        }
    }

    /// The run at `base` turned out to have no VIPS entry at all: free it (cooled, as any).
    pub fn forget(&mut self, base: u32) {
        if let Some((len, _)) = self.used.remove(&base) {
            self.cooling.push((Instant::now(), base, len));
        }
    }

    /// A run no entry points at (allocated for a switch that failed) is given up.
    pub fn abandon(&mut self, base: u32) {
        if let Some(&(len, 0)) = self.used.get(&base) {
            self.used.remove(&base);
            self.cooling.push((Instant::now(), base, len));
        }
    }

    /// Elements in use and in all.
    pub fn usage(&self) -> (u32, u32) {
        (self.used.values().map(|u| u.0).sum(), self.total)
    }

    /// The largest run that is free (cooling runs counted as free).
    pub fn largest_free(&self) -> u32 {
        let mut taken: Vec<(u32, u32)> = self.used.iter().map(|(&b, &(l, _))| (b, l)).collect();
        taken.sort_unstable();
        let (mut at, mut best) = (0u32, 0u32);
        for (b, l) in taken {
            best = best.max(b.saturating_sub(at));
            at = at.max(b + l);
        }
        best.max(self.total - at)
    }
}

/// TABLES mapped into our memory (the map is BPF_F_MMAPABLE): a whole 65537-slot table is a
/// 256 KiB memcpy instead of 4096 map-update syscalls.
pub(super) struct TableMmap {
    ptr: NonNull<u32>,
    len: usize,
    _map: MapData,
}

// SAFETY: the mapping is owned by this struct and only accessed through &self / &mut self.
unsafe impl Send for TableMmap {}
unsafe impl Sync for TableMmap {}

impl TableMmap {
    pub(super) fn new(map: MapData, elems: u32) -> Result<Self> {
        let bytes = elems as usize * std::mem::size_of::<TableChunk>();
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE, of exactly its size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap of TABLES: {}", std::io::Error::last_os_error());
        }
        Ok(TableMmap {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL"),
            len: bytes / 4,
            _map: map,
        })
    }

    /// The `slots` slots of the table starting at element `base`; `None` beyond the map.
    pub(super) fn run(&self, base: u32, slots: u32) -> Option<&[u32]> {
        // SAFETY: ptr/len describe our live mapping.
        let all = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        all.get(base as usize * TABLE_CHUNK as usize..)?
            .get(..slots as usize)
    }

    pub(super) fn run_mut(&mut self, base: u32, slots: u32) -> Option<&mut [u32]> {
        // SAFETY: ptr/len describe our live mapping, borrowed mutably through &mut self.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) };
        all.get_mut(base as usize * TABLE_CHUNK as usize..)?
            .get_mut(..slots as usize)
    }
}

impl Drop for TableMmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len * 4) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_come_from_the_lowest_free_place_and_never_overlap() {
        let mut c = Chunks::new(100, [(10, 16 * 10)]).unwrap();
        assert_eq!(c.alloc(10), Some(0));
        assert_eq!(c.alloc(5), Some(20));
        assert_eq!(c.alloc(80), None, "75 free elements cannot hold 80");
        assert_eq!(c.usage(), (25, 100));
        assert_eq!(c.largest_free(), 75);
    }

    #[test]
    fn a_freed_run_is_reused_only_after_cooling() {
        let mut c = Chunks::new(20, []).unwrap();
        let a = c.alloc(10).unwrap();
        let b = c.alloc(10).unwrap();
        c.hold(a);
        c.hold(a);
        c.release(a);
        assert_eq!(c.alloc(1), None, "still pointed at once");
        c.release(a);
        let started = Instant::now();
        // The only room is the cooling run: alloc waits for it.
        assert_eq!(c.alloc(10), Some(a));
        assert!(started.elapsed() >= COOLING);
        c.abandon(b);
        assert_eq!(c.usage(), (10, 20));
    }

    #[test]
    fn tables_sink_into_holes_until_the_free_space_merges() {
        // A [0,2) D [3,4) C [4,5), holes [2,3) and [5,6): no run of 2 although 2 are free.
        let mut c = Chunks::new(6, [(0, 32), (3, 16), (4, 16)]).unwrap();
        assert_eq!(c.alloc(2), None);
        let mut moves = Vec::new();
        let base = loop {
            match c.make_room(2) {
                Room::At(b) => break b,
                Room::Move { from, to, .. } => {
                    moves.push((from, to));
                    // As the data path does: the VIPS entries switch to the copy.
                    c.hold(to);
                    c.release(from);
                }
                Room::Wait => c.wait(),
                Room::Full => panic!("room was there: {c:?} after {moves:?}"),
            }
        };
        assert_eq!(moves, vec![(3, 2), (4, 3)]);
        assert_eq!(base, 4);
        assert_eq!(c.make_room(1), Room::Full, "all 6 in use");
    }

    #[test]
    fn what_the_kernel_holds_is_checked() {
        assert!(Chunks::new(10, [(5, 16 * 6)]).is_err(), "beyond the map");
        assert!(
            Chunks::new(100, [(0, 160), (5, 160)]).is_err(),
            "overlapping"
        );
        // A VIP and its fragment alias share one run.
        let c = Chunks::new(100, [(0, 160), (0, 160)]).unwrap();
        assert_eq!(c.usage(), (10, 100));
    }
}
