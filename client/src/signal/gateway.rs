//! The chat gateway as a Discord client speaks it: Hello, Identify, READY, op 4 voice state →
//! VOICE_SERVER_UPDATE, then a task for heartbeats and later op 4s that resumes (op 6) a lost
//! connection.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{
    beat, closed, connect, recv_json, send_json, wait_keeping, Gone, Recovered, VoiceEvent, Ws,
    RESUME_ATTEMPTS, STEP,
};
use crate::error::{protocol, ClientError};

/// What a voice gateway connection identifies with: who we are (READY) and where and with
/// what (VOICE_SERVER_UPDATE).
#[derive(Debug, Clone)]
pub struct VoiceLogin {
    pub user_id: u64,
    pub session_id: String,
    pub token: String,
    pub endpoint: String,
    /// The voice gateway is reached as the gateway was: `wss://` with this TLS, else `ws://`.
    pub tls: crate::tls::Tls,
}

/// What the gateway gave us on the way into a voice channel.
pub struct VoiceServer {
    pub login: VoiceLogin,
    /// The gateway connection's task (ends after [`GatewayCmd::Close`]).
    pub task: tokio::task::JoinHandle<()>,
}

/// Requests to the gateway connection's task.
#[derive(Debug)]
pub enum GatewayCmd {
    /// Op 4 again: mute, deafen, or leave (`channel` None).
    VoiceState {
        channel: Option<String>,
        self_mute: bool,
        self_deaf: bool,
    },
    Close,
}

