//! The tokio shell around one call: the gateway and voice gateway tasks, the UDP socket, a
//! 10 ms tick that moves audio from the [`Source`] through the [`VoiceEngine`] to the node
//! (every other tick, a 20 ms frame) and from the node to the [`Sink`] (every tick).
//! Controlled through [`Call`]'s methods.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use lodge_sfu::native::CryptoMode;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::audio_io::{Sink, Source};
use crate::engine::{CallStats, EngineConfig, VoiceEngine};
use crate::error::ClientError;
use crate::playout::FRAME;
use crate::signal::{self, GatewayCmd, VoiceCmd, VoiceEvent};

/// How often a client that sends nothing tells the node it is still there (both Discord
/// libraries use 5 s): the 4-byte SSRC, not encrypted.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// How often [`Call::stats`] is refreshed (ticks: 200 ms).
const STATS_EVERY: u32 = 20;
/// The playout tick: half a frame, so the playout decides at a finer phase to the packets'
/// arrival (see `playout.rs`), as NetEq does. Capture runs every other tick.
const TICK: Duration = Duration::from_millis(10);
const TICK_SAMPLES: usize = FRAME / 2;

/// Where and how to join.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The server's HTTP base, e.g. `http://127.0.0.1:8080`, or `https://lodge.example.org`
    /// for TLS (then the gateways are reached over `wss://`).
    pub base_url: String,
    /// A PEM file of CA certificates to trust besides the public web roots: for a server
    /// whose certificate a private CA signed.
    pub ca_file: Option<std::path::PathBuf>,
    /// The `Authorization` value: a user token, or `Bot <token>`.
    pub token: String,
    pub guild: String,
    pub channel: String,
    pub self_mute: bool,
    pub self_deaf: bool,
    /// The transport encryption to ask for.
    pub mode: CryptoMode,
    pub engine: EngineConfig,
    /// The local address to send from (unspecified: any).
    pub bind: IpAddr,
    /// Send media to this address instead of the node's (voice Ready's): a UDP relay or an
    /// impairment proxy in front of the node. `None`: straight to the node.
    pub media_via: Option<SocketAddr>,
    /// Take part in DAVE, end-to-end encryption (on by default): the call is encrypted end to
    /// end while everyone in it does. Off: this client joins without it, which takes the whole
    /// call down to transport encryption while it stays, and channels that require DAVE
    /// refuse it.
    pub dave: bool,
}

impl JoinOptions {
    pub fn new(base_url: &str, token: &str, guild: &str, channel: &str) -> JoinOptions {
        JoinOptions {
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            guild: guild.to_string(),
            channel: channel.to_string(),
            self_mute: false,
            self_deaf: false,
            mode: CryptoMode::ALL[0],
            engine: EngineConfig::default(),
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            media_via: None,
            dave: true,
            ca_file: None,
        }
    }
}

#[derive(Debug)]
enum Cmd {
    Mute(bool),
    Deaf(bool),
    Volume(u64, f32),
    PushToTalk(Option<bool>),
    Rebind,
    Leave,
}

/// A call in progress. Dropping it leaves the call too, without waiting.
pub struct Call {
    cmds: mpsc::UnboundedSender<Cmd>,
    stats: watch::Receiver<CallStats>,
    /// Why the call ended (`Some` once it has: left, or a connection lost).
    ended: watch::Receiver<Option<String>>,
    task: Option<JoinHandle<Result<(), ClientError>>>,
    user_id: u64,
    ssrc: u32,
}

