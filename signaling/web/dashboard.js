// Lodge call-quality dashboard: one WebSocket to /api/v10/quality/live, a snapshot every 2 s.
'use strict';

const $ = (id) => document.getElementById(id);
const dash = { last: null, ws: null };
window.dashboard = dash;

const num = (v, digits = 1) => (v === null || v === undefined || Number.isNaN(v) ? '–' : Number(v).toFixed(digits));

// Which cells are bad, by the thresholds the server sends.
function badness(p, t) {
  const loss = Math.max(p.loss_in_pct ?? 0, p.loss_out_pct ?? 0);
  const jitter = Math.max(p.jitter_in_ms ?? 0, p.jitter_out_ms ?? 0);
  return {
    rtt: p.rtt_ms !== null && p.rtt_ms !== undefined && p.rtt_ms > t.rtt_ms,
    jitter: jitter > t.jitter_ms,
    loss: loss > t.loss_pct,
    mos: p.mos_estimate !== null && p.mos_estimate !== undefined && p.mos_estimate < t.mos,
  };
}

function cell(text, field, bad, user) {
  const td = document.createElement('td');
  td.textContent = text;
  td.dataset.field = field;
  if (user) td.dataset.user = user;
  if (bad !== undefined) td.className = bad ? 'bad' : 'ok';
  return td;
}

function renderChannels(d) {
  const root = $('channels');
  root.replaceChildren();
  if (!d.channels.length) {
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = 'No active voice channels.';
    root.append(p);
  }
  for (const c of d.channels) {
    const h = document.createElement('h3');
    h.textContent = `${c.name} (${c.participants.length})`;
    const table = document.createElement('table');
    table.dataset.channel = c.id;
    table.innerHTML = '<thead><tr><th>user</th><th>packets in/out</th><th>loss in %</th><th>loss out %</th><th>jitter in/out ms</th><th>RTT ms</th><th>slot switches</th><th>MOS (est.)</th></tr></thead>';
    const body = document.createElement('tbody');
    for (const p of c.participants) {
      const b = badness(p, d.thresholds);
      const tr = document.createElement('tr');
      tr.dataset.user = p.user_id;
      tr.append(
        cell(p.user_id + (p.muted ? ' (muted)' : '') + (p.connected ? '' : ' (connecting)'), 'user'),
        cell(`${p.packets_in} / ${p.packets_out}`, 'packets'),
        cell(num(p.loss_in_pct, 2), 'loss_in', (p.loss_in_pct ?? 0) > d.thresholds.loss_pct, p.user_id),
        cell(num(p.loss_out_pct, 2), 'loss_out', (p.loss_out_pct ?? 0) > d.thresholds.loss_pct, p.user_id),
        cell(`${num(p.jitter_in_ms)} / ${num(p.jitter_out_ms)}`, 'jitter', b.jitter, p.user_id),
        cell(num(p.rtt_ms), 'rtt', b.rtt, p.user_id),
        cell(String(p.slot_switches), 'slot_switches'),
        cell(num(p.mos_estimate, 2), 'mos', b.mos, p.user_id),
      );
      body.append(tr);
    }
    table.append(body);
    root.append(h, table);
  }
}

function renderCalls(d) {
  const body = $('calls').querySelector('tbody');
  body.replaceChildren();
  for (const c of d.recent_calls) {
    const tr = document.createElement('tr');
    tr.dataset.call = c.id;
    const mosBad = c.mos_estimate !== null && c.mos_estimate < d.thresholds.mos;
    tr.append(
      cell(c.user_id, 'user'),
      cell(c.channel_id, 'channel'),
      cell(new Date(c.ended_at).toLocaleTimeString(), 'ended'),
      cell(`${(c.duration_ms / 1000).toFixed(0)} s`, 'duration'),
      cell(`${num(c.loss_in_pct, 2)} / ${num(c.loss_out_pct, 2)}`, 'loss', Math.max(c.loss_in_pct ?? 0, c.loss_out_pct ?? 0) > d.thresholds.loss_pct),
      cell(`${num(c.jitter_mean_ms)} / ${num(c.jitter_p95_ms)}`, 'jitter', (c.jitter_mean_ms ?? 0) > d.thresholds.jitter_ms),
      cell(num(c.rtt_mean_ms), 'rtt', (c.rtt_mean_ms ?? 0) > d.thresholds.rtt_ms),
      cell(num(c.mos_estimate, 2), 'mos', mosBad),
      cell(c.end_reason, 'end'),
    );
    body.append(tr);
  }
}

function renderChart(d) {
  const cv = $('chart');
  const g = cv.getContext('2d');
  const W = cv.width, H = cv.height, pad = 30;
  g.clearRect(0, 0, W, H);
  const pts = d.timeline;
  if (pts.length < 2) return;
  const maxPps = Math.max(10, ...pts.map((p) => Math.max(p.pps_in, p.pps_out)));
  const maxPart = Math.max(2, ...pts.map((p) => p.participants));
  const x = (i) => pad + (i / (pts.length - 1)) * (W - 2 * pad);
  const line = (vals, max, colour) => {
    g.strokeStyle = colour; g.lineWidth = 2; g.beginPath();
    vals.forEach((v, i) => { const y = H - pad - (v / max) * (H - 2 * pad); if (i) g.lineTo(x(i), y); else g.moveTo(x(i), y); });
    g.stroke();
  };
  g.fillStyle = '#9aa0a6'; g.font = '12px system-ui';
  g.fillText(`${Math.round(maxPps)} pps`, 2, pad - 8);
  g.fillText(`${maxPart}`, W - pad + 4, pad - 8);
  line(pts.map((p) => p.pps_in), maxPps, '#5865f2');
  line(pts.map((p) => p.pps_out), maxPps, '#23a55a');
  line(pts.map((p) => p.participants), maxPart, '#f0b232');
}

function render(d) {
  dash.last = d;
  const last = d.timeline[d.timeline.length - 1];
  $('t-participants').textContent = d.node ? d.node.participants : '–';
  $('t-rooms').textContent = d.node ? d.node.rooms : '–';
  $('t-pps-in').textContent = last ? Math.round(last.pps_in) : '–';
  $('t-pps-out').textContent = last ? Math.round(last.pps_out) : '–';
  $('t-cpu').textContent = last && last.cpu_pct !== null ? `${last.cpu_pct.toFixed(0)}%` : '–';
  renderChart(d);
  renderChannels(d);
  renderCalls(d);
  $('status').textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  $('status').dataset.state = 'live';
}

function connect(hello) {
  $('login-card').hidden = true;
  $('dash').hidden = false;
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${location.host}/api/v10/quality/live`);
  dash.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify(hello));
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.t === 'snapshot' && !m.d.error) render(m.d);
  };
  ws.onclose = (e) => {
    $('status').dataset.state = 'closed';
    if (e.code === 4004) {
      $('dash').hidden = true; $('login-card').hidden = false;
      $('login-error').textContent = e.reason || 'refused';
      return;
    }
    $('status').textContent = `disconnected (${e.code}); retrying…`;
    setTimeout(() => connect(hello), 2000);
  };
}

$('op-form').addEventListener('submit', (e) => {
  e.preventDefault();
  connect({ operator_token: $('op-token').value });
});

const token = localStorage.getItem('lodge.token');
if (token) connect({ token });
else $('login-card').hidden = false;