/// Connect, identify with `opts.token`, and ask to join `opts.channel` of `opts.guild`: the
/// voice server the gateway names. The connection then lives in a task (heartbeats; `cmds` for
/// later voice state changes; its loss reported on `lost`).
pub async fn join_gateway(
    gateway_url: &str,
    tls: &crate::tls::Tls,
    opts: &crate::call::JoinOptions,
    cmds: mpsc::UnboundedReceiver<GatewayCmd>,
    lost: mpsc::UnboundedSender<VoiceEvent>,
) -> Result<VoiceServer, ClientError> {
    let (token, guild, channel) = (&opts.token, &opts.guild, &opts.channel);
    let (self_mute, self_deaf) = (opts.self_mute, opts.self_deaf);
    let mut gw = connect(gateway_url, tls).await?;
    let hello = recv_json(&mut gw, "the gateway").await?;
    if hello["op"] != 10 {
        return Err(protocol(format!("expected Hello (op 10), got {hello}")));
    }
    let hb_ms = heartbeat_ms(&hello);
    // GUILDS (1) and GUILD_VOICE_STATES (128).
    send_json(
        &mut gw,
        json!({ "op": 2, "d": { "token": token, "intents": 129,
            "properties": { "os": std::env::consts::OS, "browser": "lodge-client", "device": "lodge-client" } } }),
    )
    .await?;
    let mut seq = Value::Null;
    let (user_id, session_id, resume_url) = loop {
        let m = recv_json(&mut gw, "the gateway").await?;
        if !m["s"].is_null() {
            seq = m["s"].clone();
        }
        if m["op"] == 9 {
            return Err(protocol(
                "the gateway refused the session (op 9): is the token right?",
            ));
        }
        if m["t"] == "READY" {
            let d = &m["d"];
            let user = d["user"]["id"]
                .as_str()
                .and_then(|u| u.parse().ok())
                .ok_or_else(|| protocol("READY has no user id"))?;
            let sid = d["session_id"]
                .as_str()
                .ok_or_else(|| protocol("READY has no session_id"))?;
            // Where to resume: READY's resume_gateway_url, else where we came in.
            let resume = d["resume_gateway_url"]
                .as_str()
                .map(|u| format!("{}?v=10&encoding=json", u.split('?').next().unwrap_or(u)))
                .unwrap_or_else(|| gateway_url.to_string());
            break (user, sid.to_string(), resume);
        }
    };
    send_json(
        &mut gw,
        json!({ "op": 4, "d": { "guild_id": guild, "channel_id": channel,
            "self_mute": self_mute, "self_deaf": self_deaf } }),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + STEP;
    let (token, endpoint) = loop {
        let m = tokio::time::timeout_at(deadline, recv_json(&mut gw, "the gateway"))
            .await
            .map_err(|_| {
                ClientError::Timeout(STEP.as_secs(), "the gateway (VOICE_SERVER_UPDATE)")
            })??;
        if m["t"] == "LODGE_VOICE_ERROR" {
            return Err(protocol(format!(
                "the server refused to join the channel: {} (code {})",
                m["d"]["message"].as_str().unwrap_or("no reason given"),
                m["d"]["code"]
            )));
        }
        if !m["s"].is_null() {
            seq = m["s"].clone();
        }
        if m["t"] == "VOICE_SERVER_UPDATE" {
            let d = &m["d"];
            let t = d["token"]
                .as_str()
                .ok_or_else(|| protocol("no voice token"))?;
            let e = d["endpoint"]
                .as_str()
                .ok_or_else(|| protocol("no voice endpoint"))?;
            break (t.to_string(), e.to_string());
        }
    };
    let resume = Resume {
        url: resume_url,
        tls: tls.clone(),
        token: opts.token.clone(),
        session_id: session_id.clone(),
    };
    let follow = Follow {
        user_id,
        session_id: session_id.clone(),
        guild: guild.to_string(),
        events: lost,
    };
    let task = tokio::spawn(keep_gateway(gw, hb_ms, seq, resume, follow, cmds));
    Ok(VoiceServer {
        login: VoiceLogin {
            user_id,
            session_id,
            token,
            endpoint,
            tls: tls.clone(),
        },
        task,
    })
}

/// How to come back to a gateway session whose connection was lost (op 6 Resume).
struct Resume {
    url: String,
    tls: crate::tls::Tls,
    token: String,
    session_id: String,
}

/// The wait before the first resume attempt (doubled each time, [`RESUME_ATTEMPTS`] in all):
/// about 7 s, well inside the server's resume window.
const RESUME_FIRST_WAIT: Duration = Duration::from_millis(500);
/// How long one resume attempt (connect, Hello, op 6, the replay up to RESUMED) may take.
const RESUME_ATTEMPT: Duration = Duration::from_secs(5);

/// Hello's heartbeat interval in ms, at least one second (0 would spin, and tokio panics on it).
fn heartbeat_ms(hello: &Value) -> u64 {
    hello["d"]["heartbeat_interval"]
        .as_u64()
        .unwrap_or(41_250)
        .max(1_000)
}

/// Op 4's payload.
fn voice_state(guild: &str, channel: Option<String>, self_mute: bool, self_deaf: bool) -> Value {
    json!({ "guild_id": guild, "channel_id": channel, "self_mute": self_mute, "self_deaf": self_deaf })
}

/// Close codes after which resuming cannot work (Discord's: authentication failed, sharding
/// or intents refused): the call ends.
fn resumable(code: u16) -> bool {
    !matches!(code, 4004 | 4010..=4014)
}

/// Reconnect and resume the session: Hello, op 6 with the last sequence number, then the
/// missed dispatches (which move `seq`) up to RESUMED. The new connection and its heartbeat
/// interval; `Ok(Err(why))` if the server will not resume the session (op 9), `Err` if it
/// could not be asked.
async fn resume_once(
    r: &Resume,
    seq: &mut Value,
    follow: &Follow,
) -> Result<Result<(Ws, u64), String>, ClientError> {
    let mut ws = connect(&r.url, &r.tls).await?;
    let hello = match recv_json(&mut ws, "the gateway").await {
        Err(ClientError::Closed { code, reason, .. }) if !resumable(code) => {
            return Ok(Err(format!(
                "the gateway closed the connection ({code} {reason})"
            )))
        }
        other => other?,
    };
    if hello["op"] != 10 {
        return Err(protocol(format!("expected Hello (op 10), got {hello}")));
    }
    let hb_ms = heartbeat_ms(&hello);
    send_json(
        &mut ws,
        json!({ "op": 6, "d": { "token": r.token, "session_id": r.session_id, "seq": seq } }),
    )
    .await?;
    loop {
        let m = match recv_json(&mut ws, "the gateway").await {
            Err(ClientError::Closed { code, reason, .. }) if !resumable(code) => {
                return Ok(Err(format!(
                    "the gateway closed the connection ({code} {reason})"
                )))
            }
            other => other?,
        };
        if m["op"] == 9 {
            return Ok(Err(
                "the gateway would not resume the session (op 9); join the call again".into(),
            ));
        }
        if !m["s"].is_null() {
            *seq = m["s"].clone();
        }
        follow.dispatch(&m);
        if m["t"] == "RESUMED" {
            return Ok(Ok((ws, hb_ms)));
        }
    }
}

/// What the call follows of the gateway's dispatches once it is in voice.
struct Follow {
    user_id: u64,
    session_id: String,
    guild: String,
    events: mpsc::UnboundedSender<VoiceEvent>,
}

impl Follow {
    /// A dispatch, live or replayed by a resume: a new voice server, or our own voice state
    /// moved or ended, goes to the call.
    fn dispatch(&self, v: &Value) {
        let d = &v["d"];
        if d["guild_id"].as_str() != Some(self.guild.as_str()) {
            return;
        }
        match v["t"].as_str() {
            Some("VOICE_SERVER_UPDATE") => {
                if let (Some(token), Some(endpoint)) = (d["token"].as_str(), d["endpoint"].as_str())
                {
                    let _ = self.events.send(VoiceEvent::Moved {
                        token: token.to_string(),
                        endpoint: endpoint.to_string(),
                    });
                }
            }
            Some("VOICE_STATE_UPDATE") => {
                let user = d["user_id"].as_str().and_then(|u| u.parse::<u64>().ok());
                if user != Some(self.user_id) {
                    return;
                }
                // Another session of ours in voice means this one is not any more.
                let channel = d["channel_id"]
                    .as_str()
                    .filter(|_| d["session_id"].as_str() == Some(self.session_id.as_str()));
                let _ = self
                    .events
                    .send(VoiceEvent::Channel(channel.map(str::to_string)));
            }
            Some("LODGE_VOICE_ERROR") => {
                tracing::warn!("the server refused a voice state change: {}", d["message"])
            }
            _ => {}
        }
    }
}

async fn keep_gateway(
    mut ws: Ws,
    hb_ms: u64,
    mut seq: Value,
    resume: Resume,
    follow: Follow,
    mut cmds: mpsc::UnboundedReceiver<GatewayCmd>,
) {
    let lost = |why: String| {
        let _ = follow.events.send(VoiceEvent::Lost(why));
    };
    let guild = follow.guild.clone();
    let mut hb = beat(hb_ms);
    hb.tick().await;
    // A heartbeat not acknowledged by the next one means a dead (zombie) connection.
    let mut acked = true;
    // The voice state last asked for: said again after every resume (an op 4 written into a
    // connection that was already dead is lost, and saying it twice is harmless).
    let mut wanted: Option<Value> = None;
    // Resume attempts left; an acknowledged heartbeat on a connection restores them, so a
    // server that accepts each resume and drops it again cannot keep the call in a loop.
    let mut tries = RESUME_ATTEMPTS;
    loop {
        let gone = tokio::select! {
            _ = hb.tick() => {
                if !acked {
                    Gone::Resume("no heartbeat acknowledgement".into())
                } else if send_json(&mut ws, json!({ "op": 1, "d": seq })).await.is_err() {
                    Gone::Resume("a heartbeat could not be sent".into())
                } else {
                    acked = false;
                    continue;
                }
            }
            c = cmds.recv() => match c {
                Some(GatewayCmd::VoiceState { channel, self_mute, self_deaf }) => {
                    let d = voice_state(&guild, channel, self_mute, self_deaf);
                    wanted = Some(d.clone());
                    if send_json(&mut ws, json!({ "op": 4, "d": d })).await.is_ok() {
                        continue;
                    }
                    Gone::Resume("a voice state update could not be sent".into())
                }
                Some(GatewayCmd::Close) | None => {
                    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
                    return;
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    if !v["s"].is_null() { seq = v["s"].clone(); }
                    follow.dispatch(&v);
                    match v["op"].as_u64() {
                        Some(11) => {
                            acked = true;
                            tries = RESUME_ATTEMPTS;
                            continue;
                        }
                        // The server asks for a heartbeat now.
                        Some(1) => {
                            if send_json(&mut ws, json!({ "op": 1, "d": seq })).await.is_ok() {
                                continue;
                            }
                            Gone::Resume("a heartbeat could not be sent".into())
                        }
                        // Reconnect: the server drains or moves this session.
                        Some(7) => Gone::Resume("the gateway asked to reconnect (op 7)".into()),
                        Some(9) => Gone::End("the gateway invalidated the session (op 9)".into()),
                        _ => continue,
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                    let why = closed("the gateway", c).to_string();
                    if resumable(code) { Gone::Resume(why) } else { Gone::End(why) }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => Gone::Resume(format!("gateway error: {e}")),
                None => Gone::Resume("the gateway connection ended".into()),
            }
        };
        let why = match gone {
            Gone::End(why) => {
                lost(why);
                return;
            }
            Gone::Resume(why) => why,
        };
        let mut out = Outage {
            tries: &mut tries,
            cmds: &mut cmds,
            wanted: &mut wanted,
            guild: &guild,
        };
        match recover(&resume, &mut seq, &follow, &why, &mut out).await {
            Recovered::Resumed(w, ms) => {
                ws = *w;
                hb = beat(ms);
                hb.tick().await;
                acked = true;
                if let Some(d) = &wanted {
                    // If this fails, the connection's end shows on the next read.
                    let _ = send_json(&mut ws, json!({ "op": 4, "d": d })).await;
                }
            }
            // Leaving while the connection was down: the server ends the session (and its
            // voice state) when its resume window runs out.
            Recovered::Closed => return,
            Recovered::Failed(why) => {
                lost(why);
                return;
            }
        }
    }
}

/// What a recovery must keep up with while the connection is down.
struct Outage<'a> {
    tries: &'a mut u32,
    cmds: &'a mut mpsc::UnboundedReceiver<GatewayCmd>,
    wanted: &'a mut Option<Value>,
    guild: &'a str,
}

/// Resume after `why`: up to the attempts left, with growing waits in which op 4s asked for
/// are kept (the latest is said after the resume) and a close ends the recovery; each attempt
/// at most [`RESUME_ATTEMPT`].
async fn recover(
    r: &Resume,
    seq: &mut Value,
    follow: &Follow,
    why: &str,
    out: &mut Outage<'_>,
) -> Recovered {
    tracing::info!("gateway connection lost ({why}); resuming the session");
    let mut wait = RESUME_FIRST_WAIT;
    let mut last = String::from("no attempts left");
    while *out.tries > 0 {
        *out.tries -= 1;
        let (wanted, guild) = (&mut *out.wanted, out.guild);
        let open = wait_keeping(wait, out.cmds, |c| match c {
            GatewayCmd::VoiceState {
                channel,
                self_mute,
                self_deaf,
            } => {
                *wanted = Some(voice_state(guild, channel, self_mute, self_deaf));
                true
            }
            GatewayCmd::Close => false,
        })
        .await;
        if !open {
            return Recovered::Closed;
        }
        wait *= 2;
        match tokio::time::timeout(RESUME_ATTEMPT, resume_once(r, seq, follow)).await {
            Ok(Ok(Ok((ws, ms)))) => {
                tracing::info!("gateway session resumed");
                return Recovered::Resumed(Box::new(ws), ms);
            }
            // The server answered and said no: trying again will not help.
            Ok(Ok(Err(refused))) => return Recovered::Failed(format!("gateway: {why}; {refused}")),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {} s", RESUME_ATTEMPT.as_secs()),
        }
    }
    Recovered::Failed(format!(
        "gateway: {why}; resuming failed (last attempt: {last})"
    ))
}
