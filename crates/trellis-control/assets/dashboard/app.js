// Trellis dashboard: vanilla JavaScript, no build step. It reads /dashboard/api/* (cookie
// session), keeps current through the server-sent events of /dashboard/api/events, and draws
// the service graph as SVG with a deterministic layered layout (same input, same picture).
'use strict';

const S = {
  view: 'topology', service: null, window: 60, topo: null, status: null, svc: null,
  filter: '', showIdle: false, es: null, taps: {},
};
const SVG_NS = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of kids) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function sv(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'text') e.textContent = v; else if (k === 'class') e.setAttribute('class', v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of kids) if (c) e.append(c);
  return e;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
const fmtRps = (x) => (x === null || x === undefined) ? '-' : (x >= 100 ? x.toFixed(0) : x.toFixed(2));
const fmtPct = (x) => (x === null || x === undefined) ? '-' : (x * 100).toFixed(x === 1 ? 0 : 1) + '%';
const fmtMs = (x) => (x === null || x === undefined) ? '-' : (x >= 100 ? x.toFixed(0) : x.toFixed(1)) + ' ms';
const shortName = (id) => id.startsWith('default/') ? id.slice(8) : id;

// ---- Navigation ---------------------------------------------------------------------------
function route() {
  const h = location.hash.replace(/^#\/?/, '');
  const parts = h.split('/');
  let view = parts[0] || 'topology', service = null;
  if (view === 'service' && parts.length >= 3) service = parts[1] + '/' + parts.slice(2).join('/');
  else if (!['topology', 'services', 'live'].includes(view)) view = 'topology';
  const changedService = service !== S.service;
  S.view = view; S.service = service;
  for (const v of document.querySelectorAll('.view')) v.classList.remove('shown');
  $('view-' + view).classList.add('shown');
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.view === view || (view === 'service' && a.dataset.view === 'services'));
  }
  if (changedService) { S.svc = null; stopTap('svc'); clear($('svc-tap').tBodies[0]); clear($('svc-denials')); }
  if (changedService || !S.es) connect();
  render();
}

// ---- Live updates -------------------------------------------------------------------------
function connect() {
  if (S.es) S.es.close();
  let url = '/dashboard/api/events?window=' + S.window;
  if (S.service) url += '&service=' + encodeURIComponent(S.service);
  const es = new EventSource(url);
  S.es = es;
  es.addEventListener('topology', (m) => { S.topo = JSON.parse(m.data); live(); render(); });
  es.addEventListener('status', (m) => { S.status = JSON.parse(m.data); render(); });
  es.addEventListener('service', (m) => { S.svc = JSON.parse(m.data); render(); });
  es.addEventListener('problem', (m) => { const p = JSON.parse(m.data); pill('down', p.error); });
  es.onerror = () => {
    pill('down', 'disconnected, retrying…');
    // A lapsed session: back to the login page.
    fetch('/dashboard/api/status').then((r) => { if (r.status === 401) location.reload(); }).catch(() => {});
  };
}
function pill(cls, text) { const p = $('conn'); p.className = 'pill ' + cls; p.textContent = text; }
function live() { pill('live', 'live · ' + new Date().toLocaleTimeString()); }

function render() {
  if (S.view === 'topology') renderTopology();
  else if (S.view === 'services') renderServices();
  else if (S.view === 'service') renderService();
  else if (S.view === 'live') renderLive();
}

// ---- Topology -----------------------------------------------------------------------------
const NW = 240, NH = 56, COLW = 460, ROWH = 96, PAD = 40, LABELS_UP_TO = 60;

function visible(topo) {
  const f = S.filter.trim().toLowerCase();
  const connected = new Set();
  for (const e of topo.edges) { connected.add(e.from); connected.add(e.to); }
  const match = (n) => !f || n.id.toLowerCase().includes(f);
  const shown = new Set();
  for (const n of topo.nodes) {
    if (match(n) && (S.showIdle || connected.has(n.id) || f)) shown.add(n.id);
  }
  // Direct callers and callees of what a filter matched stay in the picture (one hop only).
  if (f) {
    const matched = new Set(shown);
    for (const e of topo.edges) {
      if (matched.has(e.from) || matched.has(e.to)) { shown.add(e.from); shown.add(e.to); }
    }
  }
  const nodes = topo.nodes.filter((n) => shown.has(n.id));
  const edges = topo.edges.filter((e) => shown.has(e.from) && shown.has(e.to));
  return { nodes, edges, connected };
}

