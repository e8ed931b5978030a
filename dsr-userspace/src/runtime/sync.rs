//! Flow-state exchange between load balancers (`[sync]`): each node sends the flows its
//! flow table holds to its peers, which adopt the ones they do not know. Both nodes place a
//! new flow alike (same config, same hash), so without this only flows placed before a
//! backend change are at risk on a failover: the survivor's table now says otherwise, and
//! only the failed node's flow table knew where they went. With it, the survivor holds the
//! same entry and the connection keeps its backend.
//!
//! What is sent is never a node-local id: the VIP's address, port, protocol and VLAN, the
//! flow's fields as hashed, and the backend's address; the receiver maps them to its own
//! ids (and drops what it does not serve). Datagrams are authenticated (HMAC-SHA256 with a
//! shared key) and carry their sending time, so that old or forged ones are refused; a
//! node's own are ignored. Bounded: at most `MAX_PER_ROUND` entries per interval, resent
//! only when new, changed, or due for a refresh before the peer would let them idle out.
//! A peer never overrides a flow this node already holds.
//!
//! The flow table is walked each interval (as the flow count does): flows younger than one
//! interval are not yet on the peer when a node fails.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use dsr_common::{FlowKey, FlowMapKey, addr_words, words_addr};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::{net::UdpSocket, sync::watch};

use crate::{
    datapath::flowcount::{FlowAdopter, FlowCounter},
    runtime::state::Names,
    spec::model::{Protocol, SyncSpec, VipAddr},
};

const MAGIC: &[u8; 4] = b"DSR1";
/// magic, sender id (u64), sequence number (u64), send time (Unix ms, u64), entry count
/// (u16).
const HEADER: usize = 4 + 8 + 8 + 8 + 2;
const MAC_LEN: usize = 32;
/// VIP address (16), port (2), protocol (1), VLAN (2); the frame's VLAN (2); flow src (16),
/// dst (16), ports (4), protocol (1); backend address (16).
const ENTRY: usize = 16 + 2 + 1 + 2 + 2 + 16 + 16 + 4 + 1 + 16;
/// Entries per datagram (it stays under 1,400 bytes: no fragmentation on common paths).
const PER_DATAGRAM: usize = (1400 - HEADER - MAC_LEN) / ENTRY;
/// Entries sent per interval at most.
const MAX_PER_ROUND: usize = 50_000;
/// A datagram sent longer ago than this (by its own clock) is refused as a replay.
const MAX_AGE: Duration = Duration::from_secs(30);

/// One flow as it travels: nothing node-local.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireFlow {
    pub vip: VipAddr,
    pub vlan: u16,
    pub flow: FlowKey,
    pub backend: IpAddr,
}

/// What the exchange did, for status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub peers: Vec<SocketAddr>,
    pub sent_flows: u64,
    pub sent_datagrams: u64,
    pub received_flows: u64,
    /// Received flows entered into the flow table (new here, or idle here), ...
    pub adopted_flows: u64,
    /// ... refreshed (the same flow on the same backend: kept from idling out here), and
    /// the rest were held here live on another backend (this node's decision stands) or
    /// name a VIP or backend this node does not have (`unknown_flows`).
    #[serde(default)]
    pub refreshed_flows: u64,
    pub unknown_flows: u64,
    /// Datagrams refused: bad length or MAC, too old, malformed.
    pub refused_datagrams: u64,
    pub last_received_unix_ms: Option<u64>,
    /// The last error (sending, walking), if any.
    pub last_error: Option<String>,
}

