//! dsr's test harness, shared by the integration tests (tests/*.rs), the demo and benchmarks:
//! - `differential`: the program and the host model on one config, and the check of a frame;
//! - `ebpf`: the test-only XDP programs (reference programs, benchmark traffic), embedded;
//! - `frames`: hand-built Ethernet frames, including malformed ones;
//! - `hostile`: a seeded generator of random and mutated frames;
//! - `model`: the data path's decision for a frame, computed on the host;
//! - `testrun`: runs the real XDP program on a frame with BPF_PROG_TEST_RUN;
//! - `lab`: a network-namespace topology (client, load balancer, backends on one bridge) torn
//!   down on drop, with servers that answer with their name and clients that ask.

pub mod differential;
pub mod ebpf;
pub mod frames;
pub mod hostile;
pub mod lab;
pub mod model;
pub mod testrun;
