//! `cargo xtask run` without a config: a live demonstration in the namespace lab. Builds the
//! topology, starts the real `dsr` on the load balancer, sends a burst of TCP and UDP requests
//! showing which backend answered each (and that the reply bypassed the load balancer), then
//! stops dsr (which prints its counters) and removes the lab.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use dsr_lab::lab::{CLIENT_IP, Capture, LB_IP, Lab, TCP_PORT, UDP_PORT, VIP, ipv4_src, mac_str};

fn main() {
    if let Err(e) = demo() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn demo() -> Result<()> {
    let weights = [1, 1, 2];
    println!("== dsr demo: building the lab (network namespaces, removed at the end)");
    let mut lab = Lab::new("demo", &weights);
    println!(
        "   client {CLIENT_IP} --+                     +-- {} {} (weight {})",
        lab.backends[0].name, lab.backends[0].ip, lab.backends[0].weight
    );
    println!(
        "                        +-- bridge --+-- LB {LB_IP} -+-- {} {} (weight {})",
        lab.backends[1].name, lab.backends[1].ip, lab.backends[1].weight
    );
    println!(
        "   VIP {VIP} on the LB; backends hold it on lo  +-- {} {} (weight {})",
        lab.backends[2].name, lab.backends[2].ip, lab.backends[2].weight
    );
    println!(
        "\n== dsr config used on the load balancer:\n{}",
        lab.config()
    );
    println!("== starting `dsr run` on the load balancer");
    lab.start_dsr(true)?;

    let client_cap = Capture::start(&lab.client_ns, "eth0");
    let lb_cap = Capture::start(&lab.lb_ns, "eth0");
    let mut tally = BTreeMap::<String, usize>::new();
    println!(
        "\n== 12 TCP connections to {VIP}:{TCP_PORT} and 12 UDP datagrams to {VIP}:{UDP_PORT}"
    );
    for i in 0..12u16 {
        for (proto, port) in [("tcp", TCP_PORT), ("udp", UDP_PORT)] {
            let sport = 40000 + i * 7;
            let who = if proto == "tcp" {
                lab.tcp_request(sport, 1)?.remove(0)
            } else {
                lab.udp_request(sport)?
            };
            let b = lab.backend_by_name(&who).expect("answer names a backend");
            let predicted = &lab.backends[lab.predict(if proto == "tcp" { 6 } else { 17 }, sport)];
            println!(
                "   {proto} {CLIENT_IP}:{sport} -> {VIP}:{port}  answered by {who} ({}, {}){}",
                b.ip,
                mac_str(b.mac),
                if predicted.name == who {
                    ""
                } else {
                    "  <- NOT the predicted backend!"
                }
            );
            *tally.entry(who).or_default() += 1;
        }
    }
    let client_frames = client_cap.stop();
    let lb_frames = lb_cap.stop();
    const MORE: u16 = 400;
    println!("\n== {MORE} more UDP flows (not listed), to show the split follows the weights");
    for i in 0..MORE {
        let who = lab.udp_request(50000 + i)?;
        *tally.entry(who).or_default() += 1;
    }
    let total: usize = tally.values().sum();
    let weight_sum: u32 = weights.iter().sum();
    println!("== answers per backend:");
    for b in &lab.backends {
        let n = tally.get(&b.name).copied().unwrap_or(0);
        println!(
            "   {}: {n:4} of {total} ({:.1}%; weight {} = {:.1}%)",
            b.name,
            100.0 * n as f64 / total as f64,
            b.weight,
            100.0 * b.weight as f64 / weight_sum as f64
        );
    }
    let replies: Vec<_> = client_frames
        .iter()
        .filter(|f| ipv4_src(f) == Some(VIP))
        .collect();
    let from_backends = replies
        .iter()
        .filter(|f| lab.backends.iter().any(|b| f[6..12] == b.mac))
        .count();
    let via_lb = lb_frames
        .iter()
        .filter(|f| ipv4_src(f) == Some(VIP))
        .count();
    println!(
        "\n== reply path: the client received {} frames from the VIP, {from_backends} of them \
         straight from a backend's MAC; the load balancer's interface carried {via_lb} of them",
        replies.len()
    );
    println!("\n== `dsr status` (what an operator sees; `--json` for scripts)");
    let (_, status) = lab.dsr(&["status"]);
    print!("{status}");
    println!("\n== `dsr stats` (why each packet was forwarded, passed or dropped)");
    let (_, stats) = lab.dsr(&["stats"]);
    print!("{stats}");
    println!("\n== `dsr stop`: the daemon detaches the data path, prints its counters and exits");
    let (stopped, out) = lab.dsr(&["stop"]);
    print!("{out}");
    let status = lab.stop_dsr();
    println!("\n== removing the lab");
    drop(lab);
    if from_backends != replies.len()
        || via_lb != 0
        || !stopped
        || status.is_none_or(|s| !s.success())
    {
        bail!("the demo did not show direct server return working");
    }
    println!("== done: every request answered directly by a backend");
    Ok(())
}
