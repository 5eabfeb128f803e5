// Weft dashboard. Each page is one JSON document under /api/, fetched again 2 s after
// the previous answer (never more than one request in flight, so at most one request
// every 2 s). Pages are built with createElement and text nodes only: nothing that
// comes from the mesh is ever parsed as HTML. Every figure is computed by the control
// plane; this file only lays them out.
'use strict';

const REFRESH_MS = 2000;
const SVG_NS = 'http://www.w3.org/2000/svg';
const PAGE_TITLES = { overview: 'Overview', dataplanes: 'Dataplanes', routes: 'Routes', permissions: 'Permissions' };

let pages = ['overview', 'dataplanes', 'routes', 'permissions'];
let timer = null;
let generation = 0;

// ---- DOM helpers ----------------------------------------------------------------

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k.startsWith('data-')) {
      el.setAttribute(k, String(v)); // data for tests and tools: true/false spelled out
    } else if (v !== false) {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function table(id, headers, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'muted' }, empty);
  return h('table', { id },
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows));
}

function link(href, text) {
  return h('a', { href }, text);
}

function pill(text, kind) {
  return h('span', { class: 'pill ' + (kind || '') }, text);
}

function card(label, value, detail, kind) {
  return h('div', { class: 'card ' + (kind || '') },
    h('div', { class: 'label' }, label),
    h('div', { class: 'value' }, value),
    detail ? h('div', { class: 'detail' }, detail) : null);
}

// ---- Formatting: the same cells as weftctl --------------------------------------

function rate(r) {
  if (r === null || r === undefined) return '–';
  return r >= 100 ? r.toFixed(0) : r.toFixed(1);
}

function percent(share) {
  return share === null || share === undefined ? '–' : (share * 100).toFixed(2) + '%';
}

function latency(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms >= 1000) return (ms / 1000).toFixed(1) + 's';
  if (ms >= 10) return ms.toFixed(0) + 'ms';
  return ms.toFixed(2) + 'ms';
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n || 0;
  let u = 0;
  while (v >= 1024 && u + 1 < units.length) { v /= 1024; u += 1; }
  return u === 0 ? v + 'B' : v.toFixed(1) + units[u];
}

function until(iso) {
  if (!iso) return '–';
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (s <= 0) return 'expired';
  if (s < 120) return 'in ' + s + 's';
  if (s < 7200) return 'in ' + Math.round(s / 60) + 'm';
  if (s < 172800) return 'in ' + Math.round(s / 3600) + 'h';
  return 'in ' + Math.round(s / 86400) + 'd';
}

function yesNo(v, goodWhen) {
  return pill(v ? 'yes' : 'no', v === goodWhen ? 'ok' : 'bad');
}

function successKind(share) {
  if (share === null || share === undefined) return '';
  return share >= 0.99 ? 'ok' : share >= 0.95 ? 'warn' : 'bad';
}

// ---- Pages ------------------------------------------------------------------------

function warningList(items) {
  if (items.length === 0) return h('p', { class: 'muted', id: 'warnings' }, 'No warnings.');
  return h('ul', { class: 'warnings', id: 'warnings' },
    items.map((w) => h('li', {}, w.subject ? h('strong', {}, w.subject + ': ') : null, w.message || w)));
}

function syncCell(inst) {
  const total = inst.connected;
  const kind = inst.in_sync === total && total > 0 ? 'ok' : total === 0 ? 'bad' : 'warn';
  return pill(inst.in_sync + '/' + total + ' in sync', kind);
}

function renderOverview(d) {
  if (Array.isArray(d.pages)) { pages = d.pages; renderNav(); }
  const dp = d.dataplanes;
  const rows = d.services.map((s) => {
    const t = s.traffic ? s.traffic.total : null;
    const inst = s.instances;
    return h('tr', {
      'data-service': s.name,
      'data-protocol': s.protocol,
      'data-rate': t ? t.request_rate : 0,
      'data-in-sync': inst.in_sync,
    },
    h('td', {}, link('#/services/' + s.name, s.name)),
    h('td', {}, pill(s.protocol_set ? s.protocol : s.protocol + ' (not set)', 'selector')),
    h('td', { class: 'num' }, s.port === null ? '–' : s.port),
    h('td', { class: 'num' }, inst.connected + '/' + inst.total),
    h('td', {}, syncCell(inst)),
    h('td', {}, inst.app_protocols.join(', ') || '–'),
    h('td', { class: 'num rate' }, t ? rate(t.request_rate) : '–'),
    h('td', { class: 'num ' + successKind(t && t.success_rate) }, t ? percent(t.success_rate) : '–'),
    h('td', { class: 'num' }, t ? latency(t.latency_ms.p50) : '–'),
    h('td', { class: 'num' }, t ? latency(t.latency_ms.p99) : '–'));
  });
  const ca = d.ca;
  return [
    h('h1', {}, 'Mesh ', h('span', { class: 'muted' }, d.trust_domain)),
    h('section', { class: 'cards' },
      card('Services', d.services.length),
      card('Dataplanes connected', dp.connected + ' / ' + dp.total,
        dp.in_sync + ' in sync with config v' + d.config_version,
        dp.in_sync === dp.connected ? 'ok' : 'warn'),
      card('CA rotation', ca.phase, ca.summary || ca.roots + ' root(s), certificates live ' + ca.cert_ttl,
        ca.phase === 'distributing' ? 'warn' : 'ok'),
      policyCard(d.mesh),
      card('Warnings', d.warnings.length, null, d.warnings.length ? 'warn' : 'ok')),
    h('section', {},
      h('h2', {}, 'Services'),
      table('services',
        ['Service', 'Selector', 'Port', 'Connected', 'Sync', 'App speaks', 'Req/s', 'Success', 'p50', 'p99'],
        rows, 'No services yet: create one with weftctl service create.'),
      h('p', { class: 'note' }, 'Traffic: ' + d.traffic.note + '.')),
    h('section', {}, h('h2', {}, 'Warnings'), warningList(d.warnings)),
  ];
}

