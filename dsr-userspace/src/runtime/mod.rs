//! What is true now: the runtime state and its decisions (`state`), health checks
//! (`health`), neighbour resolution (`neighbour`), the one-daemon-per-instance lock
//! (`instance`), what is saved across restarts (`persistence`), what dsr tells VRRP and
//! routing daemons (`announce`) and what they tell it (`vrrp`), and the commands run at each
//! change of a VIP's state (`notify`); the flow state exchanged with the other load
//! balancers (`sync`); load-aware weights (`load`) from the backends' agents (`agent`).

pub mod agent;
pub mod announce;
pub mod health;
pub mod instance;
pub mod load;
pub mod neighbour;
pub mod notify;
pub mod persistence;
pub mod state;
pub mod sync;
pub mod vrrp;

/// Milliseconds since the Unix epoch (status and saved state carry times so).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Writes `path` whole or not at all: beside it first, then renamed over it. A failed write
/// removes what it left (on a full disk, that holds on to the space that ran out).
pub fn write_atomic(path: &std::path::Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::write(&tmp, contents)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A local HTTP-ish server for the checks' and agents' tests: each connection's first read
/// (the request, as text) goes to `handle` with the connection, which answers as it likes.
#[cfg(test)]
pub(crate) async fn test_server<F, Fut>(handle: F) -> u16
where
    F: Fn(tokio::net::TcpStream, String) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                handle(s, req).await
            });
        }
    });
    port
}
