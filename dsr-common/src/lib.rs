//! Types shared by the XDP program (`dsr-ebpf`) and userspace (`dsr-userspace`).
//!
//! Everything a map holds is defined once here, `#[repr(C)]` with explicit padding, so the
//! kernel and user side cannot drift. The flow hash lives here too: userspace computes exactly
//! what the kernel computes (tests, `dsr` "which backend gets this flow?", benchmarks).
//! So does the parser (`parse`, over `headers::Frame`): the host decides from the same code.
#![no_std]

pub mod hash;
pub mod headers;
pub mod maps;
pub mod parse;

pub use hash::{DEFAULT_HASH_SEED, FlowKey, addr_words, flow_hash, jhash2, words_addr};
pub use maps::*;
