//! Load-aware weights: "least connection" that works under Direct Server Return.
//!
//! LVS's `lc` counts connections it sees close; in DR mode replies never cross the balancer,
//! so those counts are guesses. dsr looks from both ends instead: the backend's own agent
//! (runtime::agent) says how loaded it is, and the flow table says how many active flows each
//! backend holds (a TCP FIN or RST marks an entry closing, and closing entries are not
//! counted).
//!
//! What keeps the tables stable: the effective weight is the configured weight times a
//! *step* in eighths (8 = as configured), bounded by `min_weight` and `max_weight`, and the
//! step moves one eighth at a time, at most once per `weight_interval`. The table is built
//! from `weight x step`, so while every step is 8 it is exactly the configured table (Maglev
//! sees only weight ratios), and one step moves about 1/8 of one backend's share of flows.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{
    runtime::{
        agent::{Reading, Said},
        unix_ms,
    },
    spec::model::LoadSpec,
};

/// The step of a weight as configured.
pub const FULL: u32 = 8;

/// Holding more than this many times its share of active flows steps a backend down ...
const OVERLOADED_PERMILLE: u64 = 1250;
/// ... and less than this lets it step back up.
const RECOVERED_PERMILLE: u64 = 1100;
/// Fewer active flows than this per backend say nothing about load: the cap relaxes.
const MIN_FLOWS_PER_BACKEND: u64 = 8;

/// One backend's load-aware state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// The effective weight in eighths of the configured one (8 = as configured).
    pub step: u32,
    /// What its agent has said.
    #[serde(default)]
    pub said: Said,
    /// Its agent's last answer (or why there was none).
    #[serde(default)]
    pub last: Option<Reading>,
    /// The highest step its active flows allow (`None`: no limit), and its share of the
    /// VIP's active flows at the last count, in per mille of its configured share.
    #[serde(default)]
    pub flow_cap: Option<u32>,
    #[serde(default)]
    pub flow_share_permille: Option<u64>,
    /// When the step last moved.
    #[serde(default)]
    pub stepped_at_ms: Option<u64>,
    /// When its agent last went from up to `down` or back (Unix ms): the backend's state
    /// changed then, whatever its health check's time says.
    #[serde(default)]
    pub down_changed_ms: Option<u64>,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            step: FULL,
            said: Said::default(),
            last: None,
            flow_cap: None,
            flow_share_permille: None,
            stepped_at_ms: None,
            down_changed_ms: None,
        }
    }
}

impl Load {
    /// Stamps `at` as the end or the start of its agent's down when what the agent says
    /// now (`said.down`) differs from `was_down`: the one place that rule lives, whether an
    /// answer, a replaced agent or a removed `[vip.load]` changed it.
    pub fn note_down_change(&mut self, was_down: bool, at: SystemTime) {
        if self.said.down != was_down {
            self.down_changed_ms = Some(crate::runtime::unix_ms(at));
        }
    }

    /// The step the agent asks for (the configured weight without an agent's percentage),
    /// within the bounds: what this backend's share of active flows is measured against.
    pub fn agent_step(&self, spec: &LoadSpec) -> u32 {
        match self.said.percent {
            Some(p) if p > 0 => (p * FULL + 50) / 100,
            _ => FULL,
        }
        .clamp(spec.min_eighths, spec.max_eighths)
    }

    /// The step the load asks for, and why.
    pub fn target(&self, spec: &LoadSpec) -> (u32, String) {
        let (mut step, mut why) = match self.said.percent {
            Some(p) if p > 0 => ((p * FULL + 50) / 100, format!("agent says {p}%")),
            _ => (FULL, "configured".to_owned()),
        };
        if let Some(cap) = self.flow_cap.filter(|_| spec.flows)
            && cap < step
        {
            step = cap;
            why = format!(
                "holds {:.2}x its share of active flows",
                self.flow_share_permille.unwrap_or(0) as f64 / 1000.0
            );
        }
        if step < spec.min_eighths {
            step = spec.min_eighths;
            why += ", held at min_weight";
        } else if step > spec.max_eighths {
            step = spec.max_eighths;
            why += ", held at max_weight";
        }
        (step, why)
    }

    /// Moves the step one eighth towards the target if `weight_interval` has passed since it
    /// last moved. Returns (from, to) when it moved.
    pub fn advance(&mut self, spec: &LoadSpec, now: SystemTime) -> Option<(u32, u32)> {
        let (target, _) = self.target(spec);
        if target == self.step {
            return None;
        }
        let now_ms = unix_ms(now);
        let interval = spec.weight_interval.as_millis() as u64;
        if self
            .stepped_at_ms
            .is_some_and(|at| now_ms < at.saturating_add(interval))
        {
            return None;
        }
        let from = self.step;
        self.step = if target > from { from + 1 } else { from - 1 };
        self.stepped_at_ms = Some(now_ms);
        Some((from, self.step))
    }

