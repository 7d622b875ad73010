// The console's only way to the server: same-origin fetch with the session cookie, the
// CSRF token on writes, and conditional reads (If-None-Match) for the 5 s refresh.
const cache = new Map(); // url -> { etag, data }
export const session = { name: null, scope: null, csrf: null };
let onSignedOut = () => {};

export function whenSignedOut(fn) {
  onSignedOut = fn;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function parse(res) {
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** A GET; answers { data, etag, changed } (changed false when the server said 304). */
export async function get(path) {
  const prev = cache.get(path);
  const headers = {};
  if (prev && prev.etag) headers['If-None-Match'] = prev.etag;
  const res = await fetch(path, { headers, credentials: 'same-origin', cache: 'no-store' });
  if (res.status === 304 && prev) return { data: prev.data, etag: prev.etag, changed: false };
  const body = await parse(res);
  if (res.status === 401) {
    cache.clear();
    onSignedOut();
    throw new ApiError(401, body);
  }
  if (!res.ok) throw new ApiError(res.status, body);
  const etag = res.headers.get('ETag');
  cache.set(path, { etag, data: body });
  return { data: body, etag, changed: true };
}

/** A write with the session's CSRF token; extra headers (If-Match) as given. */
export async function send(method, path, body, extra = {}) {
  const headers = { 'X-CSRF-Token': session.csrf || '', ...extra };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await parse(res);
  if (res.status === 401) {
    cache.clear();
    onSignedOut();
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return { data, etag: res.headers.get('ETag'), status: res.status };
}

export function forget(path) {
  cache.delete(path);
}

export async function loadSession() {
  try {
    const { data } = await get('/v1/sessions/current');
    Object.assign(session, { name: data.name, scope: data.scope, csrf: data.csrf_token });
    return true;
  } catch {
    Object.assign(session, { name: null, scope: null, csrf: null });
    return false;
  }
}

export async function signIn(key) {
  const res = await fetch('/v1/sessions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    credentials: 'same-origin',
    body: JSON.stringify({ api_key: key }),
  });
  const data = await parse(res);
  if (!res.ok) throw new ApiError(res.status, data);
  cache.clear();
  Object.assign(session, { name: data.name, scope: data.scope, csrf: data.csrf_token });
}

export async function signOut() {
  try {
    await send('DELETE', '/v1/sessions/current');
  } finally {
    cache.clear();
    Object.assign(session, { name: null, scope: null, csrf: null });
  }
}

export const isAdmin = () => session.scope === 'admin';
