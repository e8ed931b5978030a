//! `dsr explain`: which backend the data path gives one flow, and why, step by step as the
//! XDP program decides (the VIP entry matched, the flow-table entry, the table slot), read
//! from the kernel's maps.

use std::{fmt::Write, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::spec::model::{Protocol, Role};

/// The flow to explain, as the client sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub protocol: Protocol,
    /// The frame's outer VLAN id (0 = untagged).
    #[serde(default)]
    pub vlan: u16,
}

/// How the backend was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChosenBy {
    /// An established flow's entry in the flow table.
    FlowEntry,
    /// The VIP's Maglev table (a new flow, or one whose backend no longer keeps flows).
    Table,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explained {
    /// "forward", "pass" or "drop".
    pub verdict: String,
    /// The VIP matched (its name), if any.
    pub vip: Option<String>,
    pub chosen_by: Option<ChosenBy>,
    /// The table slot the flow hashes to (also when a flow entry decided).
    pub slot: Option<u32>,
    pub table_size: Option<u32>,
    pub backend: Option<IpAddr>,
    pub backend_id: Option<u32>,
    pub backend_role: Option<Role>,
    /// Each step, as a sentence.
    pub steps: Vec<String>,
}

pub fn render(e: &Explained) -> String {
    let mut out = String::new();
    for (i, step) in e.steps.iter().enumerate() {
        let _ = writeln!(out, "{}. {step}", i + 1);
    }
    let _ = writeln!(
        out,
        "=> {}{}",
        e.verdict,
        e.backend.map_or(String::new(), |b| format!(" to {b}"))
    );
    out
}
