//! What is true now: the runtime state and its decisions (`state`), health checks
//! (`health`), neighbour resolution (`neighbour`), the one-daemon-per-instance lock
//! (`instance`), what is saved across restarts (`persistence`), what dsr tells VRRP and
//! routing daemons (`announce`) and what they tell it (`vrrp`), and the commands run at each
//! change of a VIP's state (`notify`); the flow state exchanged with the other load
//! balancers (`sync`).

pub mod announce;
pub mod health;
pub mod instance;
pub mod neighbour;
pub mod notify;
pub mod persistence;
pub mod state;
pub mod sync;
pub mod vrrp;
