// Lodge web client: accounts, guilds, channels, voice over WebRTC with speaker slots.
// Plain ES module, no build step. Talks the same Discord-shaped API as any bot library.

const API = '/api/v10';
const SLOTS = 3;
const $ = (id) => document.getElementById(id);
// A small speaker glyph (no emoji font needed).
const SPEAKER_SVG = '<svg width="14" height="14" viewBox="0 0 24 24" aria-label="voice channel"><path fill="currentColor" d="M3 9v6h4l5 4V5L7 9H3zm13.5 3a4.5 4.5 0 0 0-2.5-4v8a4.5 4.5 0 0 0 2.5-4z"/></svg>';

const state = {
  token: localStorage.getItem('lodge.token'),
  user: null,
  sessionId: null,
  guilds: new Map(),        // id -> guild (GUILD_CREATE payload)
  selectedGuild: null,
  voiceStates: new Map(),   // guildId -> Map(userId -> voice state)
  speaking: new Set(),      // userIds currently heard speaking (or me, from the mic level)
  voice: null,              // the active voice session, see joinVoice()
};

// ---------- REST ----------
async function api(method, path, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (state.token) headers.Authorization = state.token;
  const res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error(describeError(res.status, data));
  return data;
}

function describeError(status, data) {
  if (!data) return `Request failed (HTTP ${status})`;
  let msg = data.message || `HTTP ${status}`;
  if (data.errors) {
    for (const [field, v] of Object.entries(data.errors)) {
      const e = v._errors && v._errors[0];
      if (e) msg += ` — ${field}: ${e.message}`;
    }
  }
  return msg;
}

function showError(msg) { $('error').textContent = msg || ''; }

// ---------- login ----------
async function authenticate(kind) {
  $('login-error').textContent = '';
  const username = $('username').value.trim();
  const password = $('password').value;
  try {
    const r = await api('POST', kind === 'register' ? '/auth/register' : '/auth/login', { username, password });
    state.token = r.token;
    localStorage.setItem('lodge.token', r.token);
    start();
  } catch (e) {
    $('login-error').textContent = e.message;
  }
}

$('login-form').addEventListener('submit', (ev) => { ev.preventDefault(); authenticate('login'); });
$('register-btn').addEventListener('click', () => {
  if ($('login-form').reportValidity()) authenticate('register');
});
$('logout').addEventListener('click', async (ev) => {
  ev.preventDefault();
  try { await api('POST', '/auth/logout'); } catch (_) { /* token may already be invalid */ }
  localStorage.removeItem('lodge.token');
  location.reload();
});

// ---------- gateway ----------
let gw = null;
let gwSeq = null;
let gwHeartbeat = null;

async function connectGateway() {
  const { url } = await api('GET', '/gateway');
  gw = new WebSocket(url + '?v=10&encoding=json');
  $('gateway-status').textContent = 'Gateway: connecting…';
  gw.onmessage = (ev) => onGateway(JSON.parse(ev.data));
  gw.onclose = (ev) => {
    clearInterval(gwHeartbeat);
    $('gateway-status').textContent = `Gateway: disconnected (${ev.code}${ev.reason ? ': ' + ev.reason : ''}). Reconnecting in 3 s…`;
    if (ev.code === 4004) { localStorage.removeItem('lodge.token'); location.reload(); return; }
    leaveVoiceLocal('Gateway connection lost');
    setTimeout(connectGateway, 3000);
  };
}

function onGateway(msg) {
  if (msg.s != null) gwSeq = msg.s;
  switch (msg.op) {
    case 10:
      gwHeartbeat = setInterval(() => gw.send(JSON.stringify({ op: 1, d: gwSeq })), msg.d.heartbeat_interval);
      gw.send(JSON.stringify({ op: 2, d: { token: state.token, intents: 1 | 2 | 128, properties: { os: 'web', browser: 'lodge-web', device: 'lodge-web' } } }));
      break;
    case 0: onDispatch(msg.t, msg.d); break;
    case 7: gw.close(4000, 'reconnect requested'); break;
    case 9: gw.close(4000, 'invalid session'); break;
  }
}