impl Call {
    /// Log in with the token, join the voice channel, and start moving audio from `source`
    /// to the channel and from the channel to `sink`.
    pub async fn join(
        opts: JoinOptions,
        source: Box<dyn Source>,
        sink: Box<dyn Sink>,
    ) -> Result<Call, ClientError> {
        let tls = crate::tls::Tls::for_base(&opts.base_url, opts.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls.config).clone())
            .https_only(tls.required)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let gw_url = signal::gateway_url(&http, &opts.base_url).await?;
        let (gw_tx, gw_rx) = mpsc::unbounded_channel();
        // Voice gateway events, and the loss of either connection, reach the call's task here.
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let vs = signal::join_gateway(&gw_url, &tls, &opts, gw_rx, ev_tx.clone()).await?;
        let sock = UdpSocket::bind(SocketAddr::new(opts.bind, 0)).await?;
        let (v_tx, v_rx) = mpsc::unbounded_channel();
        let ready = signal::join_voice(
            &vs.login,
            &opts.guild,
            dave_channel(&opts)?,
            &sock,
            opts.mode,
            opts.media_via,
            0,
            ev_tx.clone(),
            v_rx,
        )
        .await?;
        let mut engine = VoiceEngine::new(
            std::time::Instant::now(),
            ready.ssrc,
            ready.mode,
            &ready.key,
            opts.engine.clone(),
        )?;
        engine.set_dave(ready.dave);
        engine.controls.mute = opts.self_mute;
        engine.controls.deaf = opts.self_deaf;
        let (stats_tx, stats) = watch::channel(CallStats::default());
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended) = watch::channel(None);
        tracing::info!(
            user = vs.login.user_id, ssrc = ready.ssrc, server = %ready.server, mode = ready.mode.name(),
            "joined the voice channel"
        );
        let run = Running {
            opts,
            sock,
            server: ready.server,
            engine,
            source,
            sink,
            gateway: gw_tx,
            voice: v_tx,
            stats: stats_tx,
            tasks: [vs.task, ready.task],
            ended: ended_tx,
            events: ev_tx,
            login: vs.login.clone(),
            generation: 0,
            next_generation: 1,
            following: None,
            early: Vec::new(),
        };
        let task = tokio::spawn(run.run(cmd_rx, ev_rx));
        Ok(Call {
            cmds,
            stats,
            ended,
            task: Some(task),
            user_id: vs.login.user_id,
            ssrc: ready.ssrc,
        })
    }

    fn send(&self, c: Cmd) -> Result<(), ClientError> {
        self.cmds.send(c).map_err(|_| ClientError::Ended)
    }

    /// Stop (or resume) sending, and tell the channel (voice state `self_mute`).
    pub fn set_mute(&self, on: bool) -> Result<(), ClientError> {
        self.send(Cmd::Mute(on))
    }

    /// Stop (or resume) playing what others say, and tell the channel (`self_deaf`).
    pub fn set_deaf(&self, on: bool) -> Result<(), ClientError> {
        self.send(Cmd::Deaf(on))
    }

    /// Playback gain for one user (1.0 unchanged, 0.0 silent, at most 4.0).
    pub fn set_volume(&self, user: u64, gain: f32) -> Result<(), ClientError> {
        self.send(Cmd::Volume(user, gain))
    }

    /// `Some(pressed)`: push-to-talk, sending only while pressed. `None`: open mic.
    pub fn set_push_to_talk(&self, pressed: Option<bool>) -> Result<(), ClientError> {
        self.send(Cmd::PushToTalk(pressed))
    }

    /// Move to a new local UDP port, as when a network changes (Wi-Fi to cable, a NAT
    /// rebinding): the node follows the first authenticated packet from the new address.
    pub fn rebind(&self) -> Result<(), ClientError> {
        self.send(Cmd::Rebind)
    }

    /// The live figures (refreshed every 200 ms).
    pub fn stats(&self) -> CallStats {
        self.stats.borrow().clone()
    }

    /// Why the call ended, once it has (the server closed a connection, the network failed,
    /// or `leave`).
    pub fn ended_reason(&self) -> Option<String> {
        self.ended.borrow().clone()
    }

    /// Wait until the call ends by itself (a lost connection); the reason.
    pub async fn ended(&self) -> String {
        let mut rx = self.ended.clone();
        let why = match rx.wait_for(|e| e.is_some()).await {
            Ok(e) => e.clone().unwrap_or_default(),
            Err(_) => "the call's task is gone".to_string(),
        };
        why
    }

    pub fn user_id(&self) -> u64 {
        self.user_id
    }

    /// The SSRC the call joined with (a followed move to another voice connection sends
    /// under a new one).
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Leave the channel and close both connections; the sink is finished (files flushed).
    /// Returns the error that ended the call, if one did first.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        let _ = self.cmds.send(Cmd::Leave);
        match self.task.take() {
            Some(t) => t.await.map_err(|_| ClientError::Ended)?,
            None => Ok(()),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Leave);
    }
}

