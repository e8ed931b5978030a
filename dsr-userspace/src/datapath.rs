//! Loading and attaching the XDP program, and the map writer: the only code that writes
//! dsr's BPF maps.
//!
//! Tables are written so that the data path never sees a half-written one: each VIP owns two
//! rows of TABLES; the new table goes into the row not in use (through an mmap of the map, at
//! memory speed), then a single VIPS update switches the VIP to it.

use std::{
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use dsr_common::{
    BACKEND_F_VALID, Backend, Counter, Iface, LAYOUT_VERSION, PROGRAM_NAME, REASON_COUNT, Reason,
    Settings, TABLE_CHUNK, TABLE_ROWS_PER_VIP, TableChunk, VipInfo, VipKey, names,
};

use crate::{
    ebpf::DSR_OBJECT,
    model::{MacAddr, Protocol, XdpAttachMode},
};

/// How big the maps are; fixed when the program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub max_vips: u32,
    pub max_backends: u32,
    /// Largest table (slots) a VIP may have.
    pub table_size: u32,
}

impl Sizes {
    fn row_chunks(&self) -> u32 {
        self.table_size.div_ceil(TABLE_CHUNK)
    }

    /// Bytes the maps take in the kernel, roughly (tables dominate).
    pub fn table_bytes(&self) -> u64 {
        self.max_vips as u64
            * TABLE_ROWS_PER_VIP as u64
            * self.row_chunks() as u64
            * std::mem::size_of::<TableChunk>() as u64
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    sizes: Sizes,
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    ifaces: HashMap<MapData, u32, Iface>,
    tables: TableMmap,
    vip_stats: PerCpuArray<MapData, Counter>,
    backend_stats: PerCpuArray<MapData, Counter>,
    reason_stats: PerCpuArray<MapData, Counter>,
    links: Vec<XdpLinkId>,
}

/// Summed per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

impl Datapath {
    /// Loads the program with maps of the given sizes and writes SETTINGS. Nothing is
    /// attached yet: fill the maps first, then [`Datapath::attach`].
    pub fn load(sizes: Sizes, hash_seed: u32) -> Result<Self> {
        if DSR_OBJECT.is_empty() {
            bail!("this dsr binary was built with DSR_EBPF_SKIP and carries no XDP program");
        }
        let row_chunks = sizes.row_chunks();
        let table_elems = sizes
            .max_vips
            .checked_mul(TABLE_ROWS_PER_VIP * row_chunks)
            .ok_or_else(|| anyhow!("max_vips x table_size is too large"))?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::VIPS, sizes.max_vips)
            .map_max_entries(names::VIP_STATS, sizes.max_vips)
            .map_max_entries(names::TABLES, table_elems)
            .map_max_entries(names::BACKENDS, sizes.max_backends)
            .map_max_entries(names::BACKEND_STATS, sizes.max_backends)
            .load(DSR_OBJECT)
            .context("loading the dsr eBPF object (maps)")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program (verifier)")?;

        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))
        };
        let mut settings: Array<MapData, Settings> = take(names::SETTINGS)?.try_into()?;
        let vips = take(names::VIPS)?.try_into()?;
        let backends = take(names::BACKENDS)?.try_into()?;
        let ifaces = take(names::IFACES)?.try_into()?;
        let aya::maps::Map::Array(tables) = take(names::TABLES)? else {
            bail!("map {} is not an array", names::TABLES);
        };
        let vip_stats = take(names::VIP_STATS)?.try_into()?;
        let backend_stats = take(names::BACKEND_STATS)?.try_into()?;
        let reason_stats = take(names::REASON_STATS)?.try_into()?;
        let tables = TableMmap::new(tables, table_elems)?;

        settings.set(
            0,
            Settings {
                layout_version: LAYOUT_VERSION,
                hash_seed,
                row_chunks,
                _pad: 0,
            },
            0,
        )?;
        Ok(Datapath {
            ebpf,
            sizes,
            vips,
            backends,
            ifaces,
            tables,
            vip_stats,
            backend_stats,
            reason_stats,
            links: Vec::new(),
        })
    }

    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    /// The loaded program (for BPF_PROG_TEST_RUN).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
    }

    /// Attaches to `ifindex` (whose MAC must already be in IFACES via [`Datapath::set_iface`]).
    pub fn attach(&mut self, ifindex: u32, ifname: &str, mode: XdpAttachMode) -> Result<()> {
        let xdp_mode = match mode {
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Skb => XdpMode::Skb,
        };
        let link = self
            .program_mut()
            .attach_to_if_index(ifindex, xdp_mode)
            .with_context(|| match mode {
                XdpAttachMode::Native => format!(
                    "attaching XDP to {ifname} in native mode (if its driver has no native XDP, \
                     set xdp_mode = \"skb\" in the config)"
                ),
                XdpAttachMode::Skb => format!("attaching XDP to {ifname} in skb mode"),
            })?;
        self.links.push(link);
        Ok(())
    }

    /// Detaches from every interface. (Dropping the Datapath does too.)
    pub fn detach(&mut self) -> Result<()> {
        for link in std::mem::take(&mut self.links) {
            self.program_mut().detach(link)?;
        }
        Ok(())
    }

    /// Tells the program the MAC of an interface it receives on.
    pub fn set_iface(&mut self, ifindex: u32, mac: MacAddr) -> Result<()> {
        self.ifaces.insert(
            ifindex,
            Iface {
                mac: mac.0,
                _pad: [0; 2],
            },
            0,
        )?;
        Ok(())
    }

    /// Sets (or, with `None`, invalidates) the MAC a backend id sends to.
    pub fn set_backend(&mut self, id: u32, mac: Option<MacAddr>) -> Result<()> {
        let entry = match mac {
            Some(mac) => Backend {
                mac: mac.0,
                _pad: [0; 2],
                flags: BACKEND_F_VALID,
            },
            None => Backend::default(),
        };
        self.backends
            .set(id, entry, 0)
            .with_context(|| format!("writing backend {id}"))?;
        Ok(())
    }

    /// Installs `table` (backend ids; empty = no usable backend, packets dropped) for a VIP,
    /// switching atomically from the table it had.
    pub fn set_vip(&mut self, key: VipKey, id: u32, table: &[u32]) -> Result<()> {
        if id >= self.sizes.max_vips {
            bail!("VIP id {id} is beyond max_vips {}", self.sizes.max_vips);
        }
        if table.len() > self.sizes.table_size as usize {
            bail!(
                "table of {} slots exceeds table_size {}",
                table.len(),
                self.sizes.table_size
            );
        }
        let first_row = id * TABLE_ROWS_PER_VIP;
        let row = match self.vips.get(&key, 0) {
            Ok(old) if old.id == id && old.table_size > 0 => {
                first_row + (old.table_row - first_row + 1) % TABLE_ROWS_PER_VIP
            }
            _ => first_row,
        };
        if !table.is_empty() {
            self.tables
                .row_mut(row, self.sizes.row_chunks())
                .get_mut(..table.len())
                .expect("bounded above")
                .copy_from_slice(table);
        }
        let info = VipInfo {
            id,
            table_row: row,
            table_size: table.len() as u32,
            flags: 0,
        };
        self.vips
            .insert(key, info, 0)
            .with_context(|| format!("writing VIP {id}"))?;
        Ok(())
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.vips.remove(key)?;
        Ok(())
    }

    /// The active table of a VIP, as the data path reads it.
    pub fn table(&self, key: &VipKey) -> Result<Vec<u32>> {
        let info = self.vips.get(key, 0)?;
        let row = self.tables.row(info.table_row, self.sizes.row_chunks());
        Ok(row[..info.table_size as usize].to_vec())
    }

    pub fn reason_totals(&self) -> Result<[(Reason, Totals); REASON_COUNT as usize]> {
        let mut out = Reason::ALL.map(|r| (r, Totals::default()));
        for (reason, totals) in out.iter_mut() {
            *totals = sum(&self.reason_stats, *reason as u32)?;
        }
        Ok(out)
    }

    pub fn vip_totals(&self, id: u32) -> Result<Totals> {
        sum(&self.vip_stats, id)
    }

    pub fn backend_totals(&self, id: u32) -> Result<Totals> {
        sum(&self.backend_stats, id)
    }
}

fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> Result<Totals> {
    let values = map.get(&index, 0)?;
    Ok(values.iter().fold(Totals::default(), |t, c| Totals {
        packets: t.packets + c.packets,
        bytes: t.bytes + c.bytes,
    }))
}

/// The VIPS key of a VIP.
pub fn vip_key(address: IpAddr, port: u16, protocol: Protocol) -> VipKey {
    VipKey::new(address, port, protocol.number())
}

/// TABLES mapped into our memory (the map is BPF_F_MMAPABLE): a whole 65537-slot table is a
/// 256 KiB memcpy instead of 4096 map-update syscalls.
struct TableMmap {
    ptr: NonNull<u32>,
    len: usize,
    _map: MapData,
}

// SAFETY: the mapping is owned by this struct and only accessed through &self / &mut self.
unsafe impl Send for TableMmap {}
unsafe impl Sync for TableMmap {}

impl TableMmap {
    fn new(map: MapData, elems: u32) -> Result<Self> {
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

    fn row(&self, row: u32, row_chunks: u32) -> &[u32] {
        let stride = (row_chunks * TABLE_CHUNK) as usize;
        // SAFETY: ptr/len describe our live mapping.
        let all = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        &all[row as usize * stride..][..stride]
    }

    fn row_mut(&mut self, row: u32, row_chunks: u32) -> &mut [u32] {
        let stride = (row_chunks * TABLE_CHUNK) as usize;
        // SAFETY: ptr/len describe our live mapping, borrowed mutably through &mut self.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) };
        &mut all[row as usize * stride..][..stride]
    }
}

impl Drop for TableMmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len * 4) };
    }
}
