//! Soak: steady traffic while backends die and come back every few seconds and the config is
//! reloaded every 30 s. One minute in `cargo xtask test`; `DSR_SOAK_SECONDS=600` for the
//! ten-minute run. Asserts that requests fail only right after a backend died, that the
//! daemon's memory, file descriptors and flow entries stay within bounds, and that the data
//! path's counters agree with what the clients saw.

use std::{
    net::UdpSocket,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use dsr_lab::lab::{Lab, UDP_PORT, VIP, in_netns_path};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn soak_under_backend_churn_and_reloads() {
    let seconds: u64 = std::env::var("DSR_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut lab = Lab::new("soak", &[1, 1, 1]);
    let check = "[vip.check]\ntype = \"tcp\"\nport = 80\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n";
    let config = lab.config().replace(
        "protocol = \"udp\"\n",
        &format!("protocol = \"udp\"\n{check}"),
    );
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pid = lab.status().pid.unwrap();
    let vip_packets = |lab: &Lab| {
        lab.status()
            .vips
            .iter()
            .find(|v| v.name == "udp-53")
            .unwrap()
            .traffic
            .packets
    };
    let packets_before = vip_packets(&lab);

    // The clients: UDP requests from ever new ports, each answered or timed out (300 ms).
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let client = {
        let (stop, results) = (stop.clone(), results.clone());
        let (ns, ip) = (format!("/run/netns/{}", lab.client_ns), lab.client_ip);
        std::thread::spawn(move || {
            in_netns_path(&ns);
            let mut sport = 20000u16;
            while !stop.load(Ordering::Relaxed) {
                sport = if sport >= 60000 { 20000 } else { sport + 1 };
                let ok = (|| -> std::io::Result<bool> {
                    let sock = UdpSocket::bind((ip, sport))?;
                    sock.connect((VIP, UDP_PORT))?;
                    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
                    sock.send(b"who are you?")?;
                    let mut buf = [0u8; 64];
                    Ok(sock.recv(&mut buf).is_ok())
                })()
                .unwrap_or(false);
                results.lock().unwrap().push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // The churn: every 3 s one backend's service dies or returns (never all at once); a
    // reload every 30 s.
    let started = Instant::now();
    let mut kills: Vec<Instant> = Vec::new();
    let mut down: Option<usize> = None;
    let mut step = 0usize;
    let mut samples = Vec::new();
    let mut reloads = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(3));
        match down.take() {
            Some(i) => lab.start_service(i),
            None => {
                let i = step % 3;
                kills.push(Instant::now());
                lab.stop_service(i);
                down = Some(i);
            }
        }
        step += 1;
        if step.is_multiple_of(10) {
            let (ok, out) = lab.dsr(&["reload"]);
            assert!(ok, "reload: {out}");
            reloads += 1;
        }
        samples.push((rss_kib(pid), fds(pid)));
    }
    if let Some(i) = down {
        lab.start_service(i);
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    let results = results.lock().unwrap().clone();
    let failed: Vec<Instant> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(t, _)| *t)
        .collect();
    let answered = results.iter().filter(|(_, ok)| *ok).count();
    // A request fails only in the instant a backend dies: its service is gone before the
    // check (every 100 ms, 300 ms timeout, fall 1) takes the backend out of the table.
    let window = Duration::from_millis(1500);
    for t in &failed {
        assert!(
            kills.iter().any(|k| *t >= *k && *t <= *k + window),
            "a request failed {:?} after the start, not right after a backend died",
            t.duration_since(started)
        );
    }
    assert!(
        answered > results.len() / 2,
        "{answered} of {} answered",
        results.len()
    );
    // Bounded: memory and descriptors do not grow with time, flows stay within the table.
    let (rss0, fds0) = samples[1.min(samples.len() - 1)];
    let (rss1, fds1) = *samples.last().unwrap();
    assert!(
        rss1 <= rss0 + rss0 / 2 + 2048,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    assert!(
        fds1 <= fds0 + 8,
        "file descriptors grew from {fds0} to {fds1}"
    );
    let (ok, out) = lab.dsr(&["flows", "--limit", "100000", "--json"]);
    assert!(ok, "{out}");
    let flows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(flows.len() <= 65536, "{} flow entries", flows.len());
    // The data path saw every request that was answered (and no more than were sent).
    let packets = vip_packets(&lab) - packets_before;
    assert!(
        packets >= answered as u64 && packets <= results.len() as u64,
        "the VIP counted {packets} packets for {} requests, {answered} answered",
        results.len()
    );
    println!(
        "soak {seconds}s: {} requests, {} failed right after one of {} backend deaths, {reloads} reloads; RSS {rss0}->{rss1} KiB, fds {fds0}->{fds1}, {} flow entries",
        results.len(),
        failed.len(),
        kills.len(),
        flows.len()
    );
}