/// The call's task state.
struct Running {
    opts: JoinOptions,
    sock: UdpSocket,
    server: SocketAddr,
    engine: VoiceEngine,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    gateway: mpsc::UnboundedSender<GatewayCmd>,
    voice: mpsc::UnboundedSender<VoiceCmd>,
    stats: watch::Sender<CallStats>,
    /// The gateway's and the voice gateway's connection tasks.
    tasks: [JoinHandle<()>; 2],
    ended: watch::Sender<Option<String>>,
    /// Where the gateway tasks report (a new voice connection after a move reports here too).
    events: mpsc::UnboundedSender<VoiceEvent>,
    /// The current voice connection's login.
    login: signal::VoiceLogin,
    /// Which voice connection is current (one more per move).
    generation: u32,
    /// The number the next voice connection gets.
    next_generation: u32,
    /// A move being followed: the new voice connection's handshake, in a task of its own.
    following: Option<Following>,
    /// Events of the connection being followed to, held until it is current.
    early: Vec<VoiceEvent>,
}

/// A voice connection being made (a move followed) while the current one carries the call:
/// its own UDP socket for IP discovery, so the call's loop goes on playing and sending.
struct Following {
    generation: u32,
    task: JoinHandle<()>,
    done: oneshot::Receiver<Followed>,
}

/// A followed move's handshake, done: the new connection (or why not), its socket and login,
/// and its command channel.
struct Followed {
    ready: Result<signal::VoiceReady, ClientError>,
    sock: UdpSocket,
    login: signal::VoiceLogin,
    voice: mpsc::UnboundedSender<VoiceCmd>,
}

impl Following {
    /// Give up on this follow (a newer move came): the handshake stops, and a connection it
    /// already made is closed.
    fn abandon(mut self) {
        self.task.abort();
        if let Ok(f) = self.done.try_recv() {
            if f.ready.is_ok() {
                let _ = f.voice.send(VoiceCmd::Close);
            }
        }
    }
}

/// The follow in progress, once its handshake is over (never, without one).
async fn followed(f: &mut Option<Following>) -> Result<Followed, oneshot::error::RecvError> {
    match f {
        Some(f) => (&mut f.done).await,
        None => std::future::pending().await,
    }
}

/// How long a voice connection the server closed with 4014 (disconnected: also how a move
/// to another channel retires the old connection) waits for the VOICE_SERVER_UPDATE that
/// would continue the call elsewhere, before the call ends.
const MOVE_WAIT: Duration = Duration::from_secs(3);

/// How long following a move (the new voice connection's handshake and IP discovery) may
/// take. It runs beside the call's loop, on a socket of its own; the current connection
/// carries the call meanwhile.
const FOLLOW_WITHIN: Duration = Duration::from_secs(5);

/// How long leaving waits for each connection to say goodbye.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