// Layers by longest path from the callers (bounded passes, so cycles end), rows by name.
function layout(nodes, edges) {
  const layer = new Map(nodes.map((n) => [n.id, 0]));
  const linked = new Set();
  for (const e of edges) { linked.add(e.from); linked.add(e.to); }
  for (let pass = 0; pass < 40; pass++) {
    let changed = false;
    for (const e of edges) {
      if (e.from === e.to) continue;
      const l = layer.get(e.from) + 1;
      if (l > layer.get(e.to) && l <= 30) { layer.set(e.to, l); changed = true; }
    }
    if (!changed) break;
  }
  const cols = new Map();
  const idle = [];
  for (const n of nodes) {
    if (!linked.has(n.id)) { idle.push(n); continue; }
    const l = layer.get(n.id);
    if (!cols.has(l)) cols.set(l, []);
    cols.get(l).push(n);
  }
  const pos = new Map();
  let maxX = 0, maxY = 0;
  const layers = [...cols.keys()].sort((a, b) => a - b);
  layers.forEach((l, ci) => {
    const col = cols.get(l).sort((a, b) => a.id.localeCompare(b.id));
    col.forEach((n, ri) => {
      const x = PAD + ci * COLW, y = PAD + ri * ROWH;
      pos.set(n.id, { x, y }); maxX = Math.max(maxX, x + NW); maxY = Math.max(maxY, y + NH);
    });
  });
  // Services without traffic: a grid to the right.
  const gx = layers.length ? maxX + 80 : PAD;
  idle.sort((a, b) => a.id.localeCompare(b.id)).forEach((n, i) => {
    const x = gx + (i % 4) * (NW + 20), y = PAD + Math.floor(i / 4) * (NH + 20);
    pos.set(n.id, { x, y }); maxX = Math.max(maxX, x + NW); maxY = Math.max(maxY, y + NH);
  });
  return { pos, width: maxX + PAD, height: maxY + PAD };
}

function edgeLabel(e) {
  return fmtRps(e.rps) + ' rps · ' + fmtPct(e.successRate) + ' · p99 ' + fmtMs(e.p99Ms);
}

