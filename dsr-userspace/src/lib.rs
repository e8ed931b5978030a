//! dsr userspace, one module per stage of a change's way to the kernel:
//!
//! - `spec`: what the operator asked for (model, the one validation, TOML, journal);
//! - `runtime`: what is true now (state and decisions, health checks, neighbours, the
//!   instance lock, what is saved across restarts);
//! - `plan`: pure, runtime + spec -> the data path's `Desired` contents and Maglev tables;
//! - `datapath`: the loader, the map writer (diffing `Desired` against the kernel), tables,
//!   counters, interface preparation (VLAN offloads);
//! - `control`: the socket protocol, the one status builder, its rendering and metrics;
//! - `daemon`: the event loop (event -> spec/runtime -> plan -> writer).
//!
//! The `dsr` binary (main.rs) is the CLI over this; `realserver` prepares backends.

pub mod control;
pub mod daemon;
pub mod datapath;
pub mod ebpf;
pub mod plan;
pub mod realserver;
pub mod runtime;
pub mod spec;