function onDispatch(t, d) {
  switch (t) {
    case 'READY':
      state.user = d.user;
      state.sessionId = d.session_id;
      $('me').textContent = `Logged in as ${d.user.username}`;
      $('gateway-status').textContent = 'Gateway: connected';
      break;
    case 'GUILD_CREATE': {
      state.guilds.set(d.id, d);
      const vs = new Map();
      for (const v of d.voice_states || []) vs.set(v.user_id, { ...v, guild_id: d.id });
      state.voiceStates.set(d.id, vs);
      if (!state.selectedGuild) state.selectedGuild = d.id;
      render();
      break;
    }
    case 'GUILD_UPDATE': {
      const g = state.guilds.get(d.id);
      if (g) Object.assign(g, { name: d.name });
      render();
      break;
    }
    case 'GUILD_DELETE':
      state.guilds.delete(d.id);
      if (state.selectedGuild === d.id) state.selectedGuild = state.guilds.keys().next().value || null;
      render();
      break;
    case 'CHANNEL_CREATE': case 'CHANNEL_UPDATE': case 'CHANNEL_DELETE': {
      const g = state.guilds.get(d.guild_id);
      if (!g) break;
      g.channels = (g.channels || []).filter((c) => c.id !== d.id);
      if (t !== 'CHANNEL_DELETE') g.channels.push(d);
      render();
      break;
    }
    case 'GUILD_MEMBER_ADD': {
      const g = state.guilds.get(d.guild_id);
      if (g) { g.members = (g.members || []).filter((m) => m.user.id !== d.user.id); g.members.push(d); }
      break;
    }
    case 'VOICE_STATE_UPDATE': {
      const vs = state.voiceStates.get(d.guild_id) || new Map();
      state.voiceStates.set(d.guild_id, vs);
      if (d.channel_id) vs.set(d.user_id, d); else vs.delete(d.user_id);
      if (state.user && d.user_id === state.user.id && !d.channel_id && state.voice && state.voice.guildId === d.guild_id) {
        leaveVoiceLocal('Left the voice channel');
      }
      render();
      break;
    }
    case 'VOICE_SERVER_UPDATE': onVoiceServer(d); break;
    case 'LODGE_VOICE_ERROR':
      showError(`Cannot join voice: ${d.message}`);
      setVoiceStatus('error', 'Could not join');
      break;
  }
}

// ---------- rendering ----------
function userName(guildId, userId) {
  const g = state.guilds.get(guildId);
  const m = g && (g.members || []).find((m) => m.user.id === userId);
  return m ? (m.nick || m.user.global_name || m.user.username) : `user ${userId}`;
}