function chart(series) {
  const W = 760, H = 200, L = 52, R = 56, T = 12, B = 24;
  const span = 300;
  const now = Date.now() / 1000;
  const x = (t) => L + ((t - (now - span)) / span) * (W - L - R);
  const points = series.map((p) => ({ t: Date.parse(p.start) / 1000, f: p.figures }))
    .filter((p) => p.t >= now - span - 10);
  const maxRate = Math.max(1e-9, ...points.map((p) => p.f.request_rate));
  const maxMs = Math.max(1e-9, ...points.map((p) => p.f.latency_ms.p99 || 0));
  const yRate = (r) => H - B - (r / maxRate) * (H - T - B);
  const yMs = (ms) => H - B - (ms / maxMs) * (H - T - B);
  const barW = ((W - L - R) / 30) * 0.8;
  const lines = (key) => {
    // A gap (no report in a bucket) breaks the line.
    const runs = [];
    let run = [];
    let last = null;
    for (const p of points) {
      const v = p.f.latency_ms[key];
      if (v === null || (last !== null && p.t - last > 10)) { if (run.length) runs.push(run); run = []; }
      if (v !== null) run.push(x(p.t + 5).toFixed(1) + ',' + yMs(v).toFixed(1));
      last = p.t;
    }
    if (run.length) runs.push(run);
    return runs.map((r) => r.length === 1
      ? svg('circle', { class: 'line-' + key, cx: r[0].split(',')[0], cy: r[0].split(',')[1], r: 2.5 })
      : svg('polyline', { class: 'line-' + key, points: r.join(' ') }));
  };
  return svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img', id: 'latency-chart' },
    svg('title', {}, 'Requests per second (bars) and latency p50/p99 (lines) over the last 5 minutes'),
    svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }),
    svg('line', { class: 'axis', x1: W - R, y1: T, x2: W - R, y2: H - B }),
    points.map((p) => svg('rect', {
      class: 'bar', x: (x(p.t) + 1).toFixed(1), y: yRate(p.f.request_rate).toFixed(1),
      width: barW.toFixed(1), height: (H - B - yRate(p.f.request_rate)).toFixed(1),
    })),
    lines('p99'), lines('p50'),
    svg('text', { x: L - 6, y: T + 10, class: 'tick end' }, latency(maxMs)),
    svg('text', { x: L - 6, y: H - B, class: 'tick end' }, '0'),
    svg('text', { x: W - R + 6, y: T + 10, class: 'tick' }, rate(maxRate) + '/s'),
    svg('text', { x: L, y: H - 6, class: 'tick' }, '−5 min'),
    svg('text', { x: W - R, y: H - 6, class: 'tick end' }, 'now'));
}

function legend() {
  return h('p', { class: 'legend' },
    h('span', { class: 'key bar' }), 'requests/s  ',
    h('span', { class: 'key p50' }), 'p50  ',
    h('span', { class: 'key p99' }), 'p99');
}

function policyCard(mesh) {
  const p = mesh.permissions;
  return card('Default policy', mesh.default_policy,
    (p.allow + p.deny + p.audit) + ' permission(s): ' + p.allow + ' allow, ' + p.deny + ' deny, ' + p.audit + ' audit',
    mesh.default_policy === 'deny' ? 'ok' : '');
}

