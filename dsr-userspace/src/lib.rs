//! dsr userspace: config -> validated model -> Maglev tables -> maps, plus neighbour resolution
//! and the daemon that ties them together. The `dsr` binary (main.rs) is the CLI over this.

pub mod control;
pub mod daemon;
pub mod datapath;
pub mod ebpf;
pub mod ethtool;
pub mod health;
pub mod instance;
pub mod maglev;
pub mod neighbour;
pub mod plan;
pub mod realserver;
pub mod spec;
pub mod state;
pub mod vlan_offload;
