// Lodge web client: accounts, guilds, channels, voice over WebRTC with speaker slots.
// Plain ES module, no build step. Talks the same Discord-shaped API as any bot library.

const API = '/api/v10';
// Speakers heard at once: 3, or ?slots=N (1..=16) in a guild whose operator capped slots below
// 3 (the max_slots switch refuses an offer with more receive lines than the cap).
const SLOTS = (() => {
  const n = Number(new URLSearchParams(location.search).get('slots'));
  return Number.isInteger(n) && n >= 1 && n <= 16 ? n : 3;
})();
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
  text: null,               // the open text channel, see openText()
  unread: new Map(),        // channelId -> messages not seen yet
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
      gw.send(JSON.stringify({ op: 2, d: { token: state.token, intents: 1 | 2 | 128 | 256 | 512 | 1024 | 2048 | 32768, properties: { os: 'web', browser: 'lodge-web', device: 'lodge-web' } } }));
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
      if (t === 'CHANNEL_DELETE' && state.text && state.text.channelId === d.id) closeText();
      render();
      renderOwnerTools();
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
    case 'MESSAGE_CREATE': onMessageCreate(d); break;
    case 'MESSAGE_UPDATE': onMessageUpdate(d); break;
    case 'MESSAGE_DELETE': onMessageDelete(d); break;
    case 'MESSAGE_REACTION_ADD': onReaction(d, +1); break;
    case 'MESSAGE_REACTION_REMOVE': onReaction(d, -1); break;
    case 'TYPING_START': onTyping(d); break;
    case 'GUILD_ROLE_CREATE': case 'GUILD_ROLE_UPDATE': {
      const g = state.guilds.get(d.guild_id);
      if (g) { g.roles = (g.roles || []).filter((r) => r.id !== d.role.id); g.roles.push(d.role); renderOwnerTools(); }
      break;
    }
    case 'GUILD_ROLE_DELETE': {
      const g = state.guilds.get(d.guild_id);
      if (g) { g.roles = (g.roles || []).filter((r) => r.id !== d.role_id); renderOwnerTools(); }
      break;
    }
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
    if (state.text && state.text.channelId === c.id) li.classList.add('active');
    if (c.type === 2) {
      li.title = 'Join voice';
      li.onclick = () => joinVoice(g.id, c.id);
    } else {
      li.title = 'Open channel';
      li.onclick = () => openText(g.id, c.id);
      const n = state.unread.get(c.id) || 0;
      if (n > 0) {
        const b = document.createElement('span');
        b.className = 'unread';
        b.textContent = String(n);
        li.append(b);
      }
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

// Lodge's placement hint: open the page with ?region=eu to be placed on an edge of that region.
const VOICE_REGION = new URLSearchParams(location.search).get('region');

function sendVoiceState() {
  const v = state.voice;
  const d = { guild_id: v.guildId, channel_id: v.channelId, self_mute: v.muted, self_deaf: v.deafened };
  if (VOICE_REGION) d.region = VOICE_REGION;
  gw.send(JSON.stringify({ op: 4, d }));
}

// A voice connection that drops without a close frame (its server went away) may be followed
// by a VOICE_SERVER_UPDATE moving the call; wait this long for it before giving up.
const VOICE_MOVE_WAIT_MS = 10000;

function onVoiceServer(d) {
  const v = state.voice;
  if (!v || v.guildId !== d.guild_id) return;
  clearTimeout(v.moveTimer);
  if (v.ws) { v.ws.onclose = null; v.ws.close(); }
  if (v.pc) v.pc.close();
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  setVoiceStatus('connecting', 'Connecting to voice…');
  const ws = new WebSocket(`${scheme}://${d.endpoint}/?v=8`);
  v.ws = ws;
  let hb = null;
  let lastSeq = -1; // the last numbered message seen: heartbeats acknowledge it (v8)
  ws.onmessage = async (ev) => {
    const msg = JSON.parse(ev.data);
    if (typeof msg.seq === 'number') lastSeq = msg.seq;
    switch (msg.op) {
      case 8:
        // Leaving or moving closes the socket without its onclose: the interval ends itself.
        hb = setInterval(() => {
          if (ws.readyState !== WebSocket.OPEN) { clearInterval(hb); return; }
          ws.send(JSON.stringify({ op: 3, d: { t: Date.now(), seq_ack: lastSeq } }));
        }, msg.d.heartbeat_interval);
        ws.send(JSON.stringify({ op: 0, d: { server_id: d.guild_id, user_id: state.user.id, session_id: state.sessionId, token: d.token } }));
        break;
      case 2: await startWebRtc(v, msg.d.ice_servers || []); break;
      case 4: await onSessionDescription(v, msg.d); break;
      case 5: onSpeaking(v, msg.d); break;
      case 11: case 13: break; // membership is shown from voice states
    }
  };
  ws.onclose = (ev) => {
    clearInterval(hb);
    if (state.voice !== v) return;
    const why = VOICE_CLOSE[ev.code] || `connection closed (${ev.code})`;
    if (ev.code === 1006) {
      // The voice server vanished: the server may move the call (VOICE_SERVER_UPDATE).
      setVoiceStatus('connecting', 'Voice server lost — waiting to be moved…');
      v.moveTimer = setTimeout(() => {
        if (state.voice === v) leaveVoiceLocal(`Voice disconnected: ${why}`);
      }, VOICE_MOVE_WAIT_MS);
      return;
    }
    leaveVoiceLocal(`Voice disconnected: ${why}${ev.reason ? ' — ' + ev.reason : ''}`);
  };
}

// iceServers: the node's TURN relays with this connection's credential (Ready's ice_servers),
// used when UDP to the media port is blocked.
async function startWebRtc(v, iceServers) {
  const pc = new RTCPeerConnection({ iceServers });
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
  clearTimeout(v.moveTimer);
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


// ---------- text chat ----------
function fmtTime(iso) {
  const d = new Date(iso);
  return d.toLocaleString();
}

function canModerate() {
  const g = state.text && state.guilds.get(state.text.guildId);
  return !!(g && state.user && g.owner_id === state.user.id);
}

async function openText(guildId, channelId) {
  showError('');
  const g = state.guilds.get(guildId);
  const c = g && (g.channels || []).find((x) => x.id === channelId);
  if (!c) return;
  state.text = { guildId, channelId, messages: [], more: true, loading: false, replyTo: null, typing: new Map(), lastTyping: 0 };
  state.unread.delete(channelId);
  $('chat-title').textContent = '# ' + c.name;
  $('composer').hidden = false;
  $('search-form').hidden = false;
  $('search-results').hidden = true;
  setReply(null);
  render();
  renderOwnerTools();
  await loadOlder();
  $('messages').scrollTop = $('messages').scrollHeight;
}

function closeText() {
  state.text = null;
  $('chat-title').textContent = 'Pick a text channel';
  $('composer').hidden = true;
  $('search-form').hidden = true;
  $('messages').replaceChildren();
  renderOwnerTools();
}

async function loadOlder() {
  const t = state.text;
  if (!t || t.loading || !t.more) return;
  t.loading = true;
  const oldest = t.messages[0];
  const q = oldest ? `?limit=50&before=${oldest.id}` : '?limit=50';
  try {
    const page = await api('GET', `/channels/${t.channelId}/messages${q}`);
    if (state.text !== t) return;
    if (page.length < 50) t.more = false;
    const box = $('messages');
    const before = box.scrollHeight;
    t.messages = page.reverse().concat(t.messages);
    renderMessages();
    box.scrollTop += box.scrollHeight - before;
  } catch (e) {
    showError(`Cannot load messages: ${e.message}`);
  } finally {
    t.loading = false;
  }
}

$('messages').addEventListener('scroll', () => { if ($('messages').scrollTop < 40) loadOlder(); });

function messageEl(m) {
  const el = document.createElement('div');
  el.className = 'msg';
  el.dataset.id = m.id;
  if (m.referenced_message) {
    const r = document.createElement('div');
    r.className = 'reply-ref';
    r.textContent = `↪ ${m.referenced_message.author.username}: ${m.referenced_message.content.slice(0, 80)}`;
    el.append(r);
  } else if (m.message_reference) {
    const r = document.createElement('div');
    r.className = 'reply-ref';
    r.textContent = '↪ (deleted message)';
    el.append(r);
  }
  const actions = document.createElement('span');
  actions.className = 'actions';
  const act = (label, fn, cls) => { const b = document.createElement('button'); b.type = 'button'; b.textContent = label; b.className = cls; b.onclick = fn; actions.append(b); };
  act('Reply', () => setReply(m), 'reply');
  act('👍', () => toggleReaction(m, '👍'), 'react');
  const mine = state.user && m.author.id === state.user.id;
  if (mine) act('Edit', () => editMessage(m), 'edit');
  if (mine || canModerate()) act('Delete', () => deleteMessage(m), 'delete');
  el.append(actions);
  const meta = document.createElement('div');
  meta.className = 'meta';
  const who = document.createElement('span');
  who.className = 'author';
  who.textContent = m.author.global_name || m.author.username;
  meta.append(who, document.createTextNode(fmtTime(m.timestamp)));
  const content = document.createElement('div');
  content.className = 'content';
  content.textContent = m.content;
  if (m.edited_timestamp) {
    const e = document.createElement('span');
    e.className = 'edited';
    e.textContent = ' (edited)';
    content.append(e);
  }
  el.append(meta, content);
  if (m.reactions && m.reactions.length) {
    const rs = document.createElement('div');
    rs.className = 'reactions';
    for (const r of m.reactions) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = r.me ? 'me' : '';
      b.textContent = `${r.emoji.name} ${r.count}`;
      b.onclick = () => toggleReaction(m, r.emoji.name);
      rs.append(b);
    }
    el.append(rs);
  }
  return el;
}

function renderMessages() {
  const t = state.text;
  const box = $('messages');
  box.replaceChildren(...(t ? t.messages.map(messageEl) : []));
}

function atBottom() {
  const box = $('messages');
  return box.scrollHeight - box.scrollTop - box.clientHeight < 60;
}

function onMessageCreate(m) {
  const t = state.text;
  if (t && t.channelId === m.channel_id) {
    if (t.messages.some((x) => x.id === m.id)) return;
    const stick = atBottom() || (state.user && m.author.id === state.user.id);
    t.messages.push(m);
    t.typing.delete(m.author.id);
    renderTyping();
    renderMessages();
    if (stick) $('messages').scrollTop = $('messages').scrollHeight;
  } else if (!state.user || m.author.id !== state.user.id) {
    state.unread.set(m.channel_id, (state.unread.get(m.channel_id) || 0) + 1);
    render();
  }
}

function onMessageUpdate(m) {
  const t = state.text;
  if (!t || t.channelId !== m.channel_id) return;
  const i = t.messages.findIndex((x) => x.id === m.id);
  if (i < 0) return;
  // Gateway payloads carry no per-viewer reaction state: keep ours.
  t.messages[i] = { ...m, reactions: t.messages[i].reactions };
  renderMessages();
}

function onMessageDelete(d) {
  const t = state.text;
  if (!t || t.channelId !== d.channel_id) return;
  t.messages = t.messages.filter((x) => x.id !== d.id);
  renderMessages();
}

function onReaction(d, delta) {
  const t = state.text;
  if (!t || t.channelId !== d.channel_id) return;
  const m = t.messages.find((x) => x.id === d.message_id);
  if (!m) return;
  m.reactions = m.reactions || [];
  let r = m.reactions.find((x) => x.emoji.name === d.emoji.name);
  if (!r) { r = { count: 0, me: false, emoji: d.emoji }; m.reactions.push(r); }
  r.count += delta;
  if (state.user && d.user_id === state.user.id) r.me = delta > 0;
  m.reactions = m.reactions.filter((x) => x.count > 0);
  renderMessages();
}

function onTyping(d) {
  const t = state.text;
  if (!t || t.channelId !== d.channel_id || (state.user && d.user_id === state.user.id)) return;
  clearTimeout(t.typing.get(d.user_id));
  t.typing.set(d.user_id, setTimeout(() => { t.typing.delete(d.user_id); renderTyping(); }, 9000));
  renderTyping();
}

function renderTyping() {
  const t = state.text;
  const names = t ? [...t.typing.keys()].map((u) => userName(t.guildId, u)) : [];
  $('typing').textContent = names.length ? `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} typing…` : '';
}

function setReply(m) {
  if (state.text) state.text.replyTo = m;
  $('reply-bar').hidden = !m;
  $('reply-text').textContent = m ? `Replying to ${m.author.username}: ${m.content.slice(0, 60)}` : '';
  if (m) $('composer-input').focus();
}
$('reply-cancel').addEventListener('click', () => setReply(null));

$('composer').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const t = state.text;
  const input = $('composer-input');
  const content = input.value;
  if (!t || !content.trim()) return;
  const body = { content, nonce: String(Date.now()) + Math.floor(Math.random() * 1000), enforce_nonce: true };
  if (t.replyTo) body.message_reference = { message_id: t.replyTo.id };
  try {
    const m = await api('POST', `/channels/${t.channelId}/messages`, body);
    input.value = '';
    setReply(null);
    onMessageCreate(m);
  } catch (e) { showError(`Not sent: ${e.message}`); }
});