function permissionRows(rules) {
  return rules.map((r) => h('tr', { 'data-permission': r.id, 'data-action': r.action },
    h('td', { class: 'mono' }, r.id),
    h('td', {}, pill(r.action, r.action === 'deny' ? 'bad' : r.action === 'audit' ? 'warn' : 'ok')),
    h('td', {}, r.from),
    h('td', {}, r.to === '*' ? '*' : link('#/services/' + r.to, r.to)),
    h('td', { class: 'num' }, r.port === null ? '*' : r.port),
    h('td', {}, r.created_at ? new Date(r.created_at).toLocaleString() : '–')));
}

const PERMISSION_HEADERS = ['Rule', 'Action', 'From', 'To', 'Port', 'Created'];

function dataplaneRow(dp) {
  return h('tr', { 'data-dataplane': dp.id, 'data-in-sync': dp.in_sync },
    h('td', { class: 'mono' }, dp.id),
    h('td', { class: 'mono' }, dp.address || '–'),
    h('td', {}, yesNo(dp.healthy, true)),
    h('td', {}, yesNo(dp.connected, true)),
    h('td', {}, pill(dp.sync, dp.in_sync ? 'ok' : 'warn')),
    h('td', {}, dp.app_protocol || '–'),
    h('td', { title: dp.cert_expiry || '' }, until(dp.cert_expiry)));
}

function renderService(d) {
  const s = d.service;
  const tr = d.traffic;
  const t = tr ? tr.total : null;
  const regions = d.regions.map((r) => [
    h('h3', {}, 'Region ' + r.region),
    table(null, ['Dataplane', 'Address', 'Healthy', 'Connected', 'Sync', 'App speaks', 'Certificate'],
      r.dataplanes.map(dataplaneRow), 'No dataplanes.'),
  ]);
  const callers = tr ? tr.sources.map((src) => h('tr', { 'data-source': src.source },
    h('td', {}, src.source),
    h('td', { class: 'num' }, rate(src.figures.request_rate)),
    h('td', { class: 'num ' + successKind(src.figures.success_rate) }, percent(src.figures.success_rate)),
    h('td', { class: 'num' }, src.figures.requests),
    h('td', { class: 'num' }, src.figures.errors),
    h('td', { class: 'num' }, bytes(src.figures.bytes_in)),
    h('td', { class: 'num' }, bytes(src.figures.bytes_out)))) : [];
  const routes = d.routes.map((r) => h('tr', {},
    h('td', { class: 'mono' }, r.host), h('td', { class: 'mono' }, r.path_prefix),
    h('td', {}, r.prefer_region || '–')));
  return [
    h('h1', {}, 'Service ', h('span', { id: 'service-name' }, s.name), ' ',
      pill(s.protocol_set ? s.protocol : s.protocol + ' (not set)', 'selector'),
      s.port ? h('span', { class: 'muted' }, ' port ' + s.port) : null),
    h('section', { class: 'cards', id: 'golden' },
      card('Requests/s', t ? rate(t.request_rate) : '–', t ? t.requests + ' in the last ' + d.coverage.window_seconds + ' s' : null),
      card('Success', t ? percent(t.success_rate) : '–', t ? t.errors + ' failed (5xx, gRPC errors)' : null, successKind(t && t.success_rate)),
      card('Latency p50', t ? latency(t.latency_ms.p50) : '–'),
      card('Latency p99', t ? latency(t.latency_ms.p99) : '–'),
      card('Open connections', tr ? tr.active_connections : 0, t ? bytes(t.bytes_in) + ' in, ' + bytes(t.bytes_out) + ' out' : null)),
    h('section', {}, h('h2', {}, 'Last 5 minutes'),
      tr && tr.series.length ? [chart(tr.series), legend()] : h('p', { class: 'muted' }, 'No traffic reported yet.')),
    h('section', {}, h('h2', {}, 'Endpoints'), regions.length ? regions : h('p', { class: 'muted' }, 'No dataplanes registered.')),
    h('section', {}, h('h2', {}, 'Callers'),
      table('callers', ['Source', 'Req/s', 'Success', 'Requests', 'Errors', 'In', 'Out'], callers, 'Nobody called it in the window.')),
    h('section', {}, h('h2', {}, 'Gateway routes'),
      table('routes', ['Host', 'Path prefix', 'Prefer region'], routes, 'No gateway route points at it.')),
    h('section', {}, h('h2', {}, 'Permissions'),
      table('permissions', PERMISSION_HEADERS, permissionRows(d.permissions),
        'No permission names it: calls follow the default policy.'),
      h('p', { class: 'note' }, 'Default policy: ' + d.mesh.default_policy_text + '.')),
    h('section', {}, h('h2', {}, 'Warnings'), warningList(d.warnings)),
    h('p', { class: 'note' }, 'Traffic: ' + d.coverage.note + '.'),
  ];
}

