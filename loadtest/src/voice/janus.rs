//! `--target janus`: the same callers against a Janus VideoRoom, for the side-by-side baseline.
//!
//! Signaling goes through Janus's plain HTTP API (`POST /janus` to create a session, attach the
//! `janus.plugin.videoroom` handle, plugin messages; `GET /janus/<session>` long-polls the
//! asynchronous answers). One audio-only room per channel. A speaker joins as a publisher and
//! sends the offer (our str0m client, exactly as against Lodge); a listener joins as a
//! subscriber to its room's speakers, Janus offers and the str0m client answers. Janus has no
//! speaker slots: a subscriber receives every speaker it asked for, which is why the baseline
//! runs one speaker per channel (the same work for both servers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::signal::SlotMap;

/// How long one asynchronous VideoRoom request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Janus drops a session after 60 s without a request (its default `session_timeout`).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(25);
/// VideoRoom's "no such feed" (the speaker has not published yet): retried.
const NO_SUCH_FEED: i64 = 428;

pub struct Janus {
    http: reqwest::Client,
    /// E.g. `http://10.77.0.1:8088/janus`.
    base: String,
    tx: AtomicU64,
}

/// A VideoRoom plugin answer: its `data`, and the JSEP it carried.
struct PluginReply {
    data: Value,
    jsep: Option<Value>,
}

fn plugin_reply(v: &Value) -> Result<PluginReply> {
    let data = v["plugindata"]["data"].clone();
    if let Some(code) = data["error_code"].as_i64() {
        bail!(
            "Janus VideoRoom error {code}: {}",
            data["error"].as_str().unwrap_or("")
        );
    }
    Ok(PluginReply {
        data,
        jsep: v.get("jsep").cloned(),
    })
}

impl Janus {
    pub fn new(http: reqwest::Client, base: &str) -> Janus {
        Janus {
            http,
            base: base.trim_end_matches('/').to_string(),
            tx: AtomicU64::new(1),
        }
    }

    async fn post(&self, path: &str, mut body: Value) -> Result<Value> {
        let tx = format!("t{}", self.tx.fetch_add(1, Ordering::Relaxed));
        body["transaction"] = Value::String(tx);
        let url = format!("{}{path}", self.base);
        let v: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}: is Janus running there?"))?
            .json()
            .await
            .with_context(|| format!("POST {url}: the answer is not JSON"))?;
        if v["janus"] == "error" {
            bail!(
                "Janus error {}: {}",
                v["error"]["code"],
                v["error"]["reason"].as_str().unwrap_or("")
            );
        }
        Ok(v)
    }

    pub async fn session(&self) -> Result<u64> {
        let v = self.post("", json!({ "janus": "create" })).await?;
        v["data"]["id"].as_u64().context("session id from Janus")
    }

    pub async fn attach(&self, session: u64) -> Result<u64> {
        let v = self
            .post(
                &format!("/{session}"),
                json!({ "janus": "attach", "plugin": "janus.plugin.videoroom" }),
            )
            .await?;
        v["data"]["id"].as_u64().context("handle id from Janus")
    }

    /// Tell Janus the client's candidates are all in its SDP (no trickling follows); without
    /// this Janus waits for trickled candidates and lets ICE fail.
    pub async fn candidates_done(&self, session: u64, handle: u64) -> Result<()> {
        self.post(
            &format!("/{session}/{handle}"),
            json!({ "janus": "trickle", "candidate": { "completed": true } }),
        )
        .await
        .map(|_| ())
    }

    pub async fn keepalive(&self, session: u64) -> Result<()> {
        self.post(&format!("/{session}"), json!({ "janus": "keepalive" }))
            .await
            .map(|_| ())
    }

    pub async fn destroy(&self, session: u64) -> Result<()> {
        self.post(&format!("/{session}"), json!({ "janus": "destroy" }))
            .await
            .map(|_| ())
    }

    /// Events queued for a session (long poll: Janus answers within 30 s, with a keepalive if
    /// nothing happened).
    async fn poll(&self, session: u64) -> Result<Vec<Value>> {
        let url = format!("{}/{session}?maxev=10", self.base);
        let v: Value = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .json()
            .await?;
        Ok(match v {
            Value::Array(a) => a,
            other => vec![other],
        })
    }

    /// A plugin request: synchronous ones answer at once, asynchronous ones with an `ack` and
    /// later an event carrying the same transaction.
    async fn request(
        &self,
        session: u64,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<PluginReply> {
        let mut msg = json!({ "janus": "message", "body": body });
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let r = self.post(&format!("/{session}/{handle}"), msg).await?;
        if r["janus"] == "success" {
            return plugin_reply(&r);
        }
        let tx = r["transaction"].clone();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while Instant::now() < deadline {
            for e in self.poll(session).await? {
                if e["janus"] == "event" && e["transaction"] == tx {
                    return plugin_reply(&e);
                }
            }
        }
        bail!("Janus did not answer {body} within {REQUEST_TIMEOUT:?}")
    }
}

