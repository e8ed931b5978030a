//! The XDP context as a [`Frame`] for the shared parser (`dsr_common::parse`), and raw
//! pointers into packet memory for the one write (the MAC rewrite). The wire headers live in
//! `dsr_common::headers`.

use aya_ebpf::programs::XdpContext;
use dsr_common::headers::Frame;

/// The frame of an XDP context, for the shared parser (a newtype: the trait and the context
/// are both foreign to this crate).
pub struct Xdp<'a>(pub &'a XdpContext);

impl Frame for Xdp<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    /// The same check as before the move: `data + offset + len > data_end`, on packet
    /// pointers, which is what the verifier learns bounds from.
    #[inline(always)]
    fn has(&self, offset: usize, len: usize) -> bool {
        self.0.data() + offset + len <= self.0.data_end()
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        read_at(self.0, offset)
    }
}

/// Pointer to a `T` at `offset` in the frame, if the whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A copy of the `T` at `offset`, if it lies inside the frame.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the frame; packet memory may be
    // unaligned, which BPF loads on this architecture allow.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { *p })
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}