function renderDataplanes(d) {
  const rows = d.dataplanes.map((dp) => h('tr', { 'data-dataplane': dp.id, 'data-in-sync': dp.in_sync },
    h('td', { class: 'mono' }, dp.id),
    h('td', {}, dp.kind),
    h('td', {}, dp.kind === 'sidecar' ? link('#/services/' + dp.name, dp.name) : dp.name),
    h('td', {}, dp.region || '–'),
    h('td', {}, yesNo(dp.connected, true)),
    h('td', {}, yesNo(dp.healthy, true)),
    h('td', {}, pill(dp.sync, dp.in_sync ? 'ok' : 'warn')),
    h('td', { class: 'num' }, dp.acked_version + '/' + dp.latest_version),
    h('td', { title: dp.cert_expiry || '' }, until(dp.cert_expiry)),
    h('td', {}, dp.app_protocol || '–'),
    h('td', { class: 'warn-cell' }, dp.warnings.join(' '))));
  return [
    h('h1', {}, 'Dataplanes'),
    table('dataplanes', ['Dataplane', 'Kind', 'Name', 'Region', 'Connected', 'Healthy', 'Sync', 'Acked/latest',
      'Certificate', 'App speaks', 'Warnings'], rows, 'No dataplane has registered yet.'),
  ];
}

function renderRoutes(d) {
  const rows = d.routes.map((r) => h('tr', { 'data-host': r.host },
    h('td', { class: 'mono' }, r.host),
    h('td', { class: 'mono' }, r.path_prefix),
    h('td', {}, link('#/services/' + r.service, r.service)),
    h('td', { class: 'mono' }, r.rewrite_host || '–'),
    h('td', {}, r.prefer_region || '–'),
    h('td', { class: 'num' }, r.revision)));
  return [
    h('h1', {}, 'Gateway routes'),
    table('routes', ['Host', 'Path prefix', 'Service', 'Rewrite host', 'Prefer region', 'Revision'], rows,
      'No routes: create one with weftctl route create.'),
  ];
}

function renderPermissions(d) {
  const p = d.mesh.permissions;
  return [
    h('h1', {}, 'Permissions'),
    h('section', { class: 'cards' },
      policyCard(d.mesh),
      card('Deny rules', p.deny, 'any matching deny refuses the call', p.deny ? 'warn' : ''),
      card('Audit rules', p.audit, 'allowed, logged and counted as would-be denials', p.audit ? 'warn' : '')),
    h('p', { class: 'note', id: 'default-policy' }, 'Default policy: ' + d.mesh.default_policy_text + '.'),
    table('permissions', PERMISSION_HEADERS, permissionRows(d.permissions),
      'No permissions: every call follows the default policy.'),
  ];
}

// ---- Navigation and refresh -------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, () => '/api/overview', renderOverview, 'overview'],
  [/^#\/services\/([a-z0-9-]+)$/, (m) => '/api/services/' + m[1], renderService, null],
  [/^#\/dataplanes$/, () => '/api/dataplanes', renderDataplanes, 'dataplanes'],
  [/^#\/routes$/, () => '/api/routes', renderRoutes, 'routes'],
  [/^#\/permissions$/, () => '/api/permissions', renderPermissions, 'permissions'],
];

function current() {
  for (const [re, url, render, page] of ROUTES) {
    const m = location.hash.match(re);
    if (m) return { url: url(m), render, page };
  }
  return null;
}

function renderNav() {
  const nav = document.getElementById('nav');
  const page = (current() || {}).page;
  nav.replaceChildren(...pages.filter((p) => PAGE_TITLES[p]).map((p) =>
    h('a', { href: p === 'overview' ? '#/' : '#/' + p, 'aria-current': p === page ? 'page' : null }, PAGE_TITLES[p])));
}

function setStatus(ok, text) {
  const el = document.getElementById('status');
  el.className = 'status ' + (ok ? 'live' : 'down');
  el.textContent = text;
}

async function tick(gen) {
  const page = current();
  const main = document.getElementById('main');
  if (!page) {
    main.replaceChildren(h('p', {}, 'No such page. ', link('#/', 'Back to the overview.')));
    return;
  }
  try {
    const resp = await fetch(page.url, { headers: { accept: 'application/json' }, cache: 'no-store' });
    if (gen !== generation) return;
    if (resp.status === 401) { location.assign('/login'); return; }
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    main.replaceChildren(...[page.render(body)].flat(Infinity).filter(Boolean));
    const local = body.viewer === 'local';
    document.getElementById('viewer').textContent = local ? '' : body.viewer;
    document.getElementById('logout').hidden = local;
    setStatus(true, 'live · ' + new Date().toLocaleTimeString());
  } catch (e) {
    if (gen !== generation) return;
    setStatus(false, 'not updating: ' + e.message);
  }
  if (gen === generation) timer = setTimeout(() => tick(gen), REFRESH_MS);
}

function navigate() {
  clearTimeout(timer);
  generation += 1;
  renderNav();
  tick(generation);
}

window.addEventListener('hashchange', navigate);
navigate();
