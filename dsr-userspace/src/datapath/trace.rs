//! The kernel side of `dsr trace`: the switch (SETTINGS.trace), the filter (TRACE_FILTER)
//! and the ring of records (TRACE). Sessions and their streams live in `control::trace`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, MapData, RingBuf};
use dsr_common::{Settings, TraceFilter, TraceRecord};

/// The switch and the filter: set together, by whoever holds the sessions.
pub struct TraceSwitch {
    pub(super) settings: Array<MapData, Settings>,
    pub(super) filter: Array<MapData, TraceFilter>,
}

impl TraceSwitch {
    /// Turns tracing on for frames `filter` admits, or off (`None`). The filter is written
    /// before the switch, so no frame is traced by a stale filter when tracing starts.
    pub fn set(&mut self, filter: Option<TraceFilter>) -> Result<()> {
        if let Some(f) = filter {
            self.filter.set(0, f, 0).context("writing TRACE_FILTER")?;
        }
        let mut settings = self.settings.get(&0, 0).context("reading SETTINGS")?;
        settings.trace = filter.is_some() as u32;
        self.settings
            .set(0, settings, 0)
            .context("writing SETTINGS.trace")?;
        Ok(())
    }
}

/// The ring the program writes records into; one reader.
pub struct TraceRing {
    pub(super) ring: RingBuf<MapData>,
}

impl TraceRing {
    /// The next record, if one is waiting.
    pub fn read(&mut self) -> Result<Option<TraceRecord>> {
        let Some(item) = self.ring.next() else {
            return Ok(None);
        };
        if item.len() < size_of::<TraceRecord>() {
            bail!(
                "a TRACE record of {} bytes (expected {}): another dsr version's program?",
                item.len(),
                size_of::<TraceRecord>()
            );
        }
        // SAFETY: TraceRecord is plain data of exactly this size, written by the program
        // from the same definition; read_unaligned makes no alignment assumption.
        Ok(Some(unsafe {
            std::ptr::read_unaligned(item.as_ptr().cast::<TraceRecord>())
        }))
    }

    /// Drops whatever is waiting: records a previous daemon left when it died mid-trace.
    pub fn discard(&mut self) -> usize {
        let mut n = 0;
        while self.ring.next().is_some() {
            n += 1;
        }
        n
    }
}

impl AsFd for TraceRing {
    /// Readable when records are waiting (epoll on a ring buffer map).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for TraceRing {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
