//! The network-namespace lab: a client, a load balancer and N backends, each in its own
//! namespace, plugged into one bridge that lives in a "switch" namespace. Backends hold the VIP
//! on `lo` (arp_ignore=1, arp_announce=2) and run servers that answer with their name; the
//! load balancer holds the VIP on its interface (as keepalived would) and runs the real `dsr`
//! binary. Everything is torn down when the [`Lab`] is dropped, also when a test panics.
//!
//! Names: every namespace is `<tag>-<pid>-<role>`, so tests running in parallel (cargo runs
//! them as threads, each test binary as its own process) never share one.

use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use dsr::plan::maglev;
use dsr_common::{DEFAULT_HASH_SEED, FlowKey, flow_hash};

use crate::ebpf::REFERENCE_OBJECT;

pub const SUBNET_PREFIX: u8 = 24;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The IPv6 side of the bridge segment: every host there also has 2001:db8:18::<its v4 last
/// byte, in hex>, and the backends hold VIP6 on lo.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x100);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x1);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x2);

/// The IPv6 address of the bridge-segment host whose IPv4 address is `v4`.
pub fn v6_of(v4: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, v4.octets()[3] as u16)
}
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
const IFACE: &str = "eth0";
const IO_TIMEOUT: Duration = Duration::from_secs(2);

pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i as u8)
}

pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, 0x11 + i as u8]
}

pub fn backend_name(i: usize) -> String {
    format!("backend-{}", i + 1)
}

