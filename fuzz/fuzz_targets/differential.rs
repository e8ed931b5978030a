//! Differential fuzzing of the data path: each input is a frame, run through the real XDP
//! program (BPF_PROG_TEST_RUN, loaded once with the hostile test's config) and through the
//! host model (`dsr_lab::model`, the program's own parser); verdict, backend, the bytes out
//! and the design's invariants must agree (`dsr_lab::differential::check`). Needs root.
#![no_main]

use dsr_lab::differential::{Setup, setup};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static SETUP: Setup = setup();
}

fuzz_target!(|frame: &[u8]| {
    // BPF_PROG_TEST_RUN takes an XDP frame of an Ethernet header up to a page less head and
    // tail room.
    if frame.len() < 14 || frame.len() > 3000 {
        return;
    }
    SETUP.with(|s| {
        if let Err(what) = s.differ(frame) {
            panic!("{what}");
        }
    });
});
