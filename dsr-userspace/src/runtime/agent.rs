//! The agent check: HAProxy's `agent-check` text protocol, spoken to a small endpoint on
//! each backend that reports its own load (keepalived's MISC_CHECK misc_dynamic does the same
//! with a script's exit code).
//!
//! dsr connects to the backend's address at the agent port, sends `agent_send` if one is set,
//! and reads one line (up to 512 bytes, a newline or the end of the connection). The line is
//! words separated by spaces, tabs or commas; anything after `#` is a description:
//! - `75%`: the weight, as a percentage of the configured weight (`0%` drains);
//! - `drain`: no new flows (established ones stay); `maint`: the same, as maintenance;
//!   `ready`: ends both;
//! - `down` (also `fail`, `stopped`): down, as a failed health check; `up`: ends it;
//! - `maxconn:N` and other words HAProxy knows are accepted and have no effect here.
//!
//! As in HAProxy, what the agent says stays until it says otherwise, and an agent that
//! cannot be reached changes nothing: the health check decides whether a backend is alive.

use std::{net::SocketAddr, time::SystemTime};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::spec::model::AgentSpec;

/// Longest answer read: an agent line is a few words.
const MAX_REPLY: usize = 512;

/// The administrative state an agent set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    #[default]
    Ready,
    Drain,
    Maint,
}

/// What a backend's agent has said so far (each word stays until another replaces it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Said {
    /// The weight in percent of the configured weight; `None`: never said (100%).
    pub percent: Option<u32>,
    pub admin: Admin,
    /// The agent said `down` (or `fail`, `stopped`) and not `up` since.
    pub down: bool,
}

impl Said {
    /// Takes one answer. Returns the words it did not understand (they change nothing).
    pub fn take(&mut self, line: &str) -> Vec<String> {
        let mut unknown = Vec::new();
        let words = line.split('#').next().unwrap_or("");
        for word in words
            .split([' ', '\t', ',', '\r', '\n'])
            .filter(|w| !w.is_empty())
        {
            let lower = word.to_ascii_lowercase();
            match lower.as_str() {
                "ready" => self.admin = Admin::Ready,
                "drain" => self.admin = Admin::Drain,
                "maint" => self.admin = Admin::Maint,
                "up" => self.down = false,
                "down" | "fail" | "stopped" => self.down = true,
                w if w.starts_with("maxconn:") => {}
                w => match w.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    // HAProxy's weights go up to 256.
                    Some(p) => self.percent = Some(p.min(256)),
                    None => unknown.push(word.to_owned()),
                },
            }
        }
        unknown
    }

    /// No new flows because of what the agent said, and why.
    pub fn blocks(&self) -> Option<&'static str> {
        if self.down {
            Some("agent says down")
        } else if self.admin == Admin::Maint {
            Some("agent says maint")
        } else if self.admin == Admin::Drain {
            Some("agent says drain")
        } else if self.percent == Some(0) {
            Some("agent says 0%")
        } else {
            None
        }
    }
}

/// What an agent has said, what stops new flows first: "drain (no new flows), weight 100%
/// (none said)", "up, weight 75%".
pub fn describe(said: &Said) -> String {
    let state = match (said.down, said.admin) {
        (true, _) => "down (as a failed health check)",
        (false, Admin::Drain) => "drain (no new flows)",
        (false, Admin::Maint) => "maint (no new flows)",
        (false, Admin::Ready) if said.percent == Some(0) => "0% (no new flows)",
        (false, Admin::Ready) => "up",
    };
    let weight = said
        .percent
        .map_or("100% (none said)".to_owned(), |p| format!("{p}%"));
    format!("{state}, weight {weight}")
}

/// One agent answer, or why there was none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// The line, trimmed (`None`: not reached or no answer).
    pub line: Option<String>,
    /// "connect 198.18.0.11:5555: connection refused", "timed out after 1s", or empty.
    pub error: String,
    #[serde(with = "crate::runtime::health::unix_ms")]
    pub at: SystemTime,
}

/// Asks the agent once, bounded by the spec's timeout.
pub async fn ask(target: SocketAddr, spec: &AgentSpec) -> Reading {
    let asked = async {
        match &spec.path {
            Some(path) => http_exchange(target, path).await,
            None => exchange(target, spec.send.as_deref()).await,
        }
    };
    let outcome = tokio::time::timeout(spec.timeout, asked).await;
    let (line, error) = match outcome {
        Ok(Ok(line)) => (Some(line), String::new()),
        Ok(Err(e)) => (None, e),
        Err(_) => (None, format!("timed out after {:?}", spec.timeout)),
    };
    Reading {
        line,
        error,
        at: SystemTime::now(),
    }
}

async fn exchange(target: SocketAddr, send: Option<&str>) -> Result<String, String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    if let Some(s) = send {
        stream
            .write_all(s.as_bytes())
            .await
            .map_err(|e| format!("sending to {target}: {e}"))?;
    }
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 128];
    while buf.len() < MAX_REPLY && !buf.contains(&b'\n') {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading from {target}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = &line[..line.len().min(MAX_REPLY)];
    let text = String::from_utf8_lossy(line).trim().to_owned();
    if text.is_empty() {
        return Err(format!("{target} closed without an answer"));
    }
    Ok(text)
}

