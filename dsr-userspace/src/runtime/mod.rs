//! What is true now: the runtime state and its decisions (`state`), health checks
//! (`health`), neighbour resolution (`neighbour`), the one-daemon-per-instance lock
//! (`instance`) and what is saved across restarts (`persistence`).

pub mod announce;
pub mod health;
pub mod instance;
pub mod neighbour;
pub mod persistence;
pub mod state;
