//! A BPF array map created and written with plain bpf(2) calls, one element per syscall: the
//! naive way of pushing a table, to compare dsr's mmap writer with. aya 0.14 creates maps only
//! from an object, and this needs nothing but an array, so the syscalls are spelled out.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// `union bpf_attr` is larger than anything used here; unused bytes must be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn zeroed() -> Self {
        Attr([0; 128])
    }

    fn put_u32(&mut self, offset: usize, v: u32) {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, v: u64) {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size we pass.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, 128u32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub struct RawArray {
    fd: OwnedFd,
    value_size: usize,
}

impl RawArray {
    /// BPF_MAP_TYPE_ARRAY of `entries` values of `value_size` bytes (u32 keys).
    pub fn create(entries: u32, value_size: u32) -> Result<RawArray> {
        let mut attr = Attr::zeroed();
        attr.put_u32(0, BPF_MAP_TYPE_ARRAY); // map_type
        attr.put_u32(4, 4); // key_size
        attr.put_u32(8, value_size); // value_size
        attr.put_u32(12, entries); // max_entries
        match bpf(BPF_MAP_CREATE, &mut attr) {
            // SAFETY: a new fd the kernel just gave us.
            Ok(fd) => Ok(RawArray {
                fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
                value_size: value_size as usize,
            }),
            Err(e) => bail!("BPF_MAP_CREATE (array of {entries} x {value_size} B): {e}"),
        }
    }

    /// One BPF_MAP_UPDATE_ELEM per element, `values` holding them back to back.
    pub fn write_one_by_one(&self, values: &[u8]) -> Result<()> {
        for (i, value) in values.chunks_exact(self.value_size).enumerate() {
            let key = i as u32;
            let mut attr = Attr::zeroed();
            attr.put_u32(0, self.fd.as_raw_fd() as u32); // map_fd
            attr.put_u64(8, &key as *const u32 as u64); // key
            attr.put_u64(16, value.as_ptr() as u64); // value
            attr.put_u64(24, 0); // flags: BPF_ANY
            if let Err(e) = bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
                bail!("BPF_MAP_UPDATE_ELEM {i}: {e}");
            }
        }
        Ok(())
    }
}