/// The HTTP agent: `GET path`, and the first line of a 200 answer's body is the agent's
/// line (read up to its newline or 512 bytes, not to the end of a streaming body). Another
/// status is no answer (an agent that cannot say changes nothing).
async fn http_exchange(target: SocketAddr, path: &str) -> Result<String, String> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, target.to_string())
        .header(hyper::header::USER_AGENT, "dsr-agent-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP request: {e}"))?;
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection task ends with this ask, however it ends (also when the timeout
    // drops this future).
    struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP GET {path}: {e}"))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(format!("HTTP GET {path}: status {status}, expected 200"));
    }
    let mut body = response.into_body();
    let mut line = Vec::new();
    while line.len() < MAX_REPLY && !line.contains(&b'\n') {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(format!("HTTP GET {path} body: {e}")),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    line.extend_from_slice(data);
                }
            }
        }
    }
    let first = line.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let text = String::from_utf8_lossy(&first[..first.len().min(MAX_REPLY)])
        .trim()
        .to_owned();
    if text.is_empty() {
        return Err(format!("HTTP GET {path}: an empty answer"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn words_stay_until_replaced() {
        let mut s = Said::default();
        assert!(s.take("75%").is_empty());
        assert_eq!(s.percent, Some(75));
        assert_eq!(s.blocks(), None);
        assert_eq!(describe(&s), "up, weight 75%");
        s.take("drain # deploying");
        assert_eq!((s.admin, s.percent), (Admin::Drain, Some(75)));
        assert_eq!(s.blocks(), Some("agent says drain"));
        assert_eq!(describe(&s), "drain (no new flows), weight 75%");
        assert_eq!(
            describe(&Said {
                admin: Admin::Drain,
                ..Said::default()
            }),
            "drain (no new flows), weight 100% (none said)",
            "what stops new flows comes before the weight"
        );
        s.take("ready,100%");
        assert_eq!((s.admin, s.percent), (Admin::Ready, Some(100)));
        s.take("DOWN\tmaint");
        assert!(s.down);
        assert_eq!(s.blocks(), Some("agent says down"));
        assert_eq!(describe(&s), "down (as a failed health check), weight 100%");
        s.take("up");
        assert_eq!(s.blocks(), Some("agent says maint"));
        s.take("ready 0%");
        assert_eq!(s.blocks(), Some("agent says 0%"));
        assert_eq!(s.take("maxconn:30 50% bogus 9x%"), vec!["bogus", "9x%"]);
        assert_eq!(s.percent, Some(50));
        s.take("999%");
        assert_eq!(s.percent, Some(256), "HAProxy's upper bound");
        s.take("# only a comment 10%");
        assert_eq!(s.percent, Some(256));
    }

    /// An agent on `port` of 127.0.0.1, asked with a 300 ms timeout.
    fn test_spec(port: u16) -> AgentSpec {
        AgentSpec {
            port,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            send: None,
            path: None,
        }
    }

    #[tokio::test]
    async fn asks_a_local_agent() {
        let port = crate::runtime::test_server(|mut s, req| async move {
            let reply: &[u8] = match req.as_bytes() {
                b"load?\n" => b"60% maxconn:10\r\nignored second line\n",
                b"silent\n" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    b""
                }
                _ => b"",
            };
            let _ = s.write_all(reply).await;
        })
        .await;
        let spec = |send: &str| AgentSpec {
            send: Some(send.into()),
            ..test_spec(port)
        };
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let r = ask(target, &spec("load?\n")).await;
        assert_eq!(r.line.as_deref(), Some("60% maxconn:10"), "{r:?}");
        let r = ask(target, &spec("other\n")).await;
        assert!(
            r.line.is_none() && r.error.contains("without an answer"),
            "{r:?}"
        );
        let r = ask(target, &spec("silent\n")).await;
        assert!(r.line.is_none() && r.error.contains("timed out"), "{r:?}");
        let closed = SocketAddr::from(([127, 0, 0, 1], 1));
        let r = ask(closed, &spec("load?\n")).await;
        assert!(r.line.is_none() && r.error.contains("connect"), "{r:?}");
    }

    #[tokio::test]
    async fn asks_an_http_agent() {
        let port = crate::runtime::test_server(|mut s, req| async move {
            let reply = if req.starts_with("GET /load ") {
                "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n40% drain\nmore".to_owned()
            } else if req.starts_with("GET /big ") {
                // One line far beyond what is read.
                let body = "30% ".repeat(1000);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else if req.starts_with("GET /stream ") {
                // The first line, then the body stays open.
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n55%\n\r\n",
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                String::new()
            } else {
                "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_owned()
            };
            let _ = s.write_all(reply.as_bytes()).await;
        })
        .await;
        let spec = |path: &str| AgentSpec {
            path: Some(path.into()),
            ..test_spec(port)
        };
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let r = ask(target, &spec("/load")).await;
        assert_eq!(r.line.as_deref(), Some("40% drain"), "{r:?}");
        let r = ask(target, &spec("/other")).await;
        assert!(r.line.is_none() && r.error.contains("status 503"), "{r:?}");
        let r = ask(target, &spec("/big")).await;
        let line = r.line.expect("the first 512 bytes");
        assert!(line.starts_with("30% 30%") && line.len() <= 512, "{line}");
        let r = ask(target, &spec("/stream")).await;
        assert_eq!(
            r.line.as_deref(),
            Some("55%"),
            "the line, not the end of the body: {r:?}"
        );
    }
}