fn v6(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn ip(bytes: &[u8]) -> IpAddr {
    let a = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"));
    a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
}

fn words_bytes(w: &[u32; 4]) -> [u8; 16] {
    v6(words_addr(w))
}

fn encode_entry(f: &WireFlow, out: &mut Vec<u8>) {
    out.extend_from_slice(&v6(f.vip.address));
    out.extend_from_slice(&f.vip.port.to_be_bytes());
    out.push(f.vip.protocol.number());
    out.extend_from_slice(&f.vip.vlan.to_be_bytes());
    out.extend_from_slice(&f.vlan.to_be_bytes());
    out.extend_from_slice(&words_bytes(&f.flow.src));
    out.extend_from_slice(&words_bytes(&f.flow.dst));
    // As the data path holds it (both ports, in packet order): copied, not interpreted.
    out.extend_from_slice(&f.flow.ports.to_ne_bytes());
    out.push(f.flow.proto as u8);
    out.extend_from_slice(&v6(f.backend));
}

fn decode_entry(b: &[u8]) -> Option<WireFlow> {
    let protocol = match b[18] {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let vip = VipAddr {
        address: ip(&b[0..16]),
        port: u16::from_be_bytes([b[16], b[17]]),
        protocol,
        vlan: u16::from_be_bytes([b[19], b[20]]),
    };
    let vlan = u16::from_be_bytes([b[21], b[22]]);
    let flow = FlowKey {
        src: addr_words(ip(&b[23..39])),
        dst: addr_words(ip(&b[39..55])),
        ports: u32::from_ne_bytes(b[55..59].try_into().ok()?),
        proto: b[59] as u32,
    };
    Some(WireFlow {
        vip,
        vlan,
        flow,
        backend: ip(&b[60..76]),
    })
}

/// Datagrams carrying `flows`, signed with `key`, numbered from `*seq` on (advanced).
pub fn encode(
    key: &[u8],
    sender: u64,
    seq: &mut u64,
    sent_at: SystemTime,
    flows: &[WireFlow],
) -> Vec<Vec<u8>> {
    let ms = super::unix_ms(sent_at);
    flows
        .chunks(PER_DATAGRAM)
        .map(|chunk| {
            *seq += 1;
            let mut d = Vec::with_capacity(HEADER + chunk.len() * ENTRY + MAC_LEN);
            d.extend_from_slice(MAGIC);
            d.extend_from_slice(&sender.to_be_bytes());
            d.extend_from_slice(&seq.to_be_bytes());
            d.extend_from_slice(&ms.to_be_bytes());
            d.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            for f in chunk {
                encode_entry(f, &mut d);
            }
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
            mac.update(&d);
            d.extend_from_slice(&mac.finalize().into_bytes());
            d
        })
        .collect()
}

/// A datagram as received: who sent it, its number, its flows.
#[derive(Debug)]
pub struct Received {
    pub sender: u64,
    pub seq: u64,
    pub flows: Vec<WireFlow>,
}

/// The sender, number and flows of a datagram, if it is whole, signed with `key` and
/// recent (a replay within the window is caught by [`Replays`]).
pub fn decode(key: &[u8], datagram: &[u8], now: SystemTime) -> Result<Received, String> {
    if datagram.len() < HEADER + MAC_LEN || &datagram[..4] != MAGIC {
        return Err("not a dsr sync datagram".into());
    }
    let (body, tag) = datagram.split_at(datagram.len() - MAC_LEN);
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    mac.verify_slice(tag)
        .map_err(|_| "bad MAC (another key?)".to_string())?;
    let sender = u64::from_be_bytes(body[4..12].try_into().expect("8 bytes"));
    let seq = u64::from_be_bytes(body[12..20].try_into().expect("8 bytes"));
    let sent = SystemTime::UNIX_EPOCH
        + Duration::from_millis(u64::from_be_bytes(body[20..28].try_into().expect("8")));
    let skew = now
        .duration_since(sent)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > MAX_AGE {
        return Err(format!(
            "sent {skew:?} away from now (replayed, or clocks apart)"
        ));
    }
    let count = u16::from_be_bytes([body[28], body[29]]) as usize;
    if body.len() != HEADER + count * ENTRY {
        return Err("length does not match its entry count".into());
    }
    let flows = body[HEADER..]
        .chunks(ENTRY)
        .filter_map(decode_entry)
        .collect();
    Ok(Received { sender, seq, flows })
}

/// Which datagram numbers each sender has used: the highest, and which of the 64 below it
/// (datagrams of one round may arrive out of order), so a replay is refused.
#[derive(Default)]
pub struct Replays {
    seen: HashMap<u64, (u64, u64)>,
}

impl Replays {
    /// Whether `seq` from `sender` is new (and now seen).
    pub fn fresh(&mut self, sender: u64, seq: u64) -> bool {
        let (top, mask) = self.seen.entry(sender).or_insert((0, 0));
        if seq > *top {
            let shift = seq - *top;
            *mask = if shift >= 64 { 0 } else { *mask << shift } | 1;
            *top = seq;
            return true;
        }
        let back = *top - seq;
        if back >= 64 || *mask & (1 << back) != 0 {
            return false;
        }
        *mask |= 1 << back;
        true
    }
}

/// Reads the shared key: at least 16 bytes (surrounding whitespace ignored).
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>> {
    let key =
        std::fs::read(path).with_context(|| format!("reading sync key {}", path.display()))?;
    let key = key.trim_ascii().to_vec();
    if key.len() < 16 {
        bail!(
            "sync key {} holds {} bytes; use at least 16 (e.g. `head -c 32 /dev/urandom | base64 > {}`)",
            path.display(),
            key.len(),
            path.display()
        );
    }
    Ok(key)
}

/// Starts the exchange: a socket bound to `spec.listen`, a task that sends every
/// `spec.interval` and one that receives. The returned status is kept up to date.
pub async fn start(
    spec: &SyncSpec,
    key: Vec<u8>,
    counter: FlowCounter,
    adopter: FlowAdopter,
    names: watch::Receiver<Arc<Names>>,
    idle: Duration,
) -> Result<Arc<Mutex<SyncStatus>>> {
    let socket = Arc::new(
        UdpSocket::bind(spec.listen)
            .await
            .with_context(|| format!("binding the sync socket {}", spec.listen))?,
    );
    let mut id = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .context("reading /dev/urandom")?;
    let sender = u64::from_ne_bytes(id);
    let status = Arc::new(Mutex::new(SyncStatus {
        peers: spec.peers.clone(),
        ..SyncStatus::default()
    }));
    let key = Arc::new(key);
    tokio::spawn(send_loop(
        socket.clone(),
        key.clone(),
        sender,
        spec.peers.clone(),
        spec.interval,
        Arc::new(counter),
        names.clone(),
        status.clone(),
        idle,
    ));
    let peer_ips = spec.peers.iter().map(|p| p.ip()).collect();
    tokio::spawn(receive_loop(
        socket,
        key,
        sender,
        peer_ips,
        adopter,
        names,
        status.clone(),
    ));
    Ok(status)
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    socket: Arc<UdpSocket>,
    key: Arc<Vec<u8>>,
    sender: u64,
    peers: Vec<SocketAddr>,
    interval: Duration,
    counter: Arc<FlowCounter>,
    names: watch::Receiver<Arc<Names>>,
    status: Arc<Mutex<SyncStatus>>,
    idle: Duration,
) {
    // What each peer was last sent, per flow: sent again when its backend changes, or
    // before the peer's copy would idle out.
    let mut sent: HashMap<FlowMapKey, (u32, Instant)> = HashMap::new();
    let mut seq = 0u64;
    let refresh = (idle / 3).max(interval);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = counter.clone();
        let entries = match tokio::task::spawn_blocking(move || c.live_entries()).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                status.lock().expect("not poisoned").last_error = Some(format!("{e:#}"));
                continue;
            }
            Err(_) => return,
        };
        let names = names.borrow().clone();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for (k, e) in entries {
            seen.insert(k);
            let due = sent
                .get(&k)
                .is_none_or(|&(b, at)| b != e.backend || now.duration_since(at) >= refresh);
            if !due || out.len() >= MAX_PER_ROUND {
                continue;
            }
            let (Some(vip), Some(&hash_fields), Some(backend)) = (
                names.vip_addrs.get(&k.vip),
                names.vip_hash_fields.get(&k.vip),
                names.backends.get(&e.backend),
            ) else {
                continue;
            };
            // An entry of the VIP's former hash setting stands for no flow now: a peer would
            // take it for one (with the current setting's mask).
            if !k.masked_by(hash_fields) {
                continue;
            }
            // The whole masked flow, as a peer of any version keys it.
            let flow = k.flow(addr_words(vip.address), vip.protocol.number(), hash_fields);
            out.push(WireFlow {
                vip: *vip,
                vlan: k.vlan,
                flow,
                backend: *backend,
            });
            sent.insert(k, (e.backend, now));
        }
        sent.retain(|k, _| seen.contains(k));
        if out.is_empty() {
            continue;
        }
        let datagrams = encode(&key, sender, &mut seq, SystemTime::now(), &out);
        let mut error = None;
        for peer in &peers {
            for d in &datagrams {
                if let Err(e) = socket.send_to(d, peer).await {
                    error = Some(format!("sending to {peer}: {e}"));
                }
            }
        }
        let mut st = status.lock().expect("not poisoned");
        st.sent_flows += out.len() as u64;
        st.sent_datagrams += (datagrams.len() * peers.len()) as u64;
        if error.is_some() {
            st.last_error = error;
        }
    }
}

