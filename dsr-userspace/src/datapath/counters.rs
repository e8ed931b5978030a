//! The data path's per-CPU counters, summed: from the loaded program's maps or from the
//! pinned maps while the daemon is down.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use dsr_common::{Counter, Event, Reason, names};

use super::Datapath;

/// Where status reads counters from: the daemon's loaded data path, or the pinned maps.
pub trait Counters {
    fn vip(&self, id: u32) -> Totals;
    fn backend(&self, id: u32) -> Totals;
    fn reasons(&self) -> Vec<(Reason, Totals)>;
    fn events(&self) -> Vec<(Event, u64)>;
}

/// Summed per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    /// New flows placed by the Maglev table.
    pub flows: u64,
}

pub(super) fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> Result<Totals> {
    let values = map.get(&index, 0)?;
    Ok(values.iter().fold(Totals::default(), |t, c| Totals {
        packets: t.packets + c.packets,
        bytes: t.bytes + c.bytes,
        flows: t.flows + c.flows,
    }))
}

/// Read-only view of a pinned data path's counters (for `dsr status` while the daemon is down).
pub struct PinnedCounters {
    vip_stats: PerCpuArray<MapData, Counter>,
    backend_stats: PerCpuArray<MapData, Counter>,
    reason_stats: PerCpuArray<MapData, Counter>,
    event_stats: PerCpuArray<MapData, u64>,
}

impl PinnedCounters {
    pub fn open(dir: &Path) -> Result<Self> {
        // Read-only: an operator of the control group may read the pins (0640), not write.
        let open = |name: &str| -> Result<MapData> {
            let path = dir.join(name);
            let fd = super::open_pin_readonly(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Ok(MapData::from_fd(fd)?)
        };
        Ok(PinnedCounters {
            vip_stats: Map::PerCpuArray(open(names::VIP_STATS)?).try_into()?,
            backend_stats: Map::PerCpuArray(open(names::BACKEND_STATS)?).try_into()?,
            reason_stats: Map::PerCpuArray(open(names::REASON_STATS)?).try_into()?,
            event_stats: Map::PerCpuArray(open(names::EVENT_STATS)?).try_into()?,
        })
    }
}

fn events_of(map: &PerCpuArray<MapData, u64>) -> Vec<(Event, u64)> {
    Event::ALL
        .iter()
        .map(|&e| (e, map.get(&(e as u32), 0).map_or(0, |v| v.iter().sum())))
        .collect()
}

fn reasons_of(map: &PerCpuArray<MapData, Counter>) -> Vec<(Reason, Totals)> {
    Reason::ALL
        .iter()
        .map(|&r| (r, sum(map, r as u32).unwrap_or_default()))
        .collect()
}

impl Counters for PinnedCounters {
    fn vip(&self, id: u32) -> Totals {
        sum(&self.vip_stats, id).unwrap_or_default()
    }
    fn backend(&self, id: u32) -> Totals {
        sum(&self.backend_stats, id).unwrap_or_default()
    }
    fn reasons(&self) -> Vec<(Reason, Totals)> {
        reasons_of(&self.reason_stats)
    }
    fn events(&self) -> Vec<(Event, u64)> {
        events_of(&self.event_stats)
    }
}

impl Counters for Datapath {
    fn vip(&self, id: u32) -> Totals {
        sum(&self.vip_stats, id).unwrap_or_default()
    }
    fn backend(&self, id: u32) -> Totals {
        sum(&self.backend_stats, id).unwrap_or_default()
    }
    fn reasons(&self) -> Vec<(Reason, Totals)> {
        reasons_of(&self.reason_stats)
    }
    fn events(&self) -> Vec<(Event, u64)> {
        events_of(&self.event_stats)
    }
}