pub fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it opens live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/NAME`).
pub fn in_netns_path(path: &str) {
    enter_netns(path)
}

fn enter_netns(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: plain syscall on a valid fd; only this thread changes namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

pub fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let (key, value) = (key.to_owned(), value.to_owned());
    in_netns(ns, move || {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        fs::write(&path, &value).with_context(|| format!("writing {path}"))
    })
}

/// Port of the backends' health endpoint (HTTP, on their own address), which tests can turn
/// off independently of the service.
pub const HEALTH_PORT: u16 = 8080;

/// What runs on a server thread: given the stop flag, it reports readiness (or a bind
/// error) and serves until stopped.
type ThreadBody = Box<dyn FnOnce(Arc<AtomicBool>, std::sync::mpsc::Sender<Result<()>>) + Send>;

/// Background threads in one namespace that stop together.
struct Threads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Threads {
    /// Starts one thread per listener in namespace `ns`; each gets the stop flag and reports
    /// readiness (or a bind error) before this returns.
    fn start(ns: &str, bodies: Vec<ThreadBody>) -> Result<Threads> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let n = bodies.len();
        let threads = bodies
            .into_iter()
            .map(|body| {
                let (stop, path, ready) =
                    (stop.clone(), format!("/run/netns/{ns}"), ready_tx.clone());
                std::thread::spawn(move || {
                    enter_netns(&path);
                    body(stop, ready)
                })
            })
            .collect();
        let me = Threads { stop, threads };
        for _ in 0..n {
            ready_rx.recv().context("server thread died")??;
        }
        Ok(me)
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Accepts on `addr` until stopped, serving each connection on its own thread.
fn tcp_listener(
    addr: SocketAddr,
    serve: fn(TcpStream, &str, &AtomicBool),
    name: String,
) -> ThreadBody {
    Box::new(move |stop, ready| {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => return ready.send(Err(anyhow!("bind tcp {addr}: {e}"))).unwrap(),
        };
        listener.set_nonblocking(true).unwrap();
        ready.send(Ok(())).unwrap();
        let mut conns = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let (stop, name) = (stop.clone(), name.clone());
                    conns.push(std::thread::spawn(move || serve(conn, &name, &stop)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    })
}

/// A backend's service: TCP port 80 (any local address, so the VIP and the backend's own)
/// and UDP port 53 on the VIP, answering with the backend's name. Stopping it resets open
/// connections, as a killed server process does.
fn start_service(ns: &str, name: &str) -> Result<Threads> {
    let udp_name = name.to_owned();
    let udp: ThreadBody = Box::new(move |stop, ready| {
        // Bound to the VIP so that replies leave with the VIP as source.
        let sock = match UdpSocket::bind((VIP, UDP_PORT)) {
            Ok(s) => s,
            Err(e) => return ready.send(Err(anyhow!("bind udp: {e}"))).unwrap(),
        };
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready.send(Ok(())).unwrap();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                // Small requests get the name; big ones the name and the size that arrived
                // (so a reassembled datagram is visible).
                let answer = if n > 1000 {
                    format!("{udp_name} {n}")
                } else {
                    udp_name.clone()
                };
                let _ = sock.send_to(answer.as_bytes(), peer);
            }
        }
    });
    let udp6_name = name.to_owned();
    let udp6: ThreadBody = Box::new(move |stop, ready| {
        // A host without VIP6 (one an address moved to) serves IPv4 only.
        let Ok(sock) = UdpSocket::bind((VIP6, UDP_PORT)) else {
            return ready.send(Ok(())).unwrap();
        };
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready.send(Ok(())).unwrap();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(udp6_name.as_bytes(), peer);
            }
        }
    });
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), TCP_PORT);
    let mut bodies = vec![tcp_listener(any, serve_tcp, name.to_owned()), udp, udp6];
    if sh(&["ip", "-n", ns, "-6", "addr", "show", "dev", "lo"])
        .is_ok_and(|a| a.contains(&VIP6.to_string()))
    {
        bodies.push(tcp_listener(
            SocketAddr::new(IpAddr::V6(VIP6), TCP_PORT),
            serve_tcp,
            name.to_owned(),
        ));
    }
    Threads::start(ns, bodies)
}

/// A backend's load agent (HAProxy's agent-check protocol): on its own address, this port.
pub const AGENT_PORT: u16 = 5555;

/// One agent connection: answers the line the file named `path` holds now (so a test can
/// change what the agent says while it runs), then closes.
fn serve_agent(mut conn: TcpStream, path: &str, _stop: &AtomicBool) {
    conn.set_nonblocking(false).ok();
    let says = fs::read_to_string(path).unwrap_or_default();
    let _ = conn.write_all(format!("{}\n", says.trim()).as_bytes());
}

/// A backend's health endpoint: HTTP on its own address, port HEALTH_PORT.
fn start_health(ns: &str, ip: Ipv4Addr, name: &str) -> Result<Threads> {
    let addr = SocketAddr::new(IpAddr::V4(ip), HEALTH_PORT);
    Threads::start(ns, vec![tcp_listener(addr, serve_tcp, name.to_owned())])
}

/// One connection: an HTTP request gets `200 <name>`; otherwise every line received is
/// answered with the server's name and a newline.
fn serve_tcp(mut conn: TcpStream, name: &str, stop: &AtomicBool) {
    conn.set_nonblocking(false).ok();
    conn.set_read_timeout(Some(Duration::from_millis(20))).ok();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if buf.starts_with(b"GET ") => {
                let _ = n;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = conn.write_all(reply.as_bytes());
                return;
            }
            Ok(n) if buf.starts_with(b"big ") => {
                let size: usize = String::from_utf8_lossy(&buf[4..n])
                    .trim()
                    .parse()
                    .unwrap_or(0);
                let chunk = vec![b'd'; 16384];
                let mut left = size.min(10 << 20);
                conn.set_write_timeout(Some(Duration::from_secs(10))).ok();
                while left > 0 && !stop.load(Ordering::Relaxed) {
                    let k = left.min(chunk.len());
                    if conn.write_all(&chunk[..k]).is_err() {
                        return;
                    }
                    left -= k;
                }
                return;
            }
            Ok(n) => {
                let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                for _ in 0..lines {
                    if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
    // Stopped: reset the connection (SO_LINGER 0), as the kernel does for a killed process.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setting a socket option on a socket we own.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// Frames seen on an interface by an AF_PACKET socket, in both directions.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    pub fn start(ns: &str, iface: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, iface, stop2) = (format!("/run/netns/{ns}"), iface.to_owned(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            let fd = packet_socket(&iface).expect("AF_PACKET socket");
            ready_tx.send(()).unwrap();
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                // SAFETY: reading into a buffer we own, of its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            // SAFETY: closing the socket we opened.
            unsafe { libc::close(fd) };
            frames
        });
        ready_rx.recv().expect("capture thread died");
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Vec<Vec<u8>> {
        // Let frames in flight arrive.
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("capture thread panicked")
    }
}

impl Capture {
    /// Like [`Capture::start`], with every frame's VLAN tag in the frame: a tag the kernel
    /// holds as metadata (a veth or a bridge hands it over out of band) is read from
    /// PACKET_AUXDATA and put back after the MAC addresses, so frames compare as on the wire.
    pub fn start_tagged(ns: &str, iface: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, iface, stop2) = (format!("/run/netns/{ns}"), iface.to_owned(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            let fd = packet_socket(&iface).expect("AF_PACKET socket");
            let one: i32 = 1;
            // SAFETY: setting an int socket option on a socket we own.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_AUXDATA,
                    (&one as *const i32).cast(),
                    4,
                )
            };
            assert_eq!(rc, 0, "PACKET_AUXDATA: {}", std::io::Error::last_os_error());
            ready_tx.send(()).unwrap();
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            // u64s: cmsg headers must be aligned.
            let mut control = [0u64; 16];
            while !stop2.load(Ordering::Relaxed) {
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                // SAFETY: msghdr is plain old data; the buffers it names are ours and outlive
                // the call; cmsgs are walked with the libc macros within `msg_controllen`.
                unsafe {
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    msg.msg_control = control.as_mut_ptr().cast();
                    msg.msg_controllen = std::mem::size_of_val(&control);
                    let n = libc::recvmsg(fd, &mut msg, 0);
                    if n <= 0 {
                        continue;
                    }
                    let mut frame = buf[..n as usize].to_vec();
                    let mut c = libc::CMSG_FIRSTHDR(&msg);
                    while !c.is_null() {
                        if (*c).cmsg_level == libc::SOL_PACKET
                            && (*c).cmsg_type == libc::PACKET_AUXDATA
                        {
                            let aux: libc::tpacket_auxdata =
                                std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                            if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12
                            {
                                let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                                    aux.tp_vlan_tpid
                                } else {
                                    0x8100
                                };
                                let mut tag = tpid.to_be_bytes().to_vec();
                                tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                                frame.splice(12..12, tag);
                            }
                        }
                        c = libc::CMSG_NXTHDR(&msg, c);
                    }
                    frames.push(frame);
                }
            }
            // SAFETY: closing the socket we opened.
            unsafe { libc::close(fd) };
            frames
        });
        ready_rx.recv().expect("capture thread died");
        Capture {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends one raw Ethernet frame out of `iface` in namespace `ns`.
pub fn send_frame(ns: &str, iface: &str, frame: Vec<u8>) -> Result<()> {
    let iface = iface.to_owned();
    in_netns(ns, move || -> Result<()> {
        let fd = packet_socket(&iface)?;
        // SAFETY: sending a buffer we own on a bound packet socket, then closing it.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
        let err = std::io::Error::last_os_error();
        unsafe { libc::close(fd) };
        if n != frame.len() as isize {
            bail!("sending a frame on {iface}: {err}");
        }
        Ok(())
    })
}

fn packet_socket(iface: &str) -> Result<i32> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscalls; the fd is checked and owned by the caller.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
        if fd < 0 {
            bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        let name = std::ffi::CString::new(iface).unwrap();
        let ifindex = libc::if_nametoindex(name.as_ptr());
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if rc != 0 {
            bail!(
                "bind AF_PACKET to {iface}: {}",
                std::io::Error::last_os_error()
            );
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok(fd)
    }
}

/// IPv4 source address of an Ethernet frame, if it carries IPv4.
pub fn ipv4_src(frame: &[u8]) -> Option<Ipv4Addr> {
    if frame.len() >= 34 && frame[12..14] == [0x08, 0x00] {
        Some(Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]))
    } else {
        None
    }
}

pub struct Backend {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub name: String,
    pub weight: u32,
}

/// Variations of the topology.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The client sits behind a router (own subnet 198.19.0.0/24) whose link towards it has
    /// this MTU, smaller than the rest: replies larger than that need path-MTU discovery.
    pub routed_client_mtu: Option<u32>,
    /// The last this-many backends sit on a second segment (bridge br1, 198.18.1.0/24),
    /// reached by the load balancer through its second interface (eth1); a router joins the
    /// two segments for their direct replies.
    pub second_segment: usize,
    /// A second load balancer (namespace `<tag>-lb2`, LB2_IP) on the same segment, and no
    /// static VIP on either: whoever runs the pair (keepalived) places the VIP.
    pub pair: bool,
}

pub const LB2_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const LB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];

pub const ROUTED_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const LB_MAC2: [u8; 6] = [0x02, 0, 0, 0, 1, 0x02];

pub struct Lab {
    pub tag: String,
    pub opts: Options,
    /// The client's address (CLIENT_IP, or ROUTED_CLIENT_IP behind a router).
    pub client_ip: Ipv4Addr,
    pub router_ns: String,
    pub switch_ns: String,
    pub client_ns: String,
    pub lb_ns: String,
    /// The second load balancer's namespace (with `Options::pair`).
    pub lb2_ns: String,
    pub backends: Vec<Backend>,
    pub dir: PathBuf,
    services: Vec<Option<Threads>>,
    health: Vec<Option<Threads>>,
    /// Services of hosts a backend address moved to, and their namespaces.
    moved: Vec<Threads>,
    /// The backends' load agents (`start_agent`).
    agents: Vec<Threads>,
    extra_ns: Vec<String>,
    dsr: Option<Child>,
    /// The config dsr runs with (written to `dir/dsr.toml`).
    config_text: Option<String>,
    /// A command dsr is started under (e.g. `setpriv ...`), before its path.
    pub wrapper: Vec<String>,
    /// Keeps the XDP_PASS program on the switch-side peer of the LB's veth attached.
    _peer_xdp: Option<Ebpf>,
    /// The same for the LB's second interface.
    _peer_xdp2: Option<Ebpf>,
    /// The same for the second load balancer's interface.
    _peer_xdp_lb2: Option<Ebpf>,
    /// The second load balancer's dsr.
    dsr2: Option<Child>,
    /// The last tables `predict` built: (weights, size) and their slots.
    predicted: std::cell::RefCell<Vec<Predicted>>,
}

/// A table `predict` built: for which (weights, backends standing by, size), and its slots.
type Predicted = ((Vec<u32>, Vec<usize>, u32), Vec<u32>);

impl Lab {
    /// Builds the topology with one backend per weight. Panics, after cleaning up, if the
    /// host lacks what the lab needs.
    pub fn new(tag: &str, weights: &[u32]) -> Lab {
        Lab::with(tag, weights, Options::default())
    }

    /// Builds the topology with one backend per weight, varied by `opts`.
    pub fn with(tag: &str, weights: &[u32], opts: Options) -> Lab {
        let tag = format!("{tag}-{}", std::process::id());
        let first_remote = weights.len() - opts.second_segment.min(weights.len());
        let dir = std::env::temp_dir().join(format!("dsr-lab-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("lab temp dir");
        let mut lab = Lab {
            switch_ns: format!("{tag}-sw"),
            client_ns: format!("{tag}-client"),
            lb_ns: format!("{tag}-lb"),
            lb2_ns: format!("{tag}-lb2"),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| Backend {
                    ns: format!("{tag}-b{}", i + 1),
                    ip: if i >= first_remote {
                        Ipv4Addr::new(198, 18, 1, 11 + i as u8)
                    } else {
                        backend_ip(i)
                    },
                    mac: backend_mac(i),
                    name: backend_name(i),
                    weight,
                })
                .collect(),
            router_ns: format!("{tag}-rtr"),
            tag,
            opts,
            client_ip: if opts.routed_client_mtu.is_some() {
                ROUTED_CLIENT_IP
            } else {
                CLIENT_IP
            },
            dir,
            services: Vec::new(),
            health: Vec::new(),
            moved: Vec::new(),
            agents: Vec::new(),
            extra_ns: Vec::new(),
            dsr: None,
            config_text: None,
            wrapper: Vec::new(),
            _peer_xdp: None,
            _peer_xdp2: None,
            _peer_xdp_lb2: None,
            dsr2: None,
            predicted: Default::default(),
        };
        if let Err(e) = lab.build() {
            panic!("building the lab {}: {e:#}", lab.tag);
        }
        lab
    }

    fn namespaces(&self) -> Vec<String> {
        let mut v = vec![
            self.switch_ns.clone(),
            self.client_ns.clone(),
            self.lb_ns.clone(),
        ];
        if self.opts.routed_client_mtu.is_some() || self.opts.second_segment > 0 {
            v.push(self.router_ns.clone());
        }
        if self.opts.pair {
            v.push(self.lb2_ns.clone());
        }
        v.extend(self.backends.iter().map(|b| b.ns.clone()));
        v.extend(self.extra_ns.iter().cloned());
        v
    }

    fn build(&mut self) -> Result<()> {
        for tool in ["ip", "ethtool", "nsenter"] {
            if Command::new("which")
                .arg(tool)
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
            {
                bail!("`{tool}` is missing: `cargo xtask test` installs what the lab needs");
            }
        }
        for ns in self.namespaces() {
            let _ = sh(&["ip", "netns", "del", &ns]);
            sh(&["ip", "netns", "add", &ns])?;
            // No duplicate address detection: the lab's addresses are unique, and until DAD
            // ends a link-local address cannot source neighbour solicitations.
            for k in [
                "net.ipv6.conf.all.accept_dad",
                "net.ipv6.conf.default.accept_dad",
            ] {
                write_sysctl(&ns, k, "0")?;
            }
        }
        let sw = self.switch_ns.clone();
        sh(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        // Bridged frames must not detour through iptables (only present with br_netfilter).
        for table in ["iptables", "ip6tables", "arptables"] {
            let _ = write_sysctl(&sw, &format!("net.bridge.bridge-nf-call-{table}"), "0");
        }

        let client = self.client_ns.clone();
        let lb = self.lb_ns.clone();
        self.plug(&lb, "port-lb", LB_MAC, LB_IP)?;
        if self.opts.pair {
            let lb2 = self.lb2_ns.clone();
            self.plug(&lb2, "port-lb2", LB2_MAC, LB2_IP)?;
            self._peer_xdp_lb2 = Some(attach_xdp_pass(&sw, "port-lb2")?);
        }
        let first_remote = self.backends.len() - self.opts.second_segment.min(self.backends.len());
        if self.opts.second_segment > 0 {
            sh(&["ip", "-n", &sw, "link", "add", "br1", "type", "bridge"])?;
            sh(&["ip", "-n", &sw, "link", "set", "br1", "up"])?;
            self.plug_into(
                "br1",
                &lb,
                "eth1",
                "port-lb1",
                LB_MAC2,
                Ipv4Addr::new(198, 18, 1, 2),
            )?;
            // XDP_REDIRECT into eth1 is delivered only if its peer runs XDP (PLATFORM.md #1).
            self._peer_xdp2 = Some(attach_xdp_pass(&sw, "port-lb1")?);
        }
        let router = self.router_ns.clone();
        if self.opts.routed_client_mtu.is_some() || self.opts.second_segment > 0 {
            self.plug(&router, "port-rtr", [0x02, 0, 0, 0, 0, 0xfe], ROUTER_IP)?;
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.eth0.rp_filter", "0"),
            ] {
                write_sysctl(&router, k, v)?;
            }
        }
        match self.opts.routed_client_mtu {
            None => {
                self.plug(&client, "port-client", CLIENT_MAC, CLIENT_IP)?;
                // The client reaches VIP6 through the load balancer: backends hold VIP6 too
                // and, IPv6 having no arp_ignore, would answer a neighbour solicitation for it.
                sh(&[
                    "ip",
                    "-n",
                    &client,
                    "-6",
                    "route",
                    "add",
                    &format!("{VIP6}/128"),
                    "via",
                    &LB6.to_string(),
                ])?;
            }
            Some(mtu) => {
                // client eth0 (MTU 1500) <-> router eth1 (MTU `mtu`): the client advertises
                // an MSS for 1500 bytes, the router cannot forward that much towards it.
                sh(&[
                    "ip", "-n", &router, "link", "add", "eth1", "type", "veth", "peer", "name",
                    IFACE, "netns", &client,
                ])?;
                sh(&[
                    "ip",
                    "-n",
                    &client,
                    "link",
                    "set",
                    IFACE,
                    "address",
                    &mac_str(CLIENT_MAC),
                ])?;
                sh(&[
                    "ip",
                    "-n",
                    &client,
                    "addr",
                    "add",
                    &format!("{ROUTED_CLIENT_IP}/24"),
                    "dev",
                    IFACE,
                ])?;
                sh(&["ip", "-n", &client, "link", "set", IFACE, "up"])?;
                sh(&["ip", "-n", &client, "link", "set", "lo", "up"])?;
                sh(&[
                    "ip",
                    "-n",
                    &client,
                    "route",
                    "add",
                    "default",
                    "via",
                    "198.19.0.254",
                ])?;
                sh(&[
                    "ip",
                    "-n",
                    &router,
                    "link",
                    "set",
                    "eth1",
                    "mtu",
                    &mtu.to_string(),
                ])?;
                sh(&[
                    "ip",
                    "-n",
                    &router,
                    "addr",
                    "add",
                    "198.19.0.254/24",
                    "dev",
                    "eth1",
                ])?;
                sh(&["ip", "-n", &router, "link", "set", "eth1", "up"])?;
                write_sysctl(&router, "net.ipv4.conf.eth1.rp_filter", "0")?;
                sh(&[
                    "ip",
                    "-n",
                    &lb,
                    "route",
                    "add",
                    "198.19.0.0/24",
                    "via",
                    &ROUTER_IP.to_string(),
                ])?;
            }
        }
        if self.opts.second_segment > 0 {
            self.plug_into(
                "br1",
                &router,
                "eth2",
                "port-rtr1",
                [0x02, 0, 0, 0, 1, 0xfe],
                Ipv4Addr::new(198, 18, 1, 253),
            )?;
            write_sysctl(&router, "net.ipv4.conf.eth2.rp_filter", "0")?;
        }
        let backends: Vec<(String, [u8; 6], Ipv4Addr, String)> = self
            .backends
            .iter()
            .map(|b| (b.ns.clone(), b.mac, b.ip, b.name.clone()))
            .collect();
        for (i, (ns, mac, ip, name)) in backends.into_iter().enumerate() {
            if i >= first_remote {
                self.plug_into("br1", &ns, IFACE, &format!("port-b{}", i + 1), mac, ip)?;
                // Direct replies leave through the router joining the segments.
                sh(&[
                    "ip",
                    "-n",
                    &ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    "198.18.1.253",
                ])?;
            } else {
                self.plug(&ns, &format!("port-b{}", i + 1), mac, ip)?;
                if self.opts.routed_client_mtu.is_some() {
                    sh(&[
                        "ip",
                        "-n",
                        &ns,
                        "route",
                        "add",
                        "198.19.0.0/24",
                        "via",
                        &ROUTER_IP.to_string(),
                    ])?;
                }
            }
            // The VIP on lo, and no ARP answers for it: the LB must get the VIP's traffic.
            // Done by `dsr realserver setup`, so every lab test also proves that it works.
            self.realserver_setup(&ns, IpAddr::V4(VIP), &format!("b{}", i + 1))?;
            if i < first_remote {
                self.realserver_setup(&ns, IpAddr::V6(VIP6), &format!("b{}", i + 1))?;
            }
            self.services.push(Some(start_service(&ns, &name)?));
            self.health.push(Some(start_health(&ns, ip, &name)?));
        }
        // The LB holds the VIP on its interface, as keepalived's virtual_ipaddress does: the
        // client's ARP for the VIP is answered by the LB.
        if !self.opts.pair {
            sh(&[
                "ip",
                "-n",
                &lb,
                "addr",
                "add",
                &format!("{VIP}/32"),
                "dev",
                IFACE,
            ])?;
        }
        // veth hands XDP_TX frames to its peer only if the peer runs XDP (PLATFORM.md #1).
        self._peer_xdp = Some(attach_xdp_pass(&sw, "port-lb")?);
        // veth offloads TX checksums; XDP loses the partial-checksum state (PLATFORM.md #2).
        sh(&[
            "ip", "netns", "exec", &client, "ethtool", "-K", IFACE, "tx", "off",
        ])?;
        Ok(())
    }

    /// `dsr realserver setup --vip VIP` in namespace `ns`, its record kept in the lab
    /// directory under `host`'s name.
    fn realserver_setup(&self, ns: &str, vip: IpAddr, host: &str) -> Result<()> {
        let family = if vip.is_ipv4() { "" } else { "6" };
        let record = self.dir.join(format!("realserver{family}-{host}.json"));
        let bin = dsr_bin();
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            &bin.to_string_lossy(),
            "realserver",
            "setup",
            "--vip",
            &vip.to_string(),
            "--state",
            &record.to_string_lossy(),
        ])?;
        Ok(())
    }

    /// Creates a veth from the switch's bridge into `ns` as eth0 with `mac` and `ip`.
    fn plug(&self, ns: &str, port: &str, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
        self.plug_into("br0", ns, IFACE, port, mac, ip)?;
        // The same host on the segment's IPv6 side (no duplicate address detection: the lab
        // knows its addresses are unique, and DAD would delay them by seconds).
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/64", v6_of(ip)),
            "dev",
            IFACE,
            "nodad",
        ])?;
        Ok(())
    }

    /// Creates a veth from the switch's `bridge` into `ns` as `ifname` with `mac` and `ip`/24.
    fn plug_into(
        &self,
        bridge: &str,
        ns: &str,
        ifname: &str,
        port: &str,
        mac: [u8; 6],
        ip: Ipv4Addr,
    ) -> Result<()> {
        let sw = &self.switch_ns;
        sh(&[
            "ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns",
            ns,
        ])?;
        sh(&["ip", "-n", sw, "link", "set", port, "master", bridge, "up"])?;
        sh(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            ifname,
            "address",
            &mac_str(mac),
        ])?;
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/{SUBNET_PREFIX}"),
            "dev",
            ifname,
        ])?;
        sh(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The top of every lab config: this lab's instance (own pin directory, socket and state
    /// directory), its interface, small maps.
    pub fn header(&self) -> String {
        format!(
            "instance = \"{}\"\ninterface = \"{IFACE}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\
             max_vips = 8\nmax_backends = 64\nflow_table_size = 65536\n",
            self.tag,
            self.socket().display(),
            self.dir.join("state").display()
        )
    }

    /// Deletes the load balancer's own interface (eth0): an unplugged NIC, a reloaded driver.
    /// Its XDP link goes with it.
    pub fn delete_main_interface(&mut self) -> Result<()> {
        self._peer_xdp = None;
        sh(&["ip", "-n", &self.lb_ns, "link", "del", IFACE])?;
        Ok(())
    }

    /// Creates eth0 again as the lab first did: same name, MAC and addresses (the VIP too),
    /// a new index.
    pub fn create_main_interface(&mut self) -> Result<()> {
        let (sw, lb) = (self.switch_ns.clone(), self.lb_ns.clone());
        self.plug(&lb, "port-lb", LB_MAC, LB_IP)?;
        sh(&[
            "ip",
            "-n",
            &lb,
            "addr",
            "add",
            &format!("{VIP}/32"),
            "dev",
            IFACE,
        ])?;
        self._peer_xdp = Some(attach_xdp_pass(&sw, "port-lb")?);
        Ok(())
    }

    /// Deletes the load balancer's second interface (eth1: an unplugged NIC, a reloaded
    /// driver). The kernel deletes its devmap entries with it.
    pub fn delete_second_interface(&mut self) -> Result<()> {
        self._peer_xdp2 = None;
        sh(&["ip", "-n", &self.lb_ns, "link", "del", "eth1"])?;
        Ok(())
    }

    /// Creates eth1 again with the same name, MAC and address (and so a new index).
    pub fn create_second_interface(&mut self) -> Result<()> {
        let (sw, lb) = (self.switch_ns.clone(), self.lb_ns.clone());
        self.plug_into(
            "br1",
            &lb,
            "eth1",
            "port-lb1",
            LB_MAC2,
            Ipv4Addr::new(198, 18, 1, 2),
        )?;
        self._peer_xdp2 = Some(attach_xdp_pass(&sw, "port-lb1")?);
        Ok(())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("dsr.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("dsr.toml")
    }

    /// The default config: a TCP and a UDP VIP over every backend, no health checks.
    pub fn config(&self) -> String {
        let mut c = self.header();
        for (port, proto) in [(TCP_PORT, "tcp"), (UDP_PORT, "udp")] {
            c += &format!(
                "\n[[vip]]\nname = \"{proto}-{port}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n"
            );
            for b in &self.backends {
                c += &format!(
                    "  [[vip.backend]]\n  address = \"{}\"\n  weight = {}\n",
                    b.ip, b.weight
                );
            }
        }
        c
    }

    /// Writes `config` as this lab's config (the second node's is made from it) without
    /// starting anything.
    pub fn write_config(&mut self, config: &str) -> Result<()> {
        fs::write(self.config_path(), config)?;
        self.config_text = Some(config.to_owned());
        Ok(())
    }

    /// Starts `dsr run` with the default config (see [`Lab::start_dsr_with`]).
    pub fn start_dsr(&mut self, inherit_output: bool) -> Result<()> {
        let config = self.config();
        self.start_dsr_with(&config, inherit_output)
    }

    /// Writes `config` and starts `dsr run` in the LB namespace (only the network namespace
    /// switched, so it sees the host's bpffs), waiting until it has attached.
    /// `inherit_output` shows its log on our stdout/stderr (the demo); otherwise it is
    /// appended to `dsr.log` in the lab directory.
    pub fn start_dsr_with(&mut self, config: &str, inherit_output: bool) -> Result<()> {
        fs::write(self.config_path(), config)?;
        self.config_text = Some(config.to_owned());
        self.restart_dsr(inherit_output)
    }

    /// Starts `dsr run` again with the config last written (after a stop or a kill).
    pub fn restart_dsr(&mut self, inherit_output: bool) -> Result<()> {
        let log = (!inherit_output).then(|| self.dir.join("dsr.log"));
        let child = spawn_dsr(
            &self.lb_ns,
            &self.wrapper,
            &self.config_path(),
            log.as_deref(),
            &self.socket(),
        )?;
        self.dsr = Some(child);
        Ok(())
    }

    /// The second load balancer's config: the first one's, as its own instance.
    pub fn config2(&self) -> String {
        let text = self.config_text.clone().unwrap_or_else(|| self.config());
        text.replacen(
            &format!("instance = \"{}\"", self.tag),
            &format!("instance = \"{}-2\"", self.tag),
            1,
        )
        .replacen(
            &self.socket().display().to_string(),
            &self.dir.join("dsr2.sock").display().to_string(),
            1,
        )
        .replacen(
            &self.dir.join("state").display().to_string(),
            &self.dir.join("state2").display().to_string(),
            1,
        )
    }

    /// Starts `dsr run` on the second load balancer with [`Lab::config2`].
    pub fn start_dsr2(&mut self) -> Result<()> {
        let config = self.config2();
        self.start_dsr2_with(&config)
    }

    /// Starts the second node with `config` (made from [`Lab::config2`] by the caller).
    pub fn start_dsr2_with(&mut self, text: &str) -> Result<()> {
        let config = self.dir.join("dsr2.toml");
        fs::write(&config, text)?;
        let child = spawn_dsr(
            &self.lb2_ns,
            &self.wrapper,
            &config,
            Some(&self.dir.join("dsr2.log")),
            &self.dir.join("dsr2.sock"),
        )?;
        self.dsr2 = Some(child);
        Ok(())
    }

    /// `dsr compare` of both nodes' `dsr status --json`: the same seed, sizes and slots.
    pub fn assert_same_tables(&self) {
        let (a, b) = (self.dir.join("lb1.json"), self.dir.join("lb2.json"));
        for (path, (ok, out)) in [
            (&a, self.dsr(&["status", "--json"])),
            (&b, self.dsr2(&["status", "--json"])),
        ] {
            assert!(ok, "{out}");
            fs::write(path, out).unwrap();
        }
        let out = Command::new(dsr_bin())
            .arg("compare")
            .args([&a, &b])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the nodes' tables differ: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Kills the second load balancer's dsr with SIGKILL; its pinned data path stays.
    pub fn kill_dsr2(&mut self) {
        if let Some(mut child) = self.dsr2.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs the `dsr` CLI against the second load balancer's daemon.
    pub fn dsr2(&self, args: &[&str]) -> (bool, String) {
        run_cli(args, &self.dir.join("dsr2.toml"))
    }

    /// Stops dsr with SIGTERM and waits for it; returns its exit status. The data path stays.
    pub fn stop_dsr(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_dsr(libc::SIGTERM)
    }

    /// Kills dsr with SIGKILL (a crash): nothing of it runs on, the pinned data path stays.
    pub fn kill_dsr(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_dsr(libc::SIGKILL)
    }

    fn signal_dsr(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let mut child = self.dsr.take()?;
        // `nsenter` execs dsr, so the child is dsr itself.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Runs the `dsr` CLI against this lab's daemon (`--config` added); returns
    /// (success, stdout + stderr).
    pub fn dsr(&self, args: &[&str]) -> (bool, String) {
        run_cli(args, &self.config_path())
    }

    /// `dsr status --json`, parsed.
    pub fn status(&self) -> dsr::control::Status {
        let (ok, out) = self.dsr(&["status", "--json"]);
        assert!(ok, "dsr status failed: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
    }

    /// Everything a change could alter in `dsr status`: the whole spec and runtime state of
    /// every VIP and backend (health, since-times, weights, roles, MACs, table membership) and
    /// the count of runtime differences, without the counters and rates that traffic moves.
    /// (The maps themselves are checked by the frame-table tests; the journal only through
    /// this count.)
    pub fn state_of(&self) -> serde_json::Value {
        let status = self.status();
        let mut v = serde_json::to_value(&status.vips).unwrap();
        fn strip(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    // Traffic and the flow-table counts move with the clients, not with
                    // changes of the state.
                    m.remove("traffic");
                    m.remove("tracked_flows");
                    m.values_mut().for_each(strip);
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        strip(&mut v);
        serde_json::json!({ "vips": v, "runtime_changes": status.runtime_changes })
    }

    /// Health of backend `i` in VIP `vip` as dsr reports it ("up", "down", ...).
    pub fn health_of(&self, vip: &str, i: usize) -> String {
        let st = self.status();
        let v = st
            .vips
            .iter()
            .find(|v| v.name == vip)
            .unwrap_or_else(|| panic!("no VIP {vip}"));
        let ip = IpAddr::V4(self.backends[i].ip);
        v.backends
            .iter()
            .find(|b| b.address == ip)
            .map(|b| b.health.to_string())
            .unwrap_or_default()
    }

    /// Waits until `cond` holds, up to `deadline`; returns how long it took.
    pub fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        mut cond: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if cond() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {deadline:?} waiting for {what}\n{}",
            self.dsr_log()
        );
    }

    /// Stops backend `i`'s service (TCP and UDP): connections are reset, new ones refused.
    pub fn stop_service(&mut self, i: usize) {
        self.services[i] = None;
    }

    pub fn start_service(&mut self, i: usize) {
        let (ns, name) = (self.backends[i].ns.clone(), self.backends[i].name.clone());
        self.services[i] = Some(start_service(&ns, &name).expect("restart service"));
    }

    /// Moves backend `i`'s address to a new host (a new namespace with another MAC, serving
    /// as `name`), the old host going silent; with `announce` the new host says so with a
    /// gratuitous ARP. Returns the new host's MAC.
    pub fn move_backend_address(
        &mut self,
        i: usize,
        name: &str,
        announce: bool,
    ) -> dsr::spec::model::MacAddr {
        let ip = self.backends[i].ip;
        let old_ns = self.backends[i].ns.clone();
        let ns = format!("{}-moved{}", self.tag, i + 1);
        let mac = [0x02, 0, 0, 0, 0, 0x90 + i as u8];
        let result = (|| -> Result<()> {
            self.stop_service(i);
            sh(&[
                "ip",
                "-n",
                &old_ns,
                "addr",
                "del",
                &format!("{ip}/{SUBNET_PREFIX}"),
                "dev",
                IFACE,
            ])?;
            let _ = sh(&["ip", "netns", "del", &ns]);
            sh(&["ip", "netns", "add", &ns])?;
            self.extra_ns.push(ns.clone());
            self.plug(&ns, &format!("port-m{}", i + 1), mac, ip)?;
            self.realserver_setup(&ns, IpAddr::V4(VIP), &format!("moved{}", i + 1))?;
            self.moved.push(start_service(&ns, name)?);
            if announce {
                send_frame(&ns, IFACE, crate::frames::arp_request(mac, ip, ip))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            panic!("moving {ip}: {e:#}");
        }
        dsr::spec::model::MacAddr(mac)
    }

    /// Turns backend `i`'s health endpoint (HTTP on its own address, port HEALTH_PORT) off
    /// or on, leaving its service alone.
    pub fn set_health(&mut self, i: usize, on: bool) {
        if on {
            let b = &self.backends[i];
            self.health[i] = Some(start_health(&b.ns, b.ip, &b.name).expect("restart health"));
        } else {
            self.health[i] = None;
        }
    }

    /// Starts backend `i`'s load agent on AGENT_PORT, saying `says` until [`Lab::set_agent`].
    pub fn start_agent(&mut self, i: usize, says: &str) {
        self.set_agent(i, says);
        let b = &self.backends[i];
        let path = self.agent_file(i).to_string_lossy().into_owned();
        let addr = SocketAddr::new(IpAddr::V4(b.ip), AGENT_PORT);
        let agent = Threads::start(&b.ns, vec![tcp_listener(addr, serve_agent, path)])
            .expect("start the agent");
        self.agents.push(agent);
    }

    /// What backend `i`'s agent answers from now on (e.g. "50%", "drain", "ready 100%").
    pub fn set_agent(&self, i: usize, says: &str) {
        fs::write(self.agent_file(i), says).expect("write the agent's answer");
    }

    fn agent_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("agent-b{}.txt", i + 1))
    }

    pub fn dsr_log(&self) -> String {
        fs::read_to_string(self.dir.join("dsr.log")).unwrap_or_default()
    }

    /// One TCP exchange with the VIP from the client, from source port `sport` (0 = any):
    /// sends `requests` lines on one connection, returns the answers.
    pub fn tcp_request(&self, sport: u16, requests: usize) -> Result<Vec<String>> {
        let client = self.client_ip;
        in_netns(&self.client_ns, move || -> Result<Vec<String>> {
            let stream = connect_from(client, sport)?;
            let mut stream = stream;
            let mut answers = Vec::new();
            let mut pending = String::new();
            for _ in 0..requests {
                stream.write_all(b"who are you?\n")?;
                let mut buf = [0u8; 256];
                while !pending.contains('\n') {
                    let n = stream.read(&mut buf).context("reading the answer")?;
                    if n == 0 {
                        bail!("connection closed before the answer");
                    }
                    pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                let (line, rest) = pending.split_once('\n').unwrap();
                answers.push(line.to_owned());
                pending = rest.to_owned();
            }
            Ok(answers)
        })
    }

    /// Asks the VIP over TCP for `size` bytes ("big N" request) and returns how many arrived
    /// before the server closed; fails if the transfer stalls for `IO_TIMEOUT`.
    pub fn tcp_download(&self, sport: u16, size: usize) -> Result<usize> {
        let client = self.client_ip;
        in_netns(&self.client_ns, move || -> Result<usize> {
            let mut stream = connect_from(client, sport)?;
            stream.write_all(format!("big {size}\n").as_bytes())?;
            let mut got = 0;
            let mut buf = vec![0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => return Ok(got),
                    Ok(n) => got += n,
                    Err(e) => bail!("transfer stalled after {got} of {size} bytes: {e}"),
                }
            }
        })
    }

    /// One UDP datagram of `size` bytes to the VIP from `sport`, fragmented by the client's
    /// kernel if larger than the MTU; returns the answer ("<name> <bytes received>").
    pub fn udp_big_request(&self, sport: u16, size: usize) -> Result<String> {
        let client = self.client_ip;
        in_netns(&self.client_ns, move || -> Result<String> {
            let sock = client_socket((client, sport).into())?;
            // Let the kernel fragment instead of refusing (EMSGSIZE) a datagram over the MTU.
            let dont: i32 = libc::IP_PMTUDISC_DONT;
            // SAFETY: setting an int socket option on a socket we own.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&dont as *const i32).cast(),
                    4,
                )
            };
            sock.connect((VIP, UDP_PORT))?;
            sock.set_read_timeout(Some(IO_TIMEOUT))?;
            sock.send(&vec![b'x'; size])?;
            let mut buf = [0u8; 256];
            let n = sock.recv(&mut buf).context("no UDP answer")?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    }

    /// Opens a TCP connection to the VIP from `sport` and keeps it for more requests.
    pub fn tcp_connect(&self, sport: u16) -> Result<Conn> {
        let client = self.client_ip;
        let stream = in_netns(&self.client_ns, move || connect_from(client, sport))?;
        Ok(Conn {
            stream,
            pending: String::new(),
        })
    }

    /// Index of the backend whose name is `answer`.
    pub fn index_of(&self, answer: &str) -> usize {
        self.backends
            .iter()
            .position(|b| b.name == answer)
            .unwrap_or_else(|| panic!("{answer:?} is no backend's name"))
    }

    /// One UDP request per source port, from one thread in the client namespace; each
    /// result is who answered (or the error).
    pub fn udp_requests(&self, sports: Vec<u16>) -> Vec<Result<String>> {
        let client = self.client_ip;
        in_netns(&self.client_ns, move || {
            sports.into_iter().map(|p| udp_once(client, p)).collect()
        })
    }

    /// One UDP datagram to VIP6 from the client's IPv6 address and `sport`.
    pub fn udp6_request(&self, sport: u16) -> Result<String> {
        in_netns(&self.client_ns, move || -> Result<String> {
            let sock = client_socket((CLIENT6, sport).into())?;
            sock.connect((VIP6, UDP_PORT))?;
            sock.set_read_timeout(Some(Duration::from_millis(500)))?;
            sock.send(b"who are you?")?;
            let mut buf = [0u8; 256];
            let n = sock.recv(&mut buf).context("no UDP answer")?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    }

    /// One TCP exchange with VIP6 from the client's IPv6 address and `sport`.
    pub fn tcp6_request(&self, sport: u16) -> Result<String> {
        in_netns(&self.client_ns, move || -> Result<String> {
            let sock = std::net::TcpStream::connect_timeout(
                &SocketAddr::new(IpAddr::V6(VIP6), TCP_PORT),
                IO_TIMEOUT,
            );
            // std cannot bind before connecting; the source port is the kernel's choice here,
            // so callers identify the flow from the returned stream instead.
            let _ = sport;
            let mut s = sock.context("connect to VIP6")?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.write_all(b"who are you?\n")?;
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf)?;
            let local = s.local_addr()?.port();
            Ok(format!(
                "{} {local}",
                String::from_utf8_lossy(&buf[..n]).trim()
            ))
        })
    }

    /// One UDP datagram to the VIP from `sport`; returns who answered.
    pub fn udp_request(&self, sport: u16) -> Result<String> {
        let client = self.client_ip;
        in_netns(&self.client_ns, move || udp_once(client, sport))
    }

    /// Index of the backend that dsr must pick for a new flow from the client's `sport` to
    /// the VIP's TCP or UDP port, computed as dsr does (same hash, seed and Maglev table).
    pub fn predict(&self, proto: u8, sport: u16) -> usize {
        let weights: Vec<u32> = self.backends.iter().map(|b| b.weight).collect();
        self.predict_weights(proto, sport, &weights)
    }

    /// Like [`Lab::predict`], for a table built from these weights (0 = not in the table).
    pub fn predict_weights(&self, proto: u8, sport: u16, weights: &[u32]) -> usize {
        let dport = if proto == 6 { TCP_PORT } else { UDP_PORT };
        self.predict_sized(proto, sport, weights, self.table_size_of(dport))
    }

    /// Like [`Lab::predict_weights`], for a table of `size` slots (after a change of the
    /// configured backends, which resizes it).
    pub fn predict_sized(&self, proto: u8, sport: u16, weights: &[u32], size: u32) -> usize {
        self.predict_table(proto, sport, weights, &[], size)
    }

    /// Like [`Lab::predict_weights`] while the backends `standing_by` (indices) are down or
    /// drained: dsr keeps them in the table and lends their slots (`maglev::build_around`).
    pub fn predict_around(
        &self,
        proto: u8,
        sport: u16,
        weights: &[u32],
        standing_by: &[usize],
    ) -> usize {
        let dport = if proto == 6 { TCP_PORT } else { UDP_PORT };
        self.predict_table(
            proto,
            sport,
            weights,
            standing_by,
            self.table_size_of(dport),
        )
    }

    fn predict_table(
        &self,
        proto: u8,
        sport: u16,
        weights: &[u32],
        standing_by: &[usize],
        size: u32,
    ) -> usize {
        let (standby, entries): (Vec<maglev::Entry>, Vec<maglev::Entry>) = self
            .backends
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (b, &weight))| maglev::Entry {
                address: IpAddr::V4(b.ip),
                id: i as u32,
                weight,
            })
            .partition(|e| standing_by.contains(&(e.id as usize)));
        let dport = if proto == 6 { TCP_PORT } else { UDP_PORT };
        let mut cache = self.predicted.borrow_mut();
        let wanted = (weights.to_vec(), standing_by.to_vec(), size);
        let at = match cache.iter().position(|(k, _)| *k == wanted) {
            Some(i) => i,
            None => {
                if cache.len() == 4 {
                    cache.remove(0);
                }
                cache.push((wanted, maglev::build_around(&entries, &standby, size)));
                cache.len() - 1
            }
        };
        let table = &cache[at].1;
        let key = FlowKey::new(self.client_ip.into(), sport, VIP.into(), dport, proto);
        table[(flow_hash(&key, DEFAULT_HASH_SEED) % table.len() as u32) as usize] as usize
    }

    /// The slots dsr gives the lab VIP's table on `dport`, as its config decides them
    /// (`plan::sizing`: the VIP's own or the top-level `table_size`, else from its configured
    /// backends); before a config is written, the default for the lab's backends.
    pub fn table_size_of(&self, dport: u16) -> u32 {
        let default = || {
            dsr::plan::sizing::default_size(
                self.backends.len(),
                dsr_common::TABLE_SLOTS_PER_BACKEND,
                dsr_common::DEFAULT_MAX_TABLE_SLOTS,
            )
        };
        let Some(text) = &self.config_text else {
            return default();
        };
        let model = dsr::spec::toml_file::parse(text, Path::new("dsr.toml"))
            .unwrap_or_else(|e| panic!("the lab's config: {e}"));
        let sizes = model
            .tables
            .sizes(&model.vips)
            .unwrap_or_else(|e| panic!("the lab's config: {}", e.message))
            .sizes;
        model
            .vips
            .iter()
            .zip(sizes)
            .find(|(v, _)| v.addr.address == IpAddr::V4(VIP) && v.addr.port == dport)
            .map_or_else(default, |(_, s)| s)
    }

    pub fn backend_by_name(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// A TCP connection to the VIP held open across requests.
pub struct Conn {
    stream: TcpStream,
    pending: String,
}

impl From<TcpStream> for Conn {
    fn from(stream: TcpStream) -> Conn {
        Conn {
            stream,
            pending: String::new(),
        }
    }
}

impl Conn {
    /// How long an answer may take (IO_TIMEOUT unless set): a failover outlasting it is
    /// not a broken connection.
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    /// Sends one request line; returns who answered.
    pub fn ask(&mut self) -> Result<String> {
        self.stream.write_all(b"who are you?\n")?;
        let mut buf = [0u8; 256];
        while !self.pending.contains('\n') {
            let n = self.stream.read(&mut buf).context("reading the answer")?;
            if n == 0 {
                bail!("connection closed before the answer");
            }
            self.pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let (line, rest) = self.pending.split_once('\n').unwrap();
        let line = line.to_owned();
        self.pending = rest.to_owned();
        Ok(line)
    }
}

/// A client's UDP socket on `addr`. The port of the previous request's socket may still be
/// held for a moment by a child another test thread forked before exec (the fd is closed on
/// exec): binding is retried for up to a second.
fn client_socket(addr: std::net::SocketAddr) -> Result<UdpSocket> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match UdpSocket::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.with_context(|| format!("bind client socket {addr}")),
        }
    }
}

/// One UDP datagram to the VIP from `sport` (in the calling thread's namespace).
fn udp_once(client: Ipv4Addr, sport: u16) -> Result<String> {
    let sock = client_socket((client, sport).into())?;
    sock.connect((VIP, UDP_PORT))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    sock.send(b"who are you?")?;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).context("no UDP answer")?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn connect_from(client: Ipv4Addr, sport: u16) -> Result<TcpStream> {
    connect_with_timeout(client, sport, IO_TIMEOUT)
}

/// A TCP connection to the VIP's TCP port from `client:sport` (in the calling thread's
/// namespace), failing if it is not established within `timeout`.
pub fn connect_with_timeout(client: Ipv4Addr, sport: u16, timeout: Duration) -> Result<TcpStream> {
    // SAFETY: a socket we own, configured and connected with plain syscalls.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let one: i32 = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const i32).cast(),
            4,
        );
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let local = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: sport.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(client.octets()),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&local as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            bail!("bind {client}:{sport}: {}", std::io::Error::last_os_error());
        }
        stream
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    // A connect with a timeout needs the std path: re-wrap through a raw connect.
    let addr = SocketAddr::new(IpAddr::V4(VIP), TCP_PORT);
    connect_timeout(&stream, addr, timeout)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// connect(2) with a deadline on an already bound socket.
fn connect_timeout(stream: &TcpStream, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let SocketAddr::V4(v4) = addr else {
        bail!("IPv4 only")
    };
    let fd = stream.as_raw_fd();
    stream.set_nonblocking(true)?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connecting our own socket to a valid sockaddr_in.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            bail!("connect {addr}: {err}");
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: polling one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if n <= 0 {
            bail!("connect {addr}: timed out after {timeout:?}");
        }
        if let Some(e) = stream.take_error()? {
            bail!("connect {addr}: {e}");
        }
    }
    stream.set_nonblocking(false)?;
    Ok(())
}

/// Loads `xdp_pass` and attaches it to `iface` in namespace `ns`.
fn attach_xdp_pass(ns: &str, iface: &str) -> Result<Ebpf> {
    let iface = iface.to_owned();
    in_netns(ns, move || -> Result<Ebpf> {
        let mut ebpf = Ebpf::load(REFERENCE_OBJECT).context("loading the reference programs")?;
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_pass")
            .ok_or_else(|| anyhow!("xdp_pass missing"))?
            .try_into()?;
        prog.load()?;
        prog.attach(&iface, XdpMode::Driver)
            .with_context(|| format!("attaching xdp_pass to {iface}"))?;
        Ok(ebpf)
    })
}

/// The `dsr` binary under test: $DSR_BIN (set by `cargo xtask test`), else the workspace's
/// target/debug/dsr.
pub fn dsr_bin() -> PathBuf {
    std::env::var_os("DSR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/dsr"))
}

/// Long-lived connections the [`Traffic`] keeps open.
pub const LONG_LIVED: usize = 10;

/// One sample: when, which stream (0..LONG_LIVED: a long-lived connection; LONG_LIVED: a
/// new connection), and whether it was answered.
pub type Sample = (Instant, usize, bool);

/// The client's traffic, in its namespace: each long-lived connection asks once per round,
/// then one new connection asks once; a round every 50 ms.
pub struct Traffic {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Option<String>>>>,
}

impl Traffic {
    pub fn start(lab: &Lab) -> Traffic {
        let conns: Vec<Conn> = (0..LONG_LIVED)
            .map(|i| {
                let conn = lab
                    .tcp_connect(45000 + i as u16)
                    .expect("a long-lived connection");
                // Longer than any failover (keepalived's default adverts take ~3.6 s).
                conn.set_timeout(Duration::from_secs(10)).unwrap();
                conn
            })
            .collect();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, client) = (format!("/run/netns/{}", lab.client_ns), lab.client_ip);
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            in_netns_path(&ns);
            let mut conns: Vec<Option<Conn>> = conns.into_iter().map(Some).collect();
            // Who answered each connection first: a connection must stay on its backend.
            let mut first: Vec<Option<String>> = vec![None; LONG_LIVED];
            // Bounded: at most 3000 rounds (150 s), and new connections from 3000 ports.
            for round in 0..3000u16 {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                for (i, slot) in conns.iter_mut().enumerate() {
                    let Some(conn) = slot else { continue };
                    let answer = conn.ask().ok();
                    let ok = answer.is_some() && (first[i].is_none() || first[i] == answer);
                    if first[i].is_none() {
                        first[i] = answer.clone();
                    }
                    if !ok {
                        eprintln!("connection {i}: {answer:?}, first {:?}", first[i]);
                        *slot = None;
                    }
                    s.lock().unwrap().push((Instant::now(), i, ok));
                }
                let fresh = connect_with_timeout(client, 46000 + round, Duration::from_secs(1))
                    .map(Conn::from)
                    .and_then(|mut c| c.ask());
                s.lock()
                    .unwrap()
                    .push((Instant::now(), LONG_LIVED, fresh.is_ok()));
                std::thread::sleep(Duration::from_millis(50));
            }
            conns
                .iter()
                .zip(first)
                .map(|(c, f)| c.as_ref().and(f))
                .collect()
        });
        Traffic {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Since `from`: the longest gap between answers of any long-lived connection, the
    /// longest of the new connections, and the long-lived connections that broke.
    pub fn since(&self, from: Instant) -> (Duration, Duration, usize) {
        let samples = self.samples.lock().unwrap();
        let mut last = [from; LONG_LIVED + 1];
        let mut gap = [Duration::ZERO; LONG_LIVED + 1];
        let mut broken = 0;
        for &(t, i, ok) in samples.iter().filter(|s| s.0 >= from) {
            if ok {
                gap[i] = gap[i].max(t - last[i]);
                last[i] = t;
            } else if i < LONG_LIVED {
                broken += 1;
            }
        }
        let long = gap[..LONG_LIVED].iter().max().copied().unwrap_or_default();
        (long, gap[LONG_LIVED], broken)
    }

    /// Stops the traffic; returns the long-lived connections still on their first backend.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let kept = self.thread.take().unwrap().join().unwrap();
        kept.iter().filter(|k| k.is_some()).count()
    }
}

/// keepalived (VRRP only) in namespace `ns`, its files `<dir>/keepalived-<name>.*`;
/// stopped with SIGTERM when dropped, so it removes the addresses it added.
pub struct Keepalived {
    child: Option<Child>,
    /// The pid file of its VRRP process (a child of the one we started).
    vrrp_pid: PathBuf,
}

impl Keepalived {
    pub fn start(ns: &str, dir: &Path, name: &str, config: &str) -> Keepalived {
        let file = |ext: &str| dir.join(format!("keepalived-{name}.{ext}"));
        fs::write(file("conf"), config).unwrap();
        // Each keepalived of a namespace needs its own pid files.
        let arg = |ext: &str| file(ext).to_string_lossy().into_owned();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "keepalived"])
            .args(["--dont-fork", "--log-console", "--vrrp"])
            .args(["-f", &arg("conf")])
            .args(["-p", &arg("pid")])
            .args(["-r", &arg("vrrp.pid")])
            .args(["-c", &arg("checkers.pid")])
            .stdout(fs::File::create(file("log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("keepalived (installed by cargo xtask test)");
        Keepalived {
            child: Some(child),
            vrrp_pid: file("vrrp.pid"),
        }
    }

    /// Stops keepalived with SIGTERM (a clean stop: it hands over and removes its addresses)
    /// or kills it with SIGKILL: then its VRRP process dies as it is (its parent's death
    /// would only make it stop cleanly), and its addresses stay behind.
    pub fn signal(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            if signal == libc::SIGKILL {
                let vrrp = fs::read_to_string(&self.vrrp_pid).unwrap_or_default();
                if let Ok(pid) = vrrp.trim().parse::<i32>() {
                    // SAFETY: signalling the VRRP process of the keepalived we started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            // `ip netns exec` execs keepalived, so the child is keepalived itself.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
    }
}

/// A memory cgroup of its own with a limit, for a process started under [`MemoryCgroup::wrapper`]
/// (the kernel charges BPF maps to their creator's cgroup, so map creation fails past the
/// limit). cgroup v2 where the memory controller is there, else v1's memory hierarchy.
/// Removed when dropped (after the processes in it are gone).
pub struct MemoryCgroup {
    pub dir: PathBuf,
}

impl MemoryCgroup {
    pub fn new(name: &str, limit_bytes: u64) -> MemoryCgroup {
        let name = format!("dsr-test-{name}-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_has_memory = fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v2_has_memory {
            // Children of the root may use a controller only once the root hands it down.
            let control = v2.join("cgroup.subtree_control");
            if !fs::read_to_string(&control).is_ok_and(|c| c.contains("memory")) {
                fs::write(&control, "+memory").expect("enabling the memory controller");
            }
            (v2.join(&name), "memory.max")
        } else {
            let v1 = Path::new("/sys/fs/cgroup/memory");
            assert!(
                v1.join("memory.limit_in_bytes").exists(),
                "no memory cgroup controller (neither v2 nor v1) on this host"
            );
            (v1.join(&name), "memory.limit_in_bytes")
        };
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        fs::write(dir.join(limit_file), limit_bytes.to_string())
            .unwrap_or_else(|e| panic!("limiting {}: {e}", dir.display()));
        MemoryCgroup { dir }
    }

    /// A [`Lab::wrapper`] that moves the process into this cgroup before it runs.
    pub fn wrapper(&self) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        vec![
            "sh".into(),
            "-c".into(),
            format!("echo $$ > {} && exec \"$@\"", procs.display()),
            "sh".into(),
        ]
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// bird2 in namespace `ns`, its files `<dir>/bird-<name>.*`; killed when dropped.
pub struct Bird {
    child: Option<Child>,
    pub socket: PathBuf,
}

impl Bird {
    pub fn start(ns: &str, dir: &Path, name: &str, config: &str) -> Bird {
        let file = |ext: &str| dir.join(format!("bird-{name}.{ext}"));
        fs::write(file("conf"), config).unwrap();
        let arg = |ext: &str| file(ext).to_string_lossy().into_owned();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-f"])
            .args(["-c", &arg("conf")])
            .args(["-s", &arg("ctl")])
            .args(["-P", &arg("pid")])
            .stdout(fs::File::create(file("log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("bird (installed by cargo xtask test)");
        Bird {
            child: Some(child),
            socket: file("ctl"),
        }
    }

    /// `birdc -s <socket> args...`, its output.
    pub fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn signal(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child (`ip netns exec` execs bird).
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Whether `addr` is on eth0 in namespace `ns` (keepalived holds it while MASTER).
pub fn holds_address(ns: &str, addr: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "-4", "addr", "show", "dev", IFACE])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/"))
}

/// Runs the `dsr` CLI with `--config config`; returns (success, stdout + stderr).
fn run_cli(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(dsr_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("running dsr");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Starts `dsr run --config config` in namespace `ns` (only the network namespace switched,
/// so it sees the host's bpffs), its output appended to `log` (or ours), and waits until it
/// has attached.
fn spawn_dsr(
    ns: &str,
    wrapper: &[String],
    config: &Path,
    log: Option<&Path>,
    socket: &Path,
) -> Result<Child> {
    let seen = log
        .and_then(|l| fs::read_to_string(l).ok())
        .map(|l| l.len())
        .unwrap_or(0);
    let bin = dsr_bin();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .args(wrapper)
        .arg(&bin)
        .args(["run", "--config"])
        .arg(config);
    if let Some(log) = log {
        let f = fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdout(f.try_clone()?).stderr(f);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let read_log = || {
        log.and_then(|l| fs::read_to_string(l).ok())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = match log {
            // No log to read: wait for the control socket.
            None => std::os::unix::net::UnixStream::connect(socket).is_ok(),
            Some(_) => read_log()
                .get(seen..)
                .is_some_and(|t| t.contains("control socket")),
        };
        if ready {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!("dsr exited with {status}:\n{}", read_log());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("dsr did not start within 15 s:\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_dsr();
        if let Some(mut child) = self.dsr2.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        // The second node's pins and records, also after it was killed.
        if self.opts.pair {
            let instance = format!("{}-2", self.tag);
            let _ = dsr::datapath::remove_pinned(&dsr::datapath::pin_dir(&instance));
            dsr::runtime::instance::remove_record(&instance);
            let _ = fs::remove_file(dsr::runtime::instance::lock_path(&instance));
        }
        // SIGTERM leaves the data path pinned; remove this lab's instance for good.
        let _ = dsr::datapath::remove_pinned(&dsr::datapath::pin_dir(&self.tag));
        // And its record and lock in /run/dsr, which outlive a daemon on purpose.
        dsr::runtime::instance::remove_record(&self.tag);
        let _ = fs::remove_file(dsr::runtime::instance::lock_path(&self.tag));
        self.services.clear();
        self.health.clear();
        self.moved.clear();
        self.agents.clear();
        self._peer_xdp = None;
        self._peer_xdp2 = None;
        self._peer_xdp_lb2 = None;
        for ns in self.namespaces() {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