async fn receive_loop(
    socket: Arc<UdpSocket>,
    key: Arc<Vec<u8>>,
    sender: u64,
    peers: Vec<IpAddr>,
    mut adopter: FlowAdopter,
    names: watch::Receiver<Arc<Names>>,
    status: Arc<Mutex<SyncStatus>>,
) {
    let mut buf = vec![0u8; 65536];
    let mut replays = Replays::default();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Only the configured peers (by address; IPv4 may arrive mapped on a v6 socket).
        let from_ip = match from.ip() {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            a => a,
        };
        let decoded = if peers.contains(&from_ip) {
            decode(&key, &buf[..n], SystemTime::now()).and_then(|r| {
                if r.sender == sender || replays.fresh(r.sender, r.seq) {
                    Ok(r)
                } else {
                    Err(format!(
                        "datagram {} of this sender was seen before (a replay)",
                        r.seq
                    ))
                }
            })
        } else {
            Err("not from a configured peer".to_string())
        };
        let Received {
            sender: peer,
            flows,
            ..
        } = match decoded {
            Ok(d) => d,
            Err(e) => {
                let mut st = status.lock().expect("not poisoned");
                if st.refused_datagrams == 0 {
                    log::warn!("sync: refused a datagram from {from}: {e}");
                }
                st.refused_datagrams += 1;
                continue;
            }
        };
        if peer == sender {
            continue;
        }
        let names = names.borrow().clone();
        let (mut adopted, mut refreshed, mut unknown) = (0u64, 0u64, 0u64);
        for f in &flows {
            let Some(&vip_id) = names.vip_ids.get(&f.vip) else {
                unknown += 1;
                continue;
            };
            let Some(&backend) = names.backend_ids.get(&(vip_id, f.backend)) else {
                unknown += 1;
                continue;
            };
            // The sender's destination and protocol are implied by the VIP here too.
            let key = FlowMapKey::new(vip_id, f.vlan, &f.flow);
            match adopter.adopt(&key, backend) {
                Ok(crate::datapath::flowcount::Adopted::New) => adopted += 1,
                Ok(crate::datapath::flowcount::Adopted::Refreshed) => refreshed += 1,
                Ok(crate::datapath::flowcount::Adopted::Kept) => {}
                Err(_) => {}
            }
        }
        let mut st = status.lock().expect("not poisoned");
        st.received_flows += flows.len() as u64;
        st.adopted_flows += adopted;
        st.refreshed_flows += refreshed;
        st.unknown_flows += unknown;
        st.last_received_unix_ms = Some(super::unix_ms(SystemTime::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sport: u16) -> WireFlow {
        WireFlow {
            vip: "192.0.2.10:80/tcp".parse().unwrap(),
            vlan: 0,
            flow: FlowKey::new(
                "198.51.100.7".parse().unwrap(),
                sport,
                "192.0.2.10".parse().unwrap(),
                80,
                6,
            ),
            backend: "10.0.0.2".parse().unwrap(),
        }
    }

    #[test]
    fn datagrams_round_trip_and_refuse_forgeries_and_replays() {
        let key = b"0123456789abcdef0123";
        let flows: Vec<WireFlow> = (0..50).map(|i| flow(40000 + i)).collect();
        let now = SystemTime::now();
        let mut seq = 0;
        let ds = encode(key, 7, &mut seq, now, &flows);
        assert_eq!(ds.len(), 50usize.div_ceil(PER_DATAGRAM));
        assert_eq!(seq, ds.len() as u64);
        assert!(ds.iter().all(|d| d.len() <= 1400));
        let mut back = Vec::new();
        let mut replays = Replays::default();
        for d in &ds {
            let r = decode(key, d, now).unwrap();
            assert_eq!(r.sender, 7);
            assert!(replays.fresh(r.sender, r.seq));
            back.extend(r.flows);
        }
        assert_eq!(back, flows);
        // The same datagram again, inside the time window: a replay. Out of order: fine.
        let again = decode(key, &ds[0], now + Duration::from_secs(20)).unwrap();
        assert!(!replays.fresh(again.sender, again.seq));
        let mut window = Replays::default();
        assert!(window.fresh(1, 5) && window.fresh(1, 3) && !window.fresh(1, 3));
        assert!(window.fresh(1, 100) && !window.fresh(1, 36) && window.fresh(1, 37));
        // Another key, a flipped bit, a cut datagram, a replay a minute later.
        assert!(
            decode(b"another key of 16+", &ds[0], now)
                .unwrap_err()
                .contains("bad MAC")
        );
        let mut forged = ds[0].clone();
        forged[30] ^= 1;
        assert!(decode(key, &forged, now).unwrap_err().contains("bad MAC"));
        assert!(decode(key, &ds[0][..40], now).is_err());
        assert!(
            decode(key, &ds[0], now + Duration::from_secs(60))
                .unwrap_err()
                .contains("replayed")
        );
    }
}