function renderTopology() {
  const topo = S.topo;
  const svg = $('graph');
  if (!topo) return;
  const { nodes, edges } = visible(topo);
  const { pos, width, height } = layout(nodes, edges);
  clear(svg);
  svg.setAttribute('width', Math.max(width, 600));
  svg.setAttribute('height', Math.max(height, 300));
  const defs = sv('defs');
  for (const h of ['ok', 'warn', 'bad', 'idle']) {
    defs.append(sv('marker', { id: 'arrow-' + h, viewBox: '0 0 10 10', refX: '10', refY: '5',
      markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse' }, sv('path', { d: 'M0,0 L10,5 L0,10 z' })));
  }
  svg.append(defs);
  const edgeLayer = sv('g', { class: 'edges' });
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x - 2, y2 = b.y + NH / 2;
    const dx = Math.max(60, Math.abs(x2 - x1) / 2);
    const d = e.from === e.to
      ? `M${a.x + NW - 30},${a.y} C${a.x + NW - 30},${a.y - 40} ${a.x + NW + 30},${a.y - 40} ${a.x + NW},${a.y + 10}`
      : `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
    const w = 1.5 + Math.min(5, Math.log10(1 + (e.rps || 0)) * 2);
    const g = sv('g', {
      class: 'edge ' + e.health, 'data-from': e.from, 'data-to': e.to, 'data-health': e.health,
      'data-rps': e.rps, 'data-requests': e.requests, 'data-failures': e.failures,
      'data-success': e.successRate === null ? '' : e.successRate, 'data-p99': e.p99Ms === null ? '' : e.p99Ms,
      'data-counted-by': e.countedBy,
    });
    g.append(sv('path', { d, 'stroke-width': w.toFixed(1), 'marker-end': `url(#arrow-${e.health})` }));
    // Past LABELS_UP_TO edges, numbers only on hover (the tooltip) and in the table.
    if (edges.length <= LABELS_UP_TO) {
      const mx = (x1 + x2) / 2, my = (y1 + y2) / 2 - 8;
      g.append(sv('text', { x: mx, y: my, 'text-anchor': 'middle', text: edgeLabel(e) }));
    }
    g.append(sv('title', { text: `${e.from} → ${e.to}: ${edgeLabel(e)}\n${e.requests} requests, ${e.failures} failed (counted by the ${e.countedBy === 'outbound' ? "callers'" : "callee's"} sidecars)` }));
    edgeLayer.append(g);
  }
  const nodeLayer = sv('g', { class: 'nodes' });
  for (const n of nodes) {
    const p = pos.get(n.id);
    const trouble = n.unhealthy > 0 || n.ejected > 0;
    const cls = 'node ' + n.kind + (trouble ? ' has-unhealthy' : '');
    const g = sv('g', { class: cls, 'data-id': n.id, 'data-kind': n.kind, transform: `translate(${p.x},${p.y})`,
      'data-instances': n.instances, 'data-unhealthy': n.unhealthy, 'data-ejected': n.ejected });
    g.append(sv('rect', { width: NW, height: NH, rx: 8 }));
    g.append(sv('text', { x: 12, y: 22, text: shortName(n.id) }));
    let sub = n.kind === 'client' ? 'caller outside any Service' : `${n.instances - n.unhealthy}/${n.instances} healthy`;
    if (n.ejected > 0) sub += ` · ${n.ejected} ejected`;
    if (n.served && n.served.requests > 0) sub += ` · ${fmtRps(n.served.rps)} rps in`;
    g.append(sv('text', { x: 12, y: 42, class: 'sub' + (trouble ? ' unhealthy' : ''), text: sub }));
    if (n.kind === 'service') g.addEventListener('click', () => { location.hash = '#/service/' + n.id; });
    nodeLayer.append(g);
  }
  svg.append(edgeLayer, nodeLayer);
  const idleCount = topo.nodes.length - nodes.length;
  $('topo-summary').textContent = `${topo.nodes.length} services and callers, ${topo.edges.length} edges over ${topo.windowSecs} s` +
    ` · ${topo.proxiesAnswered}/${topo.proxiesAsked} proxies answered` + (idleCount > 0 ? ` · ${idleCount} hidden` : '');
  renderEdgeTable(edges);
  renderProblems();
}

const RANK = { bad: 0, warn: 1, ok: 2, idle: 3 };
function renderEdgeTable(edges) {
  const body = $('edges').tBodies[0];
  clear(body);
  const sorted = [...edges].sort((a, b) => RANK[a.health] - RANK[b.health] || b.rps - a.rps).slice(0, 200);
  for (const e of sorted) {
    body.append(el('tr', { 'data-from': e.from, 'data-to': e.to },
      el('td', { text: e.from }), el('td', { text: e.to }), el('td', { text: fmtRps(e.rps) }),
      el('td', { class: e.health, text: fmtPct(e.successRate) }), el('td', { text: fmtMs(e.p50Ms) }),
      el('td', { text: fmtMs(e.p99Ms) }), el('td', { text: String(e.requests) }), el('td', { text: e.countedBy })));
  }
}

function problems() {
  const out = [];
  const t = S.topo, st = S.status;
  if (t) {
    for (const e of t.edges) {
      if (e.health === 'bad' || e.health === 'warn') {
        out.push([e.health, `${shortName(e.from)} → ${shortName(e.to)}: ${fmtPct(e.successRate)} success (${e.failures} of ${e.requests} failed)`]);
      }
    }
    for (const n of t.nodes) {
      if (n.unhealthy > 0) out.push(['bad', `${shortName(n.id)}: ${n.unhealthy} of ${n.instances} instances unhealthy`]);
      if (n.ejected > 0) out.push(['warn', `${shortName(n.id)}: ${n.ejected} of ${n.instances} instances ejected by outlier detection`]);
      if (n.kind === 'service' && n.instances === 0) out.push(['warn', `${shortName(n.id)}: no instances`]);
    }
    for (const r of t.replicas || []) if (r.error) out.push(['warn', `replica ${r.id} did not answer: ${r.error}`]);
  }
  if (st) {
    for (const p of st.proxies || []) {
      for (const n of p.nacks || []) out.push(['bad', `proxy ${p.id} rejected config (${typeShort(n.type)}): ${n.nack.error}`]);
      if (p.inSync === false) out.push(['warn', `proxy ${p.id} is not in sync`]);
    }
    if (st.store && !st.store.ok) out.push(['bad', `store ${st.store.describe}: ${st.store.error}`]);
    for (const r of st.replicas || []) if (!r.up) out.push(['bad', `control-plane replica ${r.id} is down`]);
  }
  return out;
}
const typeShort = (url) => String(url).split('.').pop();

function renderProblems() {
  const ul = $('problems');
  clear(ul);
  const ps = problems();
  if (!ps.length) ul.append(el('li', { class: 'none', text: 'Nothing: every edge healthy, every proxy in sync.' }));
  for (const [cls, text] of ps.slice(0, 50)) ul.append(el('li', { class: cls, text }));
}

// ---- Services -----------------------------------------------------------------------------
function renderServices() {
  const body = $('services').tBodies[0];
  clear(body);
  if (!S.topo) return;
  const f = $('svc-filter').value.trim().toLowerCase();
  const rows = S.topo.nodes.filter((n) => n.kind === 'service' && (!f || n.id.includes(f))).slice(0, 500);
  for (const n of rows) {
    const s = n.served;
    body.append(el('tr', {},
      el('td', {}, el('a', { href: '#/service/' + n.id, text: n.id })),
      el('td', { text: String(n.instances) }), el('td', { class: n.unhealthy ? 'bad' : '', text: String(n.unhealthy) }),
      el('td', { text: String(n.policies) }), el('td', { text: s ? fmtRps(s.rps) : '-' }),
      el('td', { class: s ? s.health : 'idle', text: s ? fmtPct(s.successRate) : '-' }), el('td', { text: s ? fmtMs(s.p99Ms) : '-' })));
  }
}

function card(k, v, cls) { return el('div', { class: 'card' }, el('div', { class: 'k', text: k }), el('div', { class: 'v ' + (cls || ''), text: v })); }

function renderService() {
  const d = S.svc;
  $('svc-title').textContent = S.service ? 'Service ' + S.service : '';
  if (!d) return;
  if (d.missing) { $('svc-title').textContent = `No Service ${d.missing}`; return; }
  // Traffic, from the topology.
  const tr = $('svc-traffic');
  clear(tr);
  if (S.topo) {
    const n = S.topo.nodes.find((x) => x.id === d.id);
    const s = n && n.served;
    tr.append(card('RPS in', s ? fmtRps(s.rps) : '-'), card('success in', s ? fmtPct(s.successRate) : '-', s ? s.health : ''),
      card('p99 in', s ? fmtMs(s.p99Ms) : '-'));
    const callers = S.topo.edges.filter((e) => e.to === d.id).map((e) => `${shortName(e.from)} (${fmtPct(e.successRate)})`);
    const callees = S.topo.edges.filter((e) => e.from === d.id).map((e) => `${shortName(e.to)} (${fmtPct(e.successRate)})`);
    tr.append(card('callers', callers.join(', ') || 'none'), card('calls', callees.join(', ') || 'none'));
  }
  const ib = $('svc-instances').tBodies[0];
  clear(ib);
  for (const i of d.instances) {
    const p = i.proxy;
    let proxy = 'not connected', pcls = 'bad';
    if (p) {
      proxy = p.inSync ? 'in sync' : 'syncing';
      pcls = p.inSync ? 'ok' : 'warn';
      if (p.nacks && p.nacks.length) { proxy = 'rejected config: ' + p.nacks.map((n) => n.nack.error).join('; '); pcls = 'bad'; }
      if (p.replica) proxy += ` (replica ${p.replica})`;
    }
    const cert = i.certificate ? new Date(i.certificate.notAfterUnixMs).toLocaleString() : '-';
    const by = i.ejectedBy || [];
    const health = by.length ? `${i.health}, ejected by ${by.join(', ')}` : i.health;
    ib.append(el('tr', { 'data-instance': i.name },
      el('td', { text: i.name }), el('td', { text: i.address }), el('td', { text: i.version || '-' }),
      el('td', { text: i.zone || '-' }), el('td', { class: health === 'Healthy' ? 'ok' : 'bad', text: health }),
      el('td', { text: i.identity || '-' }), el('td', { text: cert }), el('td', { class: pcls, text: proxy })));
  }
  renderRoutes(d.routes);
  specs('svc-dest', d.destinationPolicies, 'No DestinationPolicy: round-robin, no outlier detection.');
  specs('svc-authz', d.authorizationPolicies, 'No AuthorizationPolicy: every caller allowed.');
  specs('svc-authn', d.requestAuthentications, 'No RequestAuthentication.');
}

function renderRoutes(routes) {
  const box = $('svc-routes');
  clear(box);
  if (!routes.length) { box.append(el('p', { class: 'muted', text: 'No Route: every request to the whole service.' })); return; }
  for (const r of routes) {
    const div = el('div', { class: 'route', 'data-route': r.name }, el('strong', { text: 'Route ' + r.name }));
    (r.spec.rules || []).forEach((rule, i) => {
      const row = el('div', { class: 'rule', 'data-rule': rule.name || String(i) });
      row.append(el('span', { class: 'tag', text: rule.name || `rule ${i}` }));
      if (rule.matches && rule.matches.length) row.append(el('span', { class: 'tag', text: 'match ' + JSON.stringify(rule.matches) }));
      if (rule.timeout) row.append(el('span', { class: 'tag', text: 'timeout ' + rule.timeout }));
      if (rule.retries) row.append(el('span', { class: 'tag', text: `retries ×${rule.retries.attempts}` }));
      const f = rule.fault;
      if (f && f.abort) row.append(el('span', { class: 'tag fault', text: `fault: abort ${f.abort.percent}% → ${f.abort.httpStatus || ('grpc ' + f.abort.grpcStatus)}` }));
      if (f && f.delay) row.append(el('span', { class: 'tag fault', text: `fault: delay ${f.delay.fixedDelay} on ${f.delay.percent}%` }));
      const bar = el('div', { class: 'splitbar' });
      for (const b of rule.backends || []) {
        const label = `${b.service}${b.subset ? ' ' + b.subset : ''} ${b.percent}%`;
        const span = el('span', { 'data-backend': (b.subset || b.service), 'data-percent': b.percent, text: label, title: label });
        span.style.width = Math.max(b.percent, 4) + '%';
        bar.append(span);
      }
      row.append(bar);
      div.append(row);
    });
    box.append(div);
  }
}

function specs(id, list, none) {
  const box = $(id);
  clear(box);
  if (!list.length) { box.append(el('p', { class: 'muted', text: none })); return; }
  for (const p of list) box.append(el('div', {}, el('strong', { text: p.name })), el('pre', { class: 'spec', text: JSON.stringify(p.spec, null, 2) }));
}

// ---- Tap ----------------------------------------------------------------------------------
function stopTap(key) { const t = S.taps[key]; if (t) { t.abort(); delete S.taps[key]; } }

async function startTap(key, service, tbody, onEvent, onInfo) {
  stopTap(key);
  const ctl = new AbortController();
  S.taps[key] = ctl;
  const [ns, name] = service.split('/');
  const url = `/dashboard/api/tap?service=${encodeURIComponent(name)}&namespace=${encodeURIComponent(ns)}&maxPerSecond=50`;
  try {
    const rsp = await fetch(url, { signal: ctl.signal });
    if (!rsp.ok) { onInfo && onInfo('tap refused: ' + rsp.status); return; }
    const reader = rsp.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i); buf = buf.slice(i + 1);
        if (!line.trim()) continue;
        const v = JSON.parse(line);
        if (v.tap) { onInfo && onInfo(`tapping ${v.tap.proxies} proxies`); continue; }
        if (v.event) { tapRow(tbody, v.event); onEvent && onEvent(v.event); }
      }
    }
  } catch (e) { if (e.name !== 'AbortError') onInfo && onInfo('tap ended: ' + e.message); }
}