impl Running {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut events: mpsc::UnboundedReceiver<VoiceEvent>,
    ) -> Result<(), ClientError> {
        let mut tick = tokio::time::interval(TICK);
        // A late tick is caught up at once: media time stays wall-clock time.
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut buf = vec![0u8; 2048];
        let mut frame = [0i16; FRAME];
        let mut mix = [0i16; TICK_SAMPLES];
        let mut last_sent = Instant::now();
        let mut ticks = 0u32;
        // The current voice connection ended with 4014: the call ends at the deadline unless
        // a move continues it.
        let mut ending: Option<(Instant, String)> = None;
        let r = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some((at, why)) = &ending {
                        if at.elapsed() >= MOVE_WAIT {
                            break Err(crate::error::protocol(why.clone()));
                        }
                    }
                    ticks = ticks.wrapping_add(1);
                    if ticks % 2 == 1 {
                        self.source.read(&mut frame);
                        match self.engine.capture(&frame) {
                            Ok(Some(pkt)) => {
                                send_media(&self.sock, self.server, &pkt).await;
                                last_sent = Instant::now();
                            }
                            Ok(None) => {}
                            Err(e) => break Err(e),
                        }
                    }
                    if let Some(sr) = self.engine.poll_report(std::time::Instant::now()) {
                        send_media(&self.sock, self.server, &sr).await;
                    }
                    if let Some(on) = self.engine.take_speaking_change() {
                        let _ = self.voice.send(VoiceCmd::Speaking(on));
                    }
                    let sink = &mut self.sink;
                    self.engine.playout(std::time::Instant::now(), &mut mix, |ssrc, user, f| {
                        sink.speaker(ssrc, user, f)
                    });
                    self.sink.mixed(&mix);
                    if last_sent.elapsed() >= KEEPALIVE {
                        send_media(&self.sock, self.server, &self.engine.ssrc().to_be_bytes()).await;
                        last_sent = Instant::now();
                    }
                    if ticks.is_multiple_of(STATS_EVERY) {
                        let _ = self.stats.send(self.engine.stats());
                    }
                }
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) if from == self.server => {
                        self.engine.receive(std::time::Instant::now(), &mut buf[..n]);
                    }
                    Ok(_) => {}
                    // An ICMP error for an earlier send, reported on this receive: transient.
                    Err(e) => tracing::debug!("receiving: {e}"),
                },
                f = followed(&mut self.following) => {
                    let generation = self.following.take().map_or(0, |f| f.generation);
                    let Ok(f) = f else { break Err(ClientError::Ended) };
                    if let Err(e) = self.switch(f, generation) {
                        break Err(e);
                    }
                    ending = None;
                    last_sent = Instant::now();
                    // What the new connection said while it was being made.
                    let mut r = Ok(());
                    for e in std::mem::take(&mut self.early) {
                        r = r.and_then(|()| self.event(e, &mut ending));
                    }
                    if let Err(e) = r {
                        break Err(e);
                    }
                }
                e = events.recv() => {
                    let Some(e) = e else { break Err(ClientError::Ended) };
                    if let Err(e) = self.event(e, &mut ending) {
                        break Err(e);
                    }
                }
                c = cmds.recv() => match c {
                    Some(Cmd::Mute(on)) => {
                        self.engine.controls.mute = on;
                        self.voice_state();
                    }
                    Some(Cmd::Deaf(on)) => {
                        self.engine.controls.deaf = on;
                        self.voice_state();
                    }
                    Some(Cmd::Volume(u, g)) => self.engine.set_volume(u, g),
                    Some(Cmd::PushToTalk(p)) => self.engine.controls.push_to_talk = p,
                    Some(Cmd::Rebind) => {
                        match UdpSocket::bind(SocketAddr::new(self.opts.bind, 0)).await {
                            Ok(sock) => self.sock = sock,
                            Err(e) => break Err(e.into()),
                        }
                        // An authenticated packet moves our address on the node; a keepalive
                        // would not. While talking, the next voice packet does it.
                        if let Some(pkt) = self.engine.silence_packet() {
                            send_media(&self.sock, self.server, &pkt).await;
                            last_sent = Instant::now();
                        }
                        tracing::info!(local = ?self.sock.local_addr().ok(), "moved to a new UDP port");
                    }
                    Some(Cmd::Leave) | None => break Ok(()),
                },
            }
        };
        let _ = self.gateway.send(GatewayCmd::VoiceState {
            channel: None,
            self_mute: self.engine.controls.mute,
            self_deaf: self.engine.controls.deaf,
        });
        if let Some(f) = self.following.take() {
            f.abandon();
        }
        let _ = self.voice.send(VoiceCmd::Close);
        let _ = self.gateway.send(GatewayCmd::Close);
        let _ = self.stats.send(self.engine.stats());
        // Both connections send their close frames before the call counts as left (a process
        // that exits right after `leave` would otherwise cut them, and the server would keep
        // the session for resuming).
        for t in &mut self.tasks {
            let _ = tokio::time::timeout(CLOSE_WAIT, t).await;
        }
        let finished = self.sink.finish();
        let why = match &r {
            Ok(()) => "left the call".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = self.ended.send(Some(why));
        r?;
        finished.map_err(ClientError::from)
    }

    /// One event of the gateways. `Err`: the call ends with it.
    fn event(
        &mut self,
        e: VoiceEvent,
        ending: &mut Option<(Instant, String)>,
    ) -> Result<(), ClientError> {
        let pending = self.following.as_ref().map(|f| f.generation);
        if e.generation().is_some() && e.generation() == pending {
            // The connection being followed to: its events count once it is current.
            self.early.push(e);
            return Ok(());
        }
        match e {
            VoiceEvent::Speaker {
                generation,
                ssrc,
                user,
            } => {
                if generation == self.generation {
                    self.engine.set_user(ssrc, user);
                }
            }
            VoiceEvent::Gone { generation, user } => {
                if generation == self.generation {
                    self.engine.user_gone(std::time::Instant::now(), user);
                }
            }
            VoiceEvent::Lost(why) => return Err(crate::error::protocol(why)),
            VoiceEvent::VoiceLost {
                generation,
                code,
                why,
            } => {
                if generation != self.generation {
                    // A moved call's old connection, closed behind us: expected.
                } else if code == Some(4014) {
                    // Unless a move is being followed already (its 4014 may come after the
                    // VOICE_SERVER_UPDATE): the follow's own deadline decides then.
                    if self.following.is_none() {
                        *ending = Some((Instant::now(), why));
                    }
                } else {
                    return Err(crate::error::protocol(why));
                }
            }
            VoiceEvent::Moved { token, endpoint } => {
                // A move follows: the call does not end with the old connection's 4014.
                *ending = None;
                self.start_follow(token, endpoint)?;
            }
            VoiceEvent::Channel(Some(c)) => {
                if c != self.opts.channel {
                    tracing::info!(channel = %c, "moved to another voice channel");
                    self.opts.channel = c;
                }
            }
            VoiceEvent::Channel(None) => {
                return Err(crate::error::protocol(
                    "disconnected from the voice channel (by a moderator, the server, or \
                     another session of this account)",
                ))
            }
        }
        Ok(())
    }

    /// Follow a VOICE_SERVER_UPDATE: a new voice connection to `endpoint` with `token`, made
    /// in a task of its own on a new UDP socket while the current connection carries the call
    /// (a newer move replaces a follow still in progress). [`Running::switch`] takes it up.
    fn start_follow(&mut self, token: String, endpoint: String) -> Result<(), ClientError> {
        if let Some(f) = self.following.take() {
            f.abandon();
        }
        self.early.clear();
        let login = signal::VoiceLogin {
            token,
            endpoint,
            ..self.login.clone()
        };
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(self.opts.bind, 0))?;
        std_sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(std_sock)?;
        let generation = self.next_generation;
        self.next_generation += 1;
        let (voice, v_rx) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        let (guild, dave, mode, via, events) = (
            self.opts.guild.clone(),
            dave_channel(&self.opts)?,
            self.opts.mode,
            self.opts.media_via,
            self.events.clone(),
        );
        let task = tokio::spawn(async move {
            let ready = tokio::time::timeout(
                FOLLOW_WITHIN,
                signal::join_voice(
                    &login, &guild, dave, &sock, mode, via, generation, events, v_rx,
                ),
            )
            .await
            .unwrap_or(Err(ClientError::Timeout(
                FOLLOW_WITHIN.as_secs(),
                "the new voice server",
            )));
            let _ = done_tx.send(Followed {
                ready,
                sock,
                login,
                voice,
            });
        });
        self.following = Some(Following {
            generation,
            task,
            done,
        });
        Ok(())
    }

    /// The followed connection is ready: it becomes the call's (its socket, SSRC, key and DAVE
    /// membership), and the old one is closed (make before break: in a drain the old node
    /// carried the media until now).
    fn switch(&mut self, f: Followed, generation: u32) -> Result<(), ClientError> {
        let ready = f.ready?;
        self.generation = generation;
        let _ = self.voice.send(VoiceCmd::Close);
        self.voice = f.voice;
        // The old task ends after its close; the new one is what leaving waits for.
        drop(std::mem::replace(&mut self.tasks[1], ready.task));
        self.sock = f.sock;
        self.server = ready.server;
        self.engine.retarget(ready.ssrc, ready.mode, &ready.key);
        self.engine.set_dave(ready.dave);
        tracing::info!(
            endpoint = %f.login.endpoint, ssrc = ready.ssrc, server = %ready.server,
            "followed the call to a new voice connection"
        );
        self.login = f.login;
        Ok(())
    }

    /// Op 4 with the current mute and deafen (the channel stays).
    fn voice_state(&self) {
        let _ = self.gateway.send(GatewayCmd::VoiceState {
            channel: Some(self.opts.channel.clone()),
            self_mute: self.engine.controls.mute,
            self_deaf: self.engine.controls.deaf,
        });
    }
}

/// The voice channel's id as DAVE's group id, when the call takes part in DAVE.
fn dave_channel(opts: &JoinOptions) -> Result<Option<u64>, ClientError> {
    if !opts.dave {
        return Ok(None);
    }
    opts.channel.parse().map(Some).map_err(|_| {
        crate::error::protocol(format!(
            "channel {:?} is not a channel id (a number)",
            opts.channel
        ))
    })
}

/// One datagram to the node; a failed send is logged, not fatal (UDP may fail transiently).
async fn send_media(sock: &UdpSocket, server: SocketAddr, d: &[u8]) {
    if let Err(e) = sock.send_to(d, server).await {
        tracing::debug!("sending to {server}: {e}");
    }
}