$('composer-input').addEventListener('input', () => {
  const t = state.text;
  if (!t || Date.now() - t.lastTyping < 8000) return;
  t.lastTyping = Date.now();
  api('POST', `/channels/${t.channelId}/typing`).catch(() => {});
});

async function editMessage(m) {
  const content = prompt('Edit message', m.content);
  if (content === null || content === m.content) return;
  try { await api('PATCH', `/channels/${m.channel_id}/messages/${m.id}`, { content }); } catch (e) { showError(`Not edited: ${e.message}`); }
}

async function deleteMessage(m) {
  try { await api('DELETE', `/channels/${m.channel_id}/messages/${m.id}`); } catch (e) { showError(`Not deleted: ${e.message}`); }
}

async function toggleReaction(m, emoji) {
  const r = (m.reactions || []).find((x) => x.emoji.name === emoji);
  const path = `/channels/${m.channel_id}/messages/${m.id}/reactions/${encodeURIComponent(emoji)}/@me`;
  try { await api(r && r.me ? 'DELETE' : 'PUT', path); } catch (e) { showError(`Reaction failed: ${e.message}`); }
}

$('search-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const t = state.text;
  const q = $('search-input').value.trim();
  const box = $('search-results');
  if (!t || !q) { box.hidden = true; return; }
  try {
    const r = await api('GET', `/guilds/${t.guildId}/messages/search?content=${encodeURIComponent(q)}`);
    const g = state.guilds.get(t.guildId);
    const head = document.createElement('div');
    head.className = 'muted';
    head.textContent = `${r.total_results} result${r.total_results === 1 ? '' : 's'} for “${q}”`;
    const items = r.messages.map(([m]) => {
      const c = (g.channels || []).find((x) => x.id === m.channel_id);
      const d = document.createElement('div');
      d.className = 'hit';
      d.textContent = `#${c ? c.name : '?'} · ${m.author.username}: ${m.content}`;
      return d;
    });
    box.replaceChildren(head, ...items);
    box.hidden = false;
  } catch (e) { showError(`Search failed: ${e.message}`); }
});