function tapRow(tbody, e) {
  const from = e.source ? shortName(e.source.replace(/^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\//, '$1/')) : (e.sourceAddress || '-');
  const cls = e.status >= 500 ? 'bad' : (e.status >= 400 ? 'warn' : 'ok');
  const ms = e.durationMs;
  tbody.prepend(el('tr', {},
    el('td', { text: (e.time || '').replace(/^.*T/, '').replace(/Z$/, '') }), el('td', { text: e.direction }),
    el('td', { text: from }), el('td', { text: e.destination }), el('td', { text: e.method }), el('td', { text: e.path }),
    el('td', { class: cls, text: String(e.status) }), el('td', { text: e.reason || '' }),
    el('td', { text: ms === undefined ? '-' : Number(ms).toFixed(1) })));
  while (tbody.rows.length > 200) tbody.deleteRow(-1);
}

function toggleTap(key, button, service, tbody, onEvent, onInfo) {
  if (S.taps[key]) { stopTap(key); button.textContent = 'start'; return; }
  if (!service) return;
  button.textContent = 'stop';
  startTap(key, service, tbody, onEvent, onInfo).finally(() => { if (!S.taps[key]) button.textContent = 'start'; });
}

function onServiceTapEvent(e) {
  if (e.reason !== 'denied') return;
  const ul = $('svc-denials');
  ul.prepend(el('li', { class: 'bad', text: `${e.time}: ${e.method} ${e.path} from ${e.source || e.sourceAddress || 'unknown'} → ${e.status}` }));
  while (ul.children.length > 50) ul.removeChild(ul.lastChild);
}

// ---- Live ---------------------------------------------------------------------------------
function renderLive() {
  const sel = $('live-service');
  if (S.topo) {
    const ids = S.topo.nodes.filter((n) => n.kind === 'service').map((n) => n.id);
    if (sel.options.length !== ids.length) {
      const keep = sel.value;
      clear(sel);
      for (const id of ids) sel.append(el('option', { value: id, text: id }));
      if (keep) sel.value = keep;
    }
  }
  const st = S.status;
  if (!st) return;
  const nb = $('live-nacks').tBodies[0];
  clear(nb);
  for (const p of st.proxies) for (const n of p.nacks) {
    nb.append(el('tr', {}, el('td', { text: p.id }), el('td', { text: p.service }), el('td', { text: typeShort(n.type) }),
      el('td', { text: n.nack.version }), el('td', { class: 'bad', text: n.nack.error })));
  }
  if (!nb.rows.length) nb.append(el('tr', {}, el('td', { colspan: 5, class: 'ok', text: 'No proxy rejected its config.' })));
  const inSync = st.proxies.filter((p) => p.inSync).length;
  $('live-proxies').textContent = `${st.proxies.length} proxies connected, ${inSync} in sync with revision ${st.revision}.`;
  const rb = $('live-replicas').tBodies[0];
  clear(rb);
  for (const r of st.replicas || []) {
    rb.append(el('tr', {}, el('td', { text: r.id + (r.answering ? ' (this one)' : '') }), el('td', { text: r.api }),
      el('td', { class: r.up ? 'ok' : 'bad', text: r.up ? 'up' : 'down' }), el('td', { text: r.heartbeatAgeMs + ' ms' }),
      el('td', { text: String(r.modelRevision) })));
  }
  const store = st.store || {};
  const p = $('live-store');
  p.className = store.ok ? 'ok' : 'bad';
  p.textContent = `${store.describe || 'store'}: ${store.ok ? 'answering' : ('unreachable: ' + store.error)}` + (st.storeError ? ` (other replicas' records: ${st.storeError})` : '');
}

// ---- Start --------------------------------------------------------------------------------
function start() {
  const saved = Number(localStorage.getItem('trellis.window'));
  if ([10, 30, 60].includes(saved)) S.window = saved;
  $('window').value = String(S.window);
  $('window').addEventListener('change', (ev) => {
    S.window = Number(ev.target.value); localStorage.setItem('trellis.window', String(S.window)); connect();
  });
  $('filter').addEventListener('input', (ev) => { S.filter = ev.target.value; renderTopology(); });
  $('show-idle').addEventListener('change', (ev) => { S.showIdle = ev.target.checked; renderTopology(); });
  $('svc-filter').addEventListener('input', renderServices);
  $('svc-tap-toggle').addEventListener('click', (ev) =>
    toggleTap('svc', ev.target, S.service, $('svc-tap').tBodies[0], onServiceTapEvent, null));
  $('live-tap-toggle').addEventListener('click', (ev) =>
    toggleTap('live', ev.target, $('live-service').value, $('live-tap').tBodies[0], null, (t) => { $('live-tap-info').textContent = t; }));
  window.addEventListener('hashchange', route);
  route();
}
start();
