//! Hostile frames in bulk: a seeded generator (`dsr_lab::hostile`) pushes a million random and
//! mutated frames through the loaded XDP program with BPF_PROG_TEST_RUN, against a config of
//! several VIPs with backends of their own, and checks every frame against the design and
//! against the host model of the decision (`dsr_lab::model`, the data path's own parser):
//!
//! - the verdict is one the design allows (PASS, DROP or TX here: no backend sits behind
//!   another interface, so no REDIRECT; never ABORTED) and the model's;
//! - a frame is transmitted only if it was addressed to our MAC and to a configured VIP with
//!   a usable backend;
//! - a transmitted frame differs from the input only in the two MACs (destination = the
//!   backend's, source = ours); any other frame leaves untouched;
//! - the backend is the one the model predicts (shared hash, the tables the writer built), and
//!   so one of the matched VIP's;
//! - per batch, the program's per-reason and per-VIP counters moved exactly as the model's
//!   reasons and VIPs say (a mismatch is replayed frame by frame to name the frame).
//!
//! `DSR_HOSTILE_SEED` replays a seed (printed at the start and in every failure),
//! `DSR_HOSTILE_FRAMES` changes the count (default 1,000,000), `DSR_HOSTILE_CORPUS=DIR` also
//! writes the first 2,000 frames there, one file each (a seed corpus for `fuzz/`). Needs root,
//! as CI has.

use std::time::Instant;

use dsr_common::Reason;
use dsr_lab::{
    differential::{LO, Setup, reason_packets, setup, targets, vip_packets},
    hostile::{Generator, hex},
    model::Decision,
    testrun::{run, verdict_name},
};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
    )
}

#[test]
fn a_million_hostile_frames_match_the_model() {
    let seed = env_u64("DSR_HOSTILE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let total = env_u64("DSR_HOSTILE_FRAMES").unwrap_or(1_000_000) as usize;
    eprintln!("hostile frames: seed {seed} (DSR_HOSTILE_SEED={seed} replays it), {total} frames");
    let s = setup();
    let (dp, model) = (&s.dp, &s.model);
    let mut generator = Generator::new(seed, targets(model));
    let nvips = model.vips.len();
    const BATCH: usize = 20_000;
    let mut batch: Vec<(Vec<u8>, Decision)> = Vec::with_capacity(BATCH);
    let mut reasons_before = reason_packets(dp);
    let mut vips_before = vip_packets(dp, nvips);
    let mut seen = vec![0u64; Reason::ALL.len()];
    let corpus = std::env::var_os("DSR_HOSTILE_CORPUS").map(std::path::PathBuf::from);
    if let Some(dir) = &corpus {
        std::fs::create_dir_all(dir).unwrap();
    }
    let start = Instant::now();
    for n in 0..total {
        let frame = generator.next_frame();
        if let Some(dir) = corpus.as_ref().filter(|_| n < 2000) {
            std::fs::write(dir.join(format!("hostile-{seed}-{n}")), &frame).unwrap();
        }
        let want = s
            .differ(&frame)
            .unwrap_or_else(|what| panic!("seed {seed}, frame #{n}: {what}"));
        seen[want.reason as usize] += 1;
        batch.push((frame, want));
        if batch.len() == BATCH || n + 1 == total {
            let reasons = reason_packets(dp);
            let vips = vip_packets(dp, nvips);
            let mut want_reasons = vec![0u64; reasons.len()];
            let mut want_vips = vec![0u64; nvips];
            for (_, d) in &batch {
                want_reasons[d.reason as usize] += 1;
                if let Some(v) = d.vip {
                    want_vips[v as usize] += 1;
                }
            }
            let moved = |after: &[u64], before: &[u64]| -> Vec<u64> {
                after.iter().zip(before).map(|(a, b)| a - b).collect()
            };
            if moved(&reasons, &reasons_before) != want_reasons
                || moved(&vips, &vips_before) != want_vips
            {
                localize(&s, seed, n + 1 - batch.len(), &batch);
            }
            reasons_before = reasons;
            vips_before = vips;
            batch.clear();
        }
    }
    let elapsed = start.elapsed();
    eprintln!(
        "hostile frames: {total} in {:.1} s ({:.2} us/frame); by reason (model):",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / total as f64
    );
    for r in Reason::ALL {
        eprintln!("  {:<22} {}", r.name(), seen[r as usize]);
    }
    if total >= 100_000 {
        // The generator must keep reaching every exit the config can produce.
        for r in Reason::ALL {
            if !matches!(r, Reason::NotConfigured | Reason::NoTxPort) {
                assert!(seen[r as usize] > 0, "no frame ended as {}", r.name());
            }
        }
    }
}

/// A batch's counters disagreed with the model: replays it frame by frame (the decisions do
/// not depend on history) and names the first frame whose reason or VIP differs.
fn localize(s: &Setup, seed: u64, first: usize, batch: &[(Vec<u8>, Decision)]) -> ! {
    let (dp, model) = (&s.dp, &s.model);
    let program = dp.program();
    let n = model.vips.len();
    for (i, (frame, want)) in batch.iter().enumerate() {
        let (r0, v0) = (reason_packets(dp), vip_packets(dp, n));
        let (verdict, out) = run(program, frame, LO);
        let (r1, v1) = (reason_packets(dp), vip_packets(dp, n));
        let reason = Reason::ALL
            .into_iter()
            .find(|r| r1[*r as usize] != r0[*r as usize]);
        let vip = (0..n).find(|&v| v1[v] != v0[v]).map(|v| v as u32);
        if reason != Some(want.reason) || vip != want.vip {
            panic!(
                "seed {seed}, frame #{}: the program counted reason {reason:?}, VIP {vip:?}\n  frame  {}\n  model  {want:?}\n  kernel {} -> {}",
                first + i,
                hex(frame),
                verdict_name(verdict),
                hex(&out)
            );
        }
    }
    panic!(
        "seed {seed}: frames #{first}..: a batch's counters disagreed, no single frame does on replay"
    );
}