/// One audio-only room per channel; the room ids.
pub async fn create_rooms(j: &Janus, rooms: usize, publishers: usize) -> Result<Vec<u64>> {
    let session = j.session().await?;
    let handle = j.attach(session).await?;
    // Room ids unique per run, so a Janus that served an earlier run needs no cleanup.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64 % 1_000_000_000)
        .unwrap_or(1)
        * 1000;
    let mut ids = Vec::with_capacity(rooms);
    for c in 0..rooms as u64 {
        let room = base + c;
        j.request(
            session,
            handle,
            json!({
                "request": "create", "room": room, "description": format!("lodge-load {c}"),
                "publishers": publishers.max(1), "audiocodec": "opus", "is_private": true,
                "audiolevel_ext": true, "notify_joining": false,
            }),
            None,
        )
        .await
        .with_context(|| format!("creating VideoRoom {room}"))?;
        ids.push(room);
    }
    let _ = j.destroy(session).await;
    Ok(ids)
}

/// A speaker: join `room` as publisher `feed` and publish the client's offer; the SDP answer
/// and the session to keep alive.
pub async fn publish(j: &Janus, room: u64, feed: u64, offer: &str) -> Result<(u64, String)> {
    let session = j.session().await?;
    let handle = j.attach(session).await?;
    j.request(
        session,
        handle,
        json!({ "request": "join", "ptype": "publisher", "room": room, "id": feed,
                "display": format!("speaker {feed}") }),
        None,
    )
    .await
    .context("joining as publisher")?;
    let r = j
        .request(
            session,
            handle,
            json!({ "request": "publish", "audio": true, "video": false, "data": false }),
            Some(json!({ "type": "offer", "sdp": offer })),
        )
        .await
        .context("publishing")?;
    let answer = r
        .jsep
        .as_ref()
        .and_then(|j| j["sdp"].as_str())
        .with_context(|| format!("no SDP answer in the publish reply: {}", r.data))?;
    j.candidates_done(session, handle).await?;
    Ok((session, answer.to_string()))
}

/// A listener: subscribe to `feeds` in `room`. Returns (session, handle, Janus's offer); the
/// caller answers with [`start`]. Retries while a speaker has not published yet.
pub async fn subscribe(j: &Janus, room: u64, feeds: &[u64]) -> Result<(u64, u64, String)> {
    let session = j.session().await?;
    let handle = j.attach(session).await?;
    let streams: Vec<Value> = feeds.iter().map(|f| json!({ "feed": f })).collect();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let r = j
            .request(
                session,
                handle,
                json!({ "request": "join", "ptype": "subscriber", "room": room, "streams": streams }),
                None,
            )
            .await;
        match r {
            Ok(r) => {
                let offer = r
                    .jsep
                    .as_ref()
                    .and_then(|j| j["sdp"].as_str())
                    .with_context(|| format!("no SDP offer in the subscribe reply: {}", r.data))?;
                if offer.contains("m=audio") {
                    return Ok((session, handle, offer.to_string()));
                }
            }
            Err(e) if e.to_string().contains(&format!("error {NO_SUCH_FEED}")) => {}
            Err(e) => return Err(e.context("joining as subscriber")),
        }
        if Instant::now() > deadline {
            bail!("room {room}: speakers {feeds:?} did not publish within {REQUEST_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Send the subscriber's answer.
pub async fn start(j: &Janus, session: u64, handle: u64, answer: &str) -> Result<()> {
    j.request(
        session,
        handle,
        json!({ "request": "start" }),
        Some(json!({ "type": "answer", "sdp": answer })),
    )
    .await
    .context("starting the subscription")?;
    j.candidates_done(session, handle).await
}

/// SSRC → speaker for a subscriber: the n-th audio section of Janus's offer carries feed n.
pub fn slot_map(offer: &str, feeds: &[u64]) -> SlotMap {
    let mut map = HashMap::new();
    for (section, feed) in offer.split("\nm=").skip(1).zip(feeds) {
        for line in section.lines() {
            if let Some(ssrc) = line
                .strip_prefix("a=ssrc:")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|s| s.parse::<u32>().ok())
            {
                map.insert(ssrc, *feed);
            }
        }
    }
    Arc::new(Mutex::new(map))
}

/// Keep a session alive until `stop`, then destroy it.
pub async fn keep_alive(j: Arc<Janus>, session: u64, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEEPALIVE_EVERY) => { let _ = j.keepalive(session).await; }
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    let _ = j.destroy(session).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_audio_section_to_its_feed() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.77.0.1\r\ns=VideoRoom\r\nt=0 0\r\n\
                     m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ssrc:1111 cname:janus\r\n\
                     m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=ssrc:2222 cname:janus\r\n";
        let m = slot_map(offer, &[7, 9]);
        let m = m.lock().unwrap();
        assert_eq!(m.get(&1111), Some(&7));
        assert_eq!(m.get(&2222), Some(&9));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn plugin_errors_become_errors() {
        let v = json!({ "plugindata": { "data": { "videoroom": "event", "error_code": 428, "error": "No such feed (5)" } } });
        let e = plugin_reply(&v).err().expect("an error");
        assert!(e.to_string().contains("error 428"), "{e}");
        let ok =
            json!({ "plugindata": { "data": { "videoroom": "joined" } }, "jsep": { "sdp": "x" } });
        assert_eq!(plugin_reply(&ok).unwrap().jsep.unwrap()["sdp"], "x");
    }
}
