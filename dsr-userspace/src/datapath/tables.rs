//! TABLES mapped into our memory, for writing a whole table at memory speed.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{Result, bail};
use aya::maps::MapData;
use dsr_common::{TABLE_CHUNK, TableChunk};

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

    pub(super) fn row(&self, row: u32, row_chunks: u32) -> &[u32] {
        let stride = (row_chunks * TABLE_CHUNK) as usize;
        // SAFETY: ptr/len describe our live mapping.
        let all = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        &all[row as usize * stride..][..stride]
    }

    pub(super) fn row_mut(&mut self, row: u32, row_chunks: u32) -> &mut [u32] {
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