function render() {
  const gl = $('guild-list');
  gl.replaceChildren();
  for (const g of state.guilds.values()) {
    const li = document.createElement('li');
    li.textContent = g.name;
    li.dataset.guildId = g.id;
    if (g.id === state.selectedGuild) li.classList.add('active');
    li.onclick = () => { state.selectedGuild = g.id; render(); };
    gl.append(li);
  }
  const g = state.guilds.get(state.selectedGuild);
  $('guild-name').textContent = g ? g.name : 'No guild selected';
  $('invite-btn').hidden = !g;
  $('new-channel').hidden = !(g && state.user && g.owner_id === state.user.id);
  const cl = $('channel-list');
  cl.replaceChildren();
  if (!g) return;
  const chans = [...(g.channels || [])].sort((a, b) => (a.type - b.type) || (a.position - b.position));
  const vs = state.voiceStates.get(g.id) || new Map();
  for (const c of chans) {
    if (c.type === 4) continue;
    const li = document.createElement('li');
    li.className = 'channel';
    li.dataset.channelId = c.id;
    li.dataset.type = c.type;
    const icon = document.createElement('span');
    icon.className = 'icon';
    if (c.type === 2) icon.innerHTML = SPEAKER_SVG; else icon.textContent = '#';
    li.append(icon, document.createTextNode(' ' + c.name));
    if (state.voice && state.voice.channelId === c.id) li.classList.add('active');
    if (c.type === 2) {
      li.title = 'Join voice';
      li.onclick = () => joinVoice(g.id, c.id);
    }
    cl.append(li);
    if (c.type === 2) {
      const ul = document.createElement('ul');
      ul.className = 'voice-users';
      for (const v of vs.values()) {
        if (v.channel_id !== c.id) continue;
        const u = document.createElement('li');
        u.dataset.userId = v.user_id;
        u.textContent = userName(g.id, v.user_id);
        if (state.speaking.has(v.user_id)) u.classList.add('speaking');
        const flags = [];
        if (v.self_mute || v.mute) flags.push('muted');
        if (v.self_deaf || v.deaf) flags.push('deafened');
        if (flags.length) {
          const f = document.createElement('span');
          f.className = 'flags';
          f.textContent = `(${flags.join(', ')})`;
          u.append(f);
        }
        ul.append(u);
      }
      cl.append(ul);
    }
  }
}

$('new-guild').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const g = await api('POST', '/guilds', { name: $('new-guild-name').value });
    state.selectedGuild = g.id;
    $('new-guild-name').value = '';
    render();
  } catch (e) { showError(`Cannot create guild: ${e.message}`); }
});

$('join-invite').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const inv = await api('POST', `/invites/${encodeURIComponent($('invite-code').value.trim())}`);
    state.selectedGuild = inv.guild.id;
    $('invite-code').value = '';
    render();
  } catch (e) { showError(`Cannot join: ${e.message}`); }
});

$('invite-btn').addEventListener('click', async () => {
  const g = state.guilds.get(state.selectedGuild);
  const text = (g.channels || []).find((c) => c.type === 0) || (g.channels || [])[0];
  try {
    const inv = await api('POST', `/channels/${text.id}/invites`, { max_age: 86400 });
    $('invite-out').textContent = `Invite code: ${inv.code}`;
    $('invite-out').dataset.code = inv.code;
  } catch (e) { showError(`Cannot create invite: ${e.message}`); }
});

$('new-channel').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    await api('POST', `/guilds/${state.selectedGuild}/channels`, { name: $('new-channel-name').value, type: Number($('new-channel-type').value) });
    $('new-channel-name').value = '';
  } catch (e) { showError(`Cannot create channel: ${e.message}`); }
});

// ---------- voice ----------
function setVoiceStatus(kind, text) {
  const el = $('voice-status');
  el.dataset.state = kind;
  el.textContent = text;
  const active = !!state.voice;
  $('mute-btn').disabled = !active;
  $('deafen-btn').disabled = !active;
  $('leave-btn').disabled = !active;
}

const VOICE_CLOSE = {
  4001: 'the server did not understand a message', 4002: 'the server refused a message',
  4003: 'not identified', 4004: 'voice token refused', 4005: 'already connected',
  4006: 'voice session no longer valid', 4009: 'voice session timed out', 4011: 'voice server not found',
  4012: 'protocol not supported', 4014: 'disconnected by the server', 4015: 'voice server restarted',
};