    /// When the next step may move (for status).
    pub fn next_step_at(&self, spec: &LoadSpec) -> Option<SystemTime> {
        let at = self.stepped_at_ms? + spec.weight_interval.as_millis() as u64;
        Some(SystemTime::UNIX_EPOCH + Duration::from_millis(at))
    }

    /// Takes this backend's share of the VIP's active flows, in per mille of its configured
    /// share (`None`: too few flows to tell), and moves the flow cap one step.
    pub fn observe_share(&mut self, spec: &LoadSpec, share_permille: Option<u64>) {
        self.flow_share_permille = share_permille;
        match share_permille {
            Some(s) if s > OVERLOADED_PERMILLE => {
                let from = self.flow_cap.unwrap_or(self.step).min(self.step);
                self.flow_cap = Some(from.saturating_sub(1).max(spec.min_eighths));
            }
            Some(s) if s >= RECOVERED_PERMILLE => {}
            _ => {
                self.flow_cap = self
                    .flow_cap
                    .map(|c| c + 1)
                    .filter(|&c| c < spec.max_eighths.max(FULL));
            }
        }
    }
}

/// Each backend's share of the active flows in per mille of its fair share, from (weight,
/// active flows) of the backends that take new flows; `None` for all when there are too few
/// flows to tell. The weight is the configured one times the step its agent asks for: a
/// backend its agent lowered must not make the others look overloaded.
pub fn shares(backends: &[(u32, u64)]) -> Vec<Option<u64>> {
    let flows: u64 = backends.iter().map(|b| b.1).sum();
    let weights: u64 = backends.iter().map(|b| b.0 as u64).sum();
    if weights == 0 || flows < MIN_FLOWS_PER_BACKEND * backends.len() as u64 {
        return vec![None; backends.len()];
    }
    backends
        .iter()
        .map(|&(w, n)| {
            // share / fair = (n / flows) / (w / weights)
            (w > 0).then(|| n * weights * 1000 / (flows * w as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LoadSpec {
        LoadSpec {
            agent: None,
            flows: true,
            weight_interval: Duration::from_secs(5),
            min_eighths: 2,
            max_eighths: 8,
        }
    }

    #[test]
    fn steps_one_eighth_per_interval_towards_the_agent() {
        let s = spec();
        let mut l = Load::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(l.advance(&s, t0), None, "at target already");
        l.said.take("50%");
        assert_eq!(l.target(&s), (4, "agent says 50%".into()));
        assert_eq!(l.advance(&s, t0), Some((8, 7)), "the first step is at once");
        assert_eq!(l.advance(&s, t0 + Duration::from_secs(4)), None);
        assert_eq!(l.advance(&s, t0 + Duration::from_secs(5)), Some((7, 6)));
        assert_eq!(l.advance(&s, t0 + Duration::from_secs(6)), None);
        l.said.take("5%");
        let (step, why) = l.target(&s);
        assert_eq!(step, 2, "bounded by min_weight");
        assert!(why.contains("min_weight"), "{why}");
        l.said.take("150%");
        assert_eq!(l.target(&s).0, 8, "bounded by max_weight");
        assert_eq!(l.advance(&s, t0 + Duration::from_secs(10)), Some((6, 7)));
    }

    #[test]
    fn active_flows_cap_an_overloaded_backend_and_release_it() {
        let s = spec();
        // Three backends of weight 1: 60 flows on the first, 20 on each other.
        let sh = shares(&[(1, 60), (1, 20), (1, 20)]);
        assert_eq!(sh, vec![Some(1800), Some(600), Some(600)]);
        assert_eq!(shares(&[(1, 3), (1, 1)]), vec![None, None], "too few flows");
        assert_eq!(
            shares(&[(3, 30), (1, 10)]),
            vec![Some(1000), Some(1000)],
            "weighted fair shares"
        );
        let mut l = Load::default();
        l.observe_share(&s, sh[0]);
        assert_eq!(l.flow_cap, Some(7));
        let (step, why) = l.target(&s);
        assert_eq!(step, 7);
        assert!(why.contains("1.80x"), "{why}");
        l.observe_share(&s, Some(1300));
        assert_eq!(l.flow_cap, Some(6), "still overloaded: down one more");
        l.observe_share(&s, Some(1150));
        assert_eq!(l.flow_cap, Some(6), "between the thresholds: held");
        l.observe_share(&s, Some(900));
        assert_eq!(l.flow_cap, Some(7));
        l.observe_share(&s, None);
        assert_eq!(l.flow_cap, None, "released at the configured step");
        for _ in 0..20 {
            l.observe_share(&s, Some(5000));
        }
        assert_eq!(l.flow_cap, Some(2), "never below min_weight");
    }
}
