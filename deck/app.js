// The Observation Deck: signs in, routes deep links to views, refreshes every 5 s.
import { loadSession, signIn, signOut, session, whenSignedOut } from './api.js';
import { h, views, clear } from './views.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signout = document.getElementById('signout');
const status = document.getElementById('status');
const REFRESH_MS = 5000;
let current = null; // { view, timer }

function route(path) {
  const p = path.replace(/\/+$/, '') || '/deck';
  if (p === '/deck') return { name: 'overview', params: {} };
  if (p === '/deck/bonds') return { name: 'bonds', params: {} };
  if (p === '/deck/lessons') return { name: 'lessons', params: {} };
  if (p === '/deck/audit') return { name: 'audit', params: {} };
  const m = p.match(/^\/deck\/users\/([^/]+)$/);
  if (m) {
    let id = null;
    try {
      id = decodeURIComponent(m[1]);
    } catch {
      /* badly encoded: not found */
    }
    if (id) return { name: 'user', params: { id } };
  }
  return { name: 'notfound', params: {} };
}

function stop() {
  if (current && current.timer) clearTimeout(current.timer);
  current = null;
}

function showSignIn(message) {
  stop();
  nav.hidden = true;
  signout.hidden = true;
  who.textContent = '';
  document.title = 'Sign in · Observation Deck';
  clear(main);
  const input = h('input', { id: 'api-key', type: 'password', autocomplete: 'off', required: true });
  const err = h('div', { class: 'msg error', role: 'alert', hidden: !message }, message || '');
  const form = h('form', { class: 'card signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('label', { for: 'api-key' }, 'API key', input),
    err,
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await signIn(input.value.trim());
      input.value = '';
      await render(location.pathname);
    } catch (e) {
      err.hidden = false;
      err.textContent = e.status === 401 ? 'That key is unknown or revoked.' : e.message;
    }
  });
  main.appendChild(form);
  input.focus();
}

async function tick() {
  if (!current) return;
  const mine = current;
  try {
    const changed = await mine.view.refresh();
    status.textContent = `updated ${new Date().toLocaleTimeString()}${changed ? '' : ' (no change)'}`;
  } catch (e) {
    if (e.status !== 401) status.textContent = `refresh failed: ${e.message}`;
  }
  if (current === mine) mine.timer = setTimeout(tick, REFRESH_MS);
}

async function render(path) {
  stop();
  if (!session.scope && !(await loadSession())) {
    showSignIn();
    return;
  }
  nav.hidden = false;
  signout.hidden = false;
  who.textContent = `${session.name} (${session.scope})`;
  const { name, params } = route(path);
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const t0 = performance.now();
  performance.mark(`deck:${name}:start`);
  clear(main);
  const view = views[name](params, navigate);
  document.title = `${view.title} · Observation Deck`;
  main.appendChild(view.root);
  current = { view, timer: null };
  try {
    await view.refresh();
  } catch (e) {
    if (e.status === 401) return;
    view.root.appendChild(h('div', { class: 'msg error', role: 'alert' }, e.message));
  }
  performance.measure(`deck:${name}`, { start: t0, end: performance.now() });
  main.dataset.rendered = name;
  if (current && current.view === view) current.timer = setTimeout(tick, REFRESH_MS);
}

export function navigate(path) {
  history.pushState(null, '', path);
  render(path).then(() => main.focus({ preventScroll: true }));
}

document.addEventListener('click', (ev) => {
  const a = ev.target.closest && ev.target.closest('a[data-link]');
  if (!a || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  ev.preventDefault();
  navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', () => render(location.pathname));
signout.addEventListener('click', async () => {
  try {
    await signOut();
  } finally {
    showSignIn('Signed out.');
  }
});
whenSignedOut(() => {
  Object.assign(session, { name: null, scope: null, csrf: null });
  showSignIn('Your session ended. Sign in again.');
});

render(location.pathname);