// ---------- owner tools: roles and channel permissions ----------
const PERM = { VIEW_CHANNEL: 1n << 10n, SEND_MESSAGES: 1n << 11n, CONNECT: 1n << 20n, SPEAK: 1n << 21n, MUTE_MEMBERS: 1n << 22n, MANAGE_MESSAGES: 1n << 13n };

function renderOwnerTools() {
  const show = !!state.text && canModerate();
  $('owner-tools').hidden = !show;
  if (!show) return;
  const g = state.guilds.get(state.text.guildId);
  const roles = [...(g.roles || [])].sort((a, b) => b.position - a.position);
  $('role-list').replaceChildren(...roles.map((r) => {
    const li = document.createElement('li');
    li.textContent = `${r.name} (position ${r.position})`;
    if (r.id !== g.id) {
      const del = document.createElement('button');
      del.type = 'button'; del.className = 'secondary small'; del.textContent = 'Delete';
      del.onclick = () => api('DELETE', `/guilds/${g.id}/roles/${r.id}`).catch((e) => showError(e.message));
      li.append(' ', del);
    }
    return li;
  }));
  const c = (g.channels || []).find((x) => x.id === state.text.channelId);
  $('perm-channel').textContent = c ? '#' + c.name : 'this channel';
  const ow = (c && c.permission_overwrites || []).find((o) => o.id === g.id);
  const deny = BigInt(ow ? ow.deny : '0');
  $('perm-toggles').replaceChildren(...['VIEW_CHANNEL', 'SEND_MESSAGES'].map((name) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'small';
    const denied = (deny & PERM[name]) !== 0n;
    b.setAttribute('aria-pressed', String(denied));
    b.dataset.perm = name;
    b.textContent = `${denied ? 'Denied' : 'Allowed'}: ${name}`;
    b.onclick = () => {
      const next = denied ? deny & ~PERM[name] : deny | PERM[name];
      api('PUT', `/channels/${c.id}/permissions/${g.id}`, { type: 0, allow: ow ? ow.allow : '0', deny: next.toString() }).catch((e) => showError(e.message));
    };
    return b;
  }));
}

$('new-role').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const g = state.text && state.guilds.get(state.text.guildId);
  if (!g) return;
  let bits = 0n;
  if ($('new-role-mute').checked) bits |= PERM.MUTE_MEMBERS;
  if ($('new-role-manage').checked) bits |= PERM.MANAGE_MESSAGES;
  try {
    await api('POST', `/guilds/${g.id}/roles`, { name: $('new-role-name').value, permissions: bits.toString() });
    $('new-role-name').value = '';
  } catch (e) { showError(`Cannot create role: ${e.message}`); }
});

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
window.lodge = { state, slotStats, micLevel, openText };

if (state.token) start(); else $('login').hidden = false;