async function joinVoice(guildId, channelId) {
  showError('');
  if (state.voice && state.voice.channelId === channelId) return;
  if (state.voice) leaveVoiceLocal(null);
  let mic;
  try {
    // Raw capture: processing off so levels are real and the audio-level extension is honest.
    mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (e) {
    showError(`Microphone unavailable: ${e.message}. Allow microphone access and try again.`);
    return;
  }
  state.voice = { guildId, channelId, mic, muted: false, deafened: false, pc: null, ws: null, slots: new Map(), slotUser: new Map(), audio: new Map(), timer: null };
  setVoiceStatus('connecting', 'Requesting voice server…');
  $('voice-channel').textContent = channelName(guildId, channelId);
  sendVoiceState();
  render();
}

function channelName(guildId, channelId) {
  const g = state.guilds.get(guildId);
  const c = g && (g.channels || []).find((c) => c.id === channelId);
  return c ? `${c.name} in ${g.name}` : '';
}

function sendVoiceState() {
  const v = state.voice;
  gw.send(JSON.stringify({ op: 4, d: { guild_id: v.guildId, channel_id: v.channelId, self_mute: v.muted, self_deaf: v.deafened } }));
}

function onVoiceServer(d) {
  const v = state.voice;
  if (!v || v.guildId !== d.guild_id) return;
  if (v.ws) { v.ws.onclose = null; v.ws.close(); }
  if (v.pc) v.pc.close();
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  setVoiceStatus('connecting', 'Connecting to voice…');
  const ws = new WebSocket(`${scheme}://${d.endpoint}/?v=8`);
  v.ws = ws;
  let hb = null;
  ws.onmessage = async (ev) => {
    const msg = JSON.parse(ev.data);
    switch (msg.op) {
      case 8:
        hb = setInterval(() => ws.send(JSON.stringify({ op: 3, d: { t: Date.now(), seq_ack: msg.seq ?? -1 } })), msg.d.heartbeat_interval);
        ws.send(JSON.stringify({ op: 0, d: { server_id: d.guild_id, user_id: state.user.id, session_id: state.sessionId, token: d.token } }));
        break;
      case 2: await startWebRtc(v); break;
      case 4: await onSessionDescription(v, msg.d); break;
      case 5: onSpeaking(v, msg.d); break;
      case 11: case 13: break; // membership is shown from voice states
    }
  };
  ws.onclose = (ev) => {
    clearInterval(hb);
    if (state.voice !== v) return;
    const why = VOICE_CLOSE[ev.code] || `connection closed (${ev.code})`;
    leaveVoiceLocal(`Voice disconnected: ${why}${ev.reason ? ' — ' + ev.reason : ''}`);
  };
}

async function startWebRtc(v) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  v.pc = pc;
  pc.addTransceiver(v.mic.getAudioTracks()[0], { direction: 'sendonly' });
  for (let i = 0; i < SLOTS; i++) pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (ev) => {
    const el = document.createElement('audio');
    el.autoplay = true;
    el.muted = v.deafened;
    el.srcObject = new MediaStream([ev.track]);
    el.dataset.mid = ev.transceiver.mid;
    $('audio-sink').append(el);
    v.audio.set(ev.transceiver.mid, el);
  };
  pc.onconnectionstatechange = () => {
    const s = pc.connectionState;
    if (s === 'connected') setVoiceStatus('connected', 'Voice connected');
    else if (s === 'failed') setVoiceStatus('error', 'Media connection failed (UDP blocked?)');
    else if (s === 'disconnected') setVoiceStatus('connecting', 'Media connection interrupted…');
    else if (s === 'connecting') setVoiceStatus('connecting', 'Connecting media…');
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  // ICE is not trickled: wait for gathering to finish so the offer carries our candidates.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    const t = setTimeout(resolve, 3000);
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); } });
  });
  v.ws.send(JSON.stringify({ op: 1, d: { protocol: 'webrtc', data: { sdp: pc.localDescription.sdp }, slots: SLOTS } }));
  setVoiceStatus('connecting', 'Negotiating media…');
}

async function onSessionDescription(v, d) {
  for (const s of d.slots) v.slots.set(s.ssrc, s.mid);
  await v.pc.setRemoteDescription({ type: 'answer', sdp: d.sdp });
  v.timer = setInterval(() => pollLevels(v), 250);
}

