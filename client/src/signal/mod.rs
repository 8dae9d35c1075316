//! Signaling as a Discord client does it: the gateway (Hello, Identify, READY, heartbeats, op 4
//! voice state) and the voice gateway (Hello, Identify, Ready, IP discovery, Select Protocol
//! `udp`, Session Description, heartbeats, op 5 speaking both ways, DAVE's ops 11–31), over
//! `ws://` or, from an `https://` base, `wss://` only (`crate::tls`).
//!
//! `gateway.rs` holds the chat gateway's side, `voice.rs` the voice gateway's; both resume a
//! lost connection before giving up on the call.

mod gateway;
mod voice;

pub use gateway::{join_gateway, GatewayCmd, VoiceLogin, VoiceServer};
pub use voice::{join_voice, VoiceCmd, VoiceReady};

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{protocol, ClientError};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one signaling step may take.
const STEP: Duration = Duration::from_secs(15);

async fn recv_json(ws: &mut Ws, which: &'static str) -> Result<Value, ClientError> {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .map_err(|_| ClientError::Timeout(STEP.as_secs(), which))?;
        match m {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t)
                    .map_err(|e| protocol(format!("{which} sent JSON that does not parse: {e}")))
            }
            Some(Ok(Message::Close(c))) => return Err(closed(which, c)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(protocol(format!("{which}: {e}"))),
            None => return Err(protocol(format!("{which}: the connection ended"))),
        }
    }
}

fn closed(
    which: &'static str,
    c: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> ClientError {
    let (code, reason) = c
        .map(|c| (u16::from(c.code), c.reason.to_string()))
        .unwrap_or((1005, String::new()));
    ClientError::Closed {
        which,
        code,
        reason,
    }
}

async fn send_json(ws: &mut Ws, v: Value) -> Result<(), ClientError> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| protocol(format!("sending on the websocket: {e}")))
}

/// A WebSocket to `url`: `wss://` through `tls` (which must then be set), `ws://` plain.
async fn connect(url: &str, tls: &crate::tls::Tls) -> Result<Ws, ClientError> {
    tls.check(url)?;
    let connector = Some(tokio_tungstenite::Connector::Rustls(tls.config.clone()));
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector)
        .await
        .map_err(|e| ClientError::Connect {
            url: url.to_string(),
            source: Box::new(e),
        })?;
    Ok(ws)
}

/// The REST base (`http://host:port`) → the gateway's WebSocket URL, asked of the server
/// (`GET /api/v10/gateway`) as Discord's libraries do.
pub async fn gateway_url(http: &reqwest::Client, base: &str) -> Result<String, ClientError> {
    let url = format!("{}/api/v10/gateway", base.trim_end_matches('/'));
    let v = get_json(http, &url, None).await?;
    let ws = v["url"]
        .as_str()
        .ok_or_else(|| protocol("GET /gateway has no url"))?;
    Ok(format!(
        "{}?v=10&encoding=json",
        ws.split('?').next().unwrap_or(ws)
    ))
}

pub async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<Value, ClientError> {
    let mut r = http.get(url);
    if let Some(t) = token {
        r = r.header("Authorization", t);
    }
    let res = r.send().await.map_err(|e| ClientError::Connect {
        url: url.to_string(),
        source: Box::new(e),
    })?;
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    if status >= 300 {
        return Err(ClientError::Http {
            url: url.to_string(),
            status,
            body,
        });
    }
    serde_json::from_str(&body).map_err(|e| protocol(format!("{url} answered non-JSON: {e}")))
}

/// What the gateway tasks report to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoiceEvent {
    /// Op 5 on voice connection `generation`: this SSRC is `user`'s voice.
    Speaker {
        generation: u32,
        ssrc: u32,
        user: u64,
    },
    /// The user left the call (op 13 on voice connection `generation`).
    Gone { generation: u32, user: u64 },
    /// The chat gateway is lost for good: the call ends.
    Lost(String),
    /// Voice connection `generation` is lost for good (`code`: the close code, if it was
    /// closed). A moved call's old connection may still report: only the current one counts.
    VoiceLost {
        generation: u32,
        code: Option<u16>,
        why: String,
    },
    /// VOICE_SERVER_UPDATE in the middle of the call (moved to another channel or another
    /// node): connect to `endpoint` with `token`.
    Moved { token: String, endpoint: String },
    /// Our voice state's channel, as the server now has it: moved by a moderator (`Some`), or
    /// out of voice (`None`: disconnected by someone else, or by another session of ours).
    Channel(Option<String>),
}

impl VoiceEvent {
    /// The voice connection an event is about, for those that come from one.
    pub fn generation(&self) -> Option<u32> {
        match self {
            VoiceEvent::Speaker { generation, .. }
            | VoiceEvent::Gone { generation, .. }
            | VoiceEvent::VoiceLost { generation, .. } => Some(*generation),
            _ => None,
        }
    }
}

/// Resume attempts after a lost connection, either gateway's.
const RESUME_ATTEMPTS: u32 = 4;

/// How a recovery (either gateway's) ended.
enum Recovered {
    Resumed(Box<Ws>, u64),
    /// The call asked to close meanwhile.
    Closed,
    Failed(String),
}

/// A heartbeat timer for an interval from Hello: a late tick is delayed, not caught up.
fn beat(ms: u64) -> tokio::time::Interval {
    let mut hb = tokio::time::interval(Duration::from_millis(ms));
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    hb
}

/// Sit out `wait` while a connection is down, handing each command that arrives to `keep`;
/// false as soon as `keep` says the call is closing (or the commands end).
async fn wait_keeping<C>(
    wait: Duration,
    cmds: &mut tokio::sync::mpsc::UnboundedReceiver<C>,
    mut keep: impl FnMut(C) -> bool,
) -> bool {
    let sleep = tokio::time::sleep(wait);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            c = cmds.recv() => {
                if !c.is_some_and(&mut keep) {
                    return false;
                }
            }
        }
    }
}

/// Why a connection (either gateway's) needs resuming, or why the call must end.
enum Gone {
    Resume(String),
    End(String),
}
