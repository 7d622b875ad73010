// The five views. Every piece of server data is put in with textContent (h() below),
// never as markup. Each view builds its controls once and refresh() refills its data
// parts, so the 5 s refresh never wipes what an operator is typing.
import { get, send, forget, isAdmin, ApiError } from './api.js';
import { barChart } from './charts.js';

/** An element: attrs set as attributes (booleans toggle), children as nodes or text. */
export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k === 'value') e.value = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function clear(e) {
  while (e.firstChild) e.removeChild(e.firstChild);
}

function fill(e, ...children) {
  clear(e);
  for (const c of children.flat()) if (c !== null && c !== undefined) e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
}

const userHref = (id) => `/deck/users/${encodeURIComponent(id)}`;
const userLink = (id) => h('a', { href: userHref(id), 'data-link': true }, id);
const when = (t) => (t ? new Date(t).toLocaleString() : '—');
const riskCell = (r) => h('td', { class: `risk-${/^[a-z]+$/.test(r) ? r : 'other'}` }, r);
const ms = (v) => (v === null || v === undefined ? '—' : `${Math.round(v)} ms`);

function table(headers, rows, caption) {
  return h('table', {},
    caption ? h('caption', { class: 'muted' }, caption) : null,
    h('thead', {}, h('tr', {}, headers.map((x) => (typeof x === 'string' ? h('th', { scope: 'col' }, x) : x)))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'none'))));
}