function onSpeaking(v, d) {
  if (d.speaking) v.slotUser.set(d.ssrc, d.user_id);
  else if (v.slotUser.get(d.ssrc) === d.user_id) v.slotUser.delete(d.ssrc);
}

// Per-slot receive figures, also used by the browser tests.
async function slotStats() {
  const v = state.voice;
  if (!v || !v.pc) return [];
  const out = [];
  for (const tr of v.pc.getTransceivers()) {
    if (tr.direction !== 'recvonly' || !tr.receiver) continue;
    const report = await tr.receiver.getStats();
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      out.push({ mid: tr.mid, ssrc: s.ssrc, packetsReceived: s.packetsReceived || 0, audioLevel: s.audioLevel || 0, user: v.slotUser.get(s.ssrc) || null });
    });
  }
  return out;
}

async function micLevel() {
  const v = state.voice;
  if (!v || !v.pc) return 0;
  let level = 0;
  (await v.pc.getStats()).forEach((s) => { if (s.type === 'media-source' && s.kind === 'audio') level = s.audioLevel || 0; });
  return level;
}

async function pollLevels(v) {
  if (state.voice !== v) return;
  const speaking = new Set();
  for (const s of await slotStats()) if (s.user && s.audioLevel > 0.01) speaking.add(s.user);
  if (!v.muted && (await micLevel()) > 0.01) speaking.add(state.user.id);
  const changed = speaking.size !== state.speaking.size || [...speaking].some((u) => !state.speaking.has(u));
  state.speaking = speaking;
  if (changed) render();
}

$('mute-btn').addEventListener('click', () => {
  const v = state.voice;
  if (!v) return;
  v.muted = !v.muted;
  v.mic.getAudioTracks().forEach((t) => { t.enabled = !v.muted; });
  $('mute-btn').setAttribute('aria-pressed', String(v.muted));
  $('mute-btn').textContent = v.muted ? 'Unmute' : 'Mute';
  sendVoiceState();
});

$('deafen-btn').addEventListener('click', () => {
  const v = state.voice;
  if (!v) return;
  v.deafened = !v.deafened;
  for (const el of v.audio.values()) el.muted = v.deafened;
  $('deafen-btn').setAttribute('aria-pressed', String(v.deafened));
  $('deafen-btn').textContent = v.deafened ? 'Undeafen' : 'Deafen';
  sendVoiceState();
});

$('leave-btn').addEventListener('click', () => {
  const v = state.voice;
  if (!v) return;
  gw.send(JSON.stringify({ op: 4, d: { guild_id: v.guildId, channel_id: null, self_mute: false, self_deaf: false } }));
  leaveVoiceLocal('Left the voice channel');
});

function leaveVoiceLocal(reason) {
  const v = state.voice;
  if (!v) return;
  state.voice = null;
  clearInterval(v.timer);
  if (v.ws) { v.ws.onclose = null; v.ws.close(); }
  if (v.pc) v.pc.close();
  v.mic.getTracks().forEach((t) => t.stop());
  $('audio-sink').replaceChildren();
  $('voice-channel').textContent = '';
  $('mute-btn').textContent = 'Mute'; $('mute-btn').setAttribute('aria-pressed', 'false');
  $('deafen-btn').textContent = 'Deafen'; $('deafen-btn').setAttribute('aria-pressed', 'false');
  state.speaking = new Set();
  setVoiceStatus(reason && reason.startsWith('Voice disconnected') ? 'error' : 'idle', reason || 'Not in a voice channel');
  render();
}

// ---------- start ----------
async function start() {
  $('login').hidden = true;
  $('app').hidden = false;
  try {
    await connectGateway();
  } catch (e) {
    $('gateway-status').textContent = `Gateway: ${e.message}`;
  }
}

// Hooks for automated browser tests and curious users.
window.lodge = { state, slotStats, micLevel };

if (state.token) start(); else $('login').hidden = false;