function message(box, kind, text) {
  fill(box, h('div', { class: `msg ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text));
}

/** Fetches paths; answers [results, anyChanged]. A 404 answers null (a route not there). */
async function fetchAll(paths) {
  const out = await Promise.all(paths.map((p) => get(p).catch((e) => {
    if (e instanceof ApiError && e.status === 404) return { data: null, changed: false, missing: true };
    throw e;
  })));
  return [out, out.some((r) => r.changed)];
}

// ---- overview ----
function overview() {
  const inst = h('div');
  const deliv = h('div');
  const health = h('div');
  const lessons = h('div');
  const grid = h('div');
  const attention = h('div');
  const root = h('section', { 'aria-labelledby': 'v-title' },
    h('h1', { id: 'v-title' }, 'Overview'),
    h('div', { class: 'grid' },
      h('section', { class: 'card wide', 'aria-label': 'Instances' }, h('h2', {}, 'Instances'), inst),
      h('section', { class: 'card', 'aria-label': 'Deliveries' }, h('h2', {}, 'Deliveries (24 h)'), deliv),
      h('section', { class: 'card', 'aria-label': 'Health' }, h('h2', {}, 'Health'), health),
      h('section', { class: 'card', 'aria-label': 'Lessons' }, h('h2', {}, 'Lessons (24 h)'), lessons),
      h('section', { class: 'card wide', 'aria-label': 'Phase by risk' }, h('h2', {}, 'Bonds: phase × risk'), grid),
      h('section', { class: 'card wide', 'aria-label': 'Needs attention' }, h('h2', {}, 'Needs attention'), attention)));
  let first = true;
  async function refresh() {
    const [[i, o, s, r], changed] = await fetchAll(['/v1/instances', '/v1/overview', '/v1/status', '/v1/reports?event_type=self_healing_report&limit=1']);
    if (!changed && !first) return false;
    first = false;
    if (i.missing || !i.data) fill(inst, h('p', { class: 'muted' }, 'This server has no instance registry (GET /v1/instances).'));
    else fill(inst, table(['id', 'version', 'uptime', 'pool (size/busy/waiting)', 'sockets', 'heartbeat'],
      i.data.items.map((x) => h('tr', {}, h('td', {}, x.id), h('td', {}, x.version), h('td', { class: 'num' }, `${Math.round(x.uptime_s / 60)} min`),
        h('td', {}, x.pool ? `${x.pool.size}/${x.pool.busy}/${x.pool.waiting}` : '—'), h('td', { class: 'num' }, x.sockets), h('td', {}, when(x.heartbeat_at))))));
    const d = o.data.deliveries;
    fill(deliv,
      barChart(['queued', 'delivered', 'acked', 'failed', 'expired'].map((k) => ({ label: k, value: d.counts[k] })), { title: 'Proposals of the last 24 h by status' }),
      h('dl', { class: 'kv' },
        h('dt', {}, 'first delivery p50 / p95'), h('dd', {}, `${ms(d.first_delivery_ms.p50)} / ${ms(d.first_delivery_ms.p95)}`),
        h('dt', {}, 'ack p50 / p95'), h('dd', {}, `${ms(d.ack_ms.p50)} / ${ms(d.ack_ms.p95)}`)));
    const st = s.data || {};
    const rep = r.data && r.data.items && r.data.items[0];
    fill(health, h('dl', { class: 'kv' },
      h('dt', {}, 'database'), h('dd', {}, !st.database ? '—' : st.database.reachable ? `reachable, ${Number(st.database.latency_ms).toFixed(1)} ms` : 'unreachable'),
      h('dt', {}, 'version'), h('dd', {}, st.version || '—'),
      h('dt', {}, 'last sweep'), h('dd', {}, st.last_sweep ? when(st.last_sweep.at || st.last_sweep.created_at || st.last_sweep.finished_at) : 'none yet'),
      h('dt', {}, 'last report'), h('dd', {}, rep ? `${when(rep.created_at)}: ${rep.event_data && rep.event_data.status ? rep.event_data.status : 'stored'}` : 'none yet')));
    fill(lessons, barChart(o.data.lessons.by_type.map((x) => ({ label: x.lesson_type, value: x.count })), { title: 'Lessons of the last 24 h by type' }));
    const phases = [...new Set(o.data.bonds.grid.map((g) => g.phase))];
    const order = ['low', 'medium', 'high', 'critical'];
    const rank = (k) => (order.includes(k) ? order.indexOf(k) : order.length);
    const risks = [...new Set(o.data.bonds.grid.map((g) => g.risk_level))].sort((x, y) => rank(x) - rank(y) || (x < y ? -1 : 1));
    const count = (p, k) => (o.data.bonds.grid.find((g) => g.phase === p && g.risk_level === k) || { count: 0 }).count;
    const max = Math.max(1, ...o.data.bonds.grid.map((g) => g.count));
    fill(grid, h('p', { class: 'muted' }, `${o.data.bonds.total} bonds`),
      h('table', { class: 'heat' }, h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'phase'), risks.map((k) => h('th', { scope: 'col', class: 'num' }, k)))),
        h('tbody', {}, phases.map((p) => h('tr', {}, h('th', { scope: 'row' }, p),
          risks.map((k) => { const c = count(p, k); return h('td', { class: `num h${Math.ceil((c / max) * 4)}` }, c); }))))));
    const na = o.data.needs_attention;
    const bondRows = (list, why) => list.map((b) => h('tr', {}, h('td', {}, userLink(b.user_id)), h('td', {}, why), h('td', {}, b.phase), riskCell(b.risk_level), h('td', { class: 'num' }, `${b.daily_msg_count}/${b.daily_msg_cap || '∞'}`)));
    fill(attention, table(['user', 'why', 'phase', 'risk', 'today/cap'], [
      ...bondRows(na.at_risk, 'risk'), ...bondRows(na.at_cap, "at today's cap"),
      ...na.unreached.map((u) => h('tr', {}, h('td', {}, userLink(u.user_id)), h('td', {}, `${u.queued} queued, no device seen since ${u.last_seen_at ? when(u.last_seen_at) : 'ever'}`), h('td', {}, '—'), h('td', {}, '—'), h('td', {}, '—'))),
    ]));
    return true;
  }
  return { title: 'Overview', root, refresh };
}

// ---- bonds ----
const RISKS = ['', 'low', 'medium', 'high', 'critical'];
function bonds() {
  const phase = h('input', { id: 'f-phase', name: 'phase', placeholder: 'any' });
  const risk = h('select', { id: 'f-risk', name: 'risk' }, RISKS.map((r) => h('option', { value: r }, r || 'any')));
  const search = h('input', { id: 'f-user', name: 'user', type: 'search', placeholder: 'starts with' });
  const form = h('form', { class: 'filters', role: 'search' },
    h('label', { for: 'f-phase' }, 'Phase', phase), h('label', { for: 'f-risk' }, 'Risk', risk),
    h('label', { for: 'f-user' }, 'User id', search), h('button', { type: 'submit' }, 'Filter'));
  const body = h('div');
  const prev = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Previous page');
  const next = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Next page');
  const root = h('section', { 'aria-labelledby': 'v-title' }, h('h1', { id: 'v-title' }, 'Bonds'), form, body, h('div', { class: 'row' }, prev, next));
  let cursors = [null];
  let page = 0;
  let nextCursor = null;
  const url = () => {
    const q = new URLSearchParams({ limit: '50' });
    if (phase.value.trim()) q.set('phase', phase.value.trim());
    if (risk.value) q.set('risk_level', risk.value);
    if (search.value.trim()) q.set('user_id_prefix', search.value.trim());
    if (cursors[page]) q.set('cursor', cursors[page]);
    return `/v1/bonds?${q}`;
  };
  async function refresh(force) {
    const r = await get(url());
    if (!r.changed && !force) return false;
    nextCursor = r.data.next_cursor;
    next.disabled = !nextCursor;
    prev.disabled = page === 0;
    fill(body, table(['user', 'phase', 'risk', h('th', { scope: 'col', class: 'num' }, 'cap'), h('th', { scope: 'col', class: 'num' }, 'today'), h('th', { scope: 'col', class: 'hide-narrow' }, 'last update')],
      r.data.items.map((b) => h('tr', {}, h('td', {}, userLink(b.user_id)), h('td', {}, b.phase), riskCell(b.risk_level),
        h('td', { class: 'num' }, b.daily_msg_cap || '—'), h('td', { class: 'num' }, b.daily_msg_count), h('td', { class: 'hide-narrow' }, when(b.last_updated))))));
    return true;
  }
  form.addEventListener('submit', (ev) => { ev.preventDefault(); cursors = [null]; page = 0; refresh(true).catch(() => {}); });
  next.addEventListener('click', () => { if (!nextCursor) return; cursors[page + 1] = nextCursor; page += 1; refresh(true).catch(() => {}); });
  prev.addEventListener('click', () => { if (page > 0) { page -= 1; refresh(true).catch(() => {}); } });
  return { title: 'Bonds', root, refresh: () => refresh(false) };
}

// ---- one user ----
const EVENT_TYPES = ['', 'phase_transition', 'risk_change', 'admin_action', 'ulm_spike'];
function user({ id }, navigate) {
  const enc = encodeURIComponent(id);
  const card = h('div');
  const peaks = h('div');
  const devices = h('div');
  const proposals = h('div');
  const notes = h('div');
  const timeline = h('ol', { class: 'timeline', reversed: true });
  const evType = h('select', { id: 'ev-type' }, EVENT_TYPES.map((t) => h('option', { value: t }, t || 'all')));
  const evMore = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Older events');
  const capMsg = h('div');
  const noteMsg = h('div');
  const eraseMsg = h('div');
  const admin = isAdmin();
  let etag = null; // of the bond whose cap the field shows: a save is refused if it moved
  let bond = null;

  const capInput = h('input', { id: 'cap', type: 'number', min: 0, max: 1000000, step: 1, required: true });
  const capForm = h('form', { class: 'row' }, h('label', { for: 'cap' }, 'Daily message cap', capInput), h('button', { type: 'submit' }, 'Save cap'));
  const noteInput = h('textarea', { id: 'note', maxlength: 2000, required: true });
  const noteForm = h('form', {}, h('label', { for: 'note' }, 'Note', noteInput), h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Add note')));
  const confirmInput = h('input', { id: 'erase-confirm', autocomplete: 'off' });
  const confirmBtn = h('button', { type: 'submit', class: 'danger', disabled: true }, 'Erase permanently');
  const confirmBox = h('form', { class: 'confirm', hidden: true },
    h('p', {}, 'This deletes the bond entry, its events, scouts, devices and proposals. It cannot be undone.'),
    h('label', { for: 'erase-confirm' }, 'Type the user id to confirm', confirmInput),
    h('div', { class: 'row' }, confirmBtn, h('button', { type: 'button', class: 'secondary', id: 'erase-cancel' }, 'Cancel')));
  const eraseBtn = h('button', { type: 'button', class: 'danger' }, 'Erase user');

  const root = h('section', { 'aria-labelledby': 'v-title' },
    h('h1', { id: 'v-title' }, 'User ', h('span', {}, id)),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-label': 'Bond' }, h('h2', {}, 'Bond'), card, peaks),
      h('section', { class: 'card', 'aria-label': 'Cap' }, h('h2', {}, 'Cap'), h('div', { id: 'cap-now' }), admin ? capForm : null, capMsg),
      h('section', { class: 'card', 'aria-label': 'Notes' }, h('h2', {}, 'Notes'), notes, admin ? noteForm : null, noteMsg),
      h('section', { class: 'card', 'aria-label': 'Devices' }, h('h2', {}, 'Devices'), devices),
      h('section', { class: 'card', 'aria-label': 'Proposals' }, h('h2', {}, 'Proposals by status'), proposals),
      h('section', { class: 'card wide', 'aria-label': 'Timeline' }, h('h2', {}, 'Timeline'),
        h('div', { class: 'row' }, h('label', { for: 'ev-type' }, 'Event type', evType)), timeline, evMore),
      admin ? h('section', { class: 'card wide', 'aria-label': 'Erase' }, h('h2', {}, 'Erase'), eraseBtn, confirmBox, eraseMsg) : null));

  let events = [];
  let evCursor = null;
  function drawEvents() {
    const t = evType.value;
    const shown = events.filter((e) => !t || e.event_type === t);
    fill(timeline, shown.length ? shown.map((e) => h('li', {}, h('time', { datetime: e.timestamp }, when(e.timestamp)), ' · ', h('strong', {}, e.event_type), ' · ', e.detail)) : h('li', { class: 'muted' }, 'no events'));
    evMore.hidden = !evCursor;
  }
  async function refresh() {
    const [[b, ev, dv, pr], changed] = await fetchAll([`/v1/bonds/${enc}`, `/v1/bonds/${enc}/events?limit=50`, `/v1/users/${enc}/devices?limit=50`, `/v1/users/${enc}/proposals?limit=200`]);
    if (!changed && bond) return false;
    if (b.missing) {
      fill(card, h('p', { class: 'muted' }, 'No bond entry for this user.'));
    } else {
      bond = b.data;
      fill(card, h('dl', { class: 'kv' },
        h('dt', {}, 'phase'), h('dd', {}, bond.phase), h('dt', {}, 'previous phase'), h('dd', {}, bond.prev_phase),
        h('dt', {}, 'archetype'), h('dd', {}, bond.archetype), h('dt', {}, 'risk'), h('dd', { class: `risk-${bond.risk_level}` }, bond.risk_level),
        h('dt', {}, 'turns'), h('dd', {}, bond.turn_count), h('dt', {}, 'last update'), h('dd', {}, when(bond.last_updated))));
      const pk = Object.entries(bond.peak_nodes || {}).sort((x, y) => y[1] - x[1]).slice(0, 12);
      fill(peaks, h('h2', {}, 'Peaks'), barChart(pk.map(([k, v]) => ({ label: k, value: v })), { title: 'Peak values by node' }));
      fill(root.querySelector('#cap-now'), h('p', {}, `${bond.daily_msg_count} of ${bond.daily_msg_cap || 'unlimited'} today; resets ${when(new Date(new Date(bond.daily_msg_reset_at).getTime() + 86400000).toISOString())}`));
      // while the operator edits the field, it keeps the ETag of the value they started from
      if (document.activeElement !== capInput) {
        capInput.value = String(bond.daily_msg_cap);
        etag = b.etag;
      }
      fill(notes, bond.notes.length ? h('ul', { class: 'timeline' }, bond.notes.map((n) => h('li', {}, n))) : h('p', { class: 'muted' }, 'no notes'));
    }
    events = ev.missing ? [] : ev.data.items;
    evCursor = ev.missing ? null : ev.data.next_cursor;
    drawEvents();
    fill(devices, dv.data ? table(['name', 'online', 'last seen'], dv.data.items.map((d) => h('tr', {}, h('td', {}, d.name), h('td', {}, d.online ? 'online' : 'offline'), h('td', {}, when(d.last_seen_at))))) : 'none');
    const by = {};
    for (const p of (pr.data && pr.data.items) || []) by[p.status] = (by[p.status] || 0) + 1;
    fill(proposals, barChart(Object.entries(by).map(([k, v]) => ({ label: k, value: v })), { title: 'Proposals by status' }),
      ((pr.data && pr.data.items) || []).slice(0, 5).map((p) => h('p', { class: 'muted' }, `${p.status}: ${p.raw_subject || p.reason || p.source_type || ''}`)));
    return true;
  }
  evType.addEventListener('change', drawEvents);
  evMore.addEventListener('click', async () => {
    const r = await get(`/v1/bonds/${enc}/events?limit=50&cursor=${encodeURIComponent(evCursor)}`);
    events = events.concat(r.data.items);
    evCursor = r.data.next_cursor;
    drawEvents();
  });
  capForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = Number(capInput.value);
    if (!Number.isInteger(v) || v < 0) return message(capMsg, 'error', 'The cap is a whole number, 0 for no cap.');
    try {
      const r = await send('PUT', `/v1/bonds/${enc}/rate-limit`, { daily_msg_cap: v }, etag ? { 'If-Match': etag } : {});
      message(capMsg, 'ok', `Saved: the daily cap is ${r.data.daily_msg_cap}.`);
      forget(`/v1/bonds/${enc}`);
      await refresh();
    } catch (e) {
      if (e.status === 412) {
        message(capMsg, 'error', 'Someone changed this bond since you loaded it; your cap was not saved. The page now shows the current values: check them and save again.');
        forget(`/v1/bonds/${enc}`);
        bond = null;
        capInput.blur();
        await refresh().catch(() => {});
      } else message(capMsg, 'error', `Not saved: ${e.message}`);
    }
  });
  noteForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await send('POST', `/v1/bonds/${enc}/notes`, { note: noteInput.value });
      noteInput.value = '';
      message(noteMsg, 'ok', 'Note added.');
      await refresh();
    } catch (e) {
      message(noteMsg, 'error', `Not added: ${e.message}`);
    }
  });
  eraseBtn.addEventListener('click', () => { confirmBox.hidden = false; confirmInput.focus(); });
  confirmInput.addEventListener('input', () => { confirmBtn.disabled = confirmInput.value !== id; });
  confirmBox.querySelector('#erase-cancel').addEventListener('click', () => { confirmBox.hidden = true; confirmInput.value = ''; confirmBtn.disabled = true; eraseBtn.focus(); });
  confirmBox.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (confirmInput.value !== id) return;
    try {
      await send('DELETE', `/v1/users/${enc}`);
      navigate('/deck/bonds');
    } catch (e) {
      message(eraseMsg, 'error', `Not erased: ${e.message}`);
    }
  });
  return { title: `User ${id}`, root, refresh };
}

// ---- lessons ----
const STATUSES = ['new', 'in_progress', 'closed', 'linked'];
function lessons() {
  const type = h('input', { id: 'l-type', placeholder: 'any' });
  const status = h('select', { id: 'l-status' }, ['', ...STATUSES].map((s) => h('option', { value: s }, s || 'any')));
  const repo = h('input', { id: 'l-repo', placeholder: 'any' });
  const form = h('form', { class: 'filters', role: 'search' }, h('label', { for: 'l-type' }, 'Lesson type', type), h('label', { for: 'l-status' }, 'Status', status), h('label', { for: 'l-repo' }, 'Repository', repo), h('button', { type: 'submit' }, 'Filter'));
  const body = h('div');
  const msg = h('div');
  const root = h('section', { 'aria-labelledby': 'v-title' }, h('h1', { id: 'v-title' }, 'Lessons'), form, msg, body);
  const url = () => {
    const q = new URLSearchParams({ limit: '50' });
    if (type.value.trim()) q.set('lesson_type', type.value.trim());
    if (status.value) q.set('status', status.value);
    if (repo.value.trim()) q.set('repo', repo.value.trim());
    return `/v1/lessons?${q}`;
  };
  async function refresh(force) {
    const r = await get(url());
    if (!r.changed && !force) return false;
    const admin = isAdmin();
    fill(body, table(['id', 'type', 'repo', 'stage', 'status', 'created', 'detail'], r.data.items.map((l) => {
      let cell = l.status;
      if (admin) {
        const sel = h('select', { 'aria-label': `Status of lesson ${l.id}`, 'data-lesson': l.id }, STATUSES.concat(STATUSES.includes(l.status) ? [] : [l.status]).map((s) => h('option', { value: s, selected: s === l.status }, s)));
        sel.addEventListener('change', async () => {
          try {
            await send('PATCH', `/v1/lessons/${l.id}`, { status: sel.value });
            message(msg, 'ok', `Lesson ${l.id} is now ${sel.value}.`);
          } catch (e) {
            message(msg, 'error', `Lesson ${l.id} not changed: ${e.message}`);
          }
        });
        cell = sel;
      }
      return h('tr', {}, h('td', { class: 'num' }, l.id), h('td', {}, l.lesson_type), h('td', {}, l.repo || '—'), h('td', {}, l.stage || '—'), h('td', {}, cell), h('td', {}, when(l.created_at)), h('td', {}, JSON.stringify(l.detail).slice(0, 200)));
    })));
    return true;
  }
  form.addEventListener('submit', (ev) => { ev.preventDefault(); refresh(true).catch((e) => message(msg, 'error', e.message)); });
  return { title: 'Lessons', root, refresh: () => refresh(false) };
}

// ---- audit ----
function audit() {
  const actor = h('input', { id: 'a-actor', placeholder: 'any' });
  const action = h('input', { id: 'a-action', placeholder: 'any' });
  const target = h('input', { id: 'a-target', placeholder: 'any' });
  const form = h('form', { class: 'filters', role: 'search' }, h('label', { for: 'a-actor' }, 'Actor', actor), h('label', { for: 'a-action' }, 'Action', action), h('label', { for: 'a-target' }, 'Target', target), h('button', { type: 'submit' }, 'Filter'));
  const body = h('div');
  const root = h('section', { 'aria-labelledby': 'v-title' }, h('h1', { id: 'v-title' }, 'Audit'), form, body);
  const url = () => {
    const q = new URLSearchParams();
    if (actor.value.trim()) q.set('actor', actor.value.trim());
    if (action.value.trim()) q.set('action', action.value.trim());
    if (target.value.trim()) q.set('target', target.value.trim());
    return `/v1/audit?${q}`;
  };
  async function refresh(force) {
    let r;
    try {
      r = await get(url());
    } catch (e) {
      if (e.status === 404) { fill(body, h('p', { class: 'muted' }, 'This server has no audit trail route (GET /v1/audit).')); return false; }
      throw e;
    }
    if (!r.changed && !force) return false;
    fill(body, table(['when', 'who', 'action', 'target', 'detail'], r.data.items.map((a) => h('tr', {}, h('td', {}, when(a.at)), h('td', {}, a.actor), h('td', {}, a.action), h('td', {}, a.target), h('td', {}, JSON.stringify(a.detail))))));
    return true;
  }
  form.addEventListener('submit', (ev) => { ev.preventDefault(); refresh(true).catch(() => {}); });
  return { title: 'Audit', root, refresh: () => refresh(false) };
}

function notfound() {
  return { title: 'Not found', root: h('section', {}, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '/deck/', 'data-link': true }, 'Back to the overview'))), refresh: async () => false };
}

export const views = { overview, bonds, user, lessons, audit, notfound };
