// The labctl web console: watch the cluster, manage tasks and users, browse products.
//
// Plain JavaScript, no build step, nothing loaded from anywhere but the serving node.
// Reads go to the serving node's own API. Everything aimed at another node — its /status, a
// control request, a write to the leader — goes through the serving node's relay,
// /console/nodes/<name>/<path>, which passes the answer back with X-Labctl-Node naming the
// node that gave it, and turns a follower's 307 into a redirect the browser follows on this
// origin. Writes carry an Idempotency-Key, so retrying one during an election is safe.
'use strict';

const POLL_VISIBLE_MS = 500;
const POLL_HIDDEN_MS = 2000;
const REFRESH_MS = 2000;
const STATUS_TIMEOUT_MS = 2500;
const WRITE_PATIENCE_MS = 20000;
const CATCH_UP_MS = 3000;
const MAX_EVENTS = 40;
const TOKEN_KEY = 'labctl-console-token';
/** The bearer token of this tab's login, when the nodes require accounts (--auth). */
const SESSION_KEY = 'labctl-console-session';

const STATUS_NAMES = { todo: 'To do', in_progress: 'In progress', done: 'Done' };
const PRIORITY_NAMES = { high: 'High', medium: 'Medium', low: 'Low' };
/** The status changes offered on a task, by its current status. */
const TRANSITIONS = {
  todo: [
    ['in_progress', 'Start'],
    ['done', 'Mark done'],
  ],
  in_progress: [
    ['done', 'Mark done'],
    ['todo', 'Back to to-do'],
  ],
  done: [['todo', 'Reopen']],
};

const state = {
  self: null,
  nodes: [],
  /** name -> { status, error, lastOk, card } */
  seen: new Map(),
  events: [],
  tokenRequired: false,
  /** Whether the nodes require accounts, and who is logged in: { name, role } or null. */
  auth: false,
  me: null,
  view: 'cluster',
  tasks: { offset: 0, limit: 20, key: '', page: null, loading: false },
  users: [],
  products: { offset: 0, limit: 20, key: '' },
  editing: null,
};

// ---- small helpers ----

const $ = (id) => document.getElementById(id);

/** An element with attributes (`text`, `class`, `on…` handlers, `dataset`) and children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c);
  }
  return el;
}

/** Text read by screen readers only, e.g. which task a button acts on. */
const srOnly = (text) => h('span', { class: 'sr-only', text });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return 'console-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function nodeNumber(name) {
  return Number(String(name).replace(/^node/, '')) || 0;
}

function clock(date) {
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

function ago(ms) {
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s ago`;
  return `${Math.floor(ms / 60000)} min ago`;
}

function money(amount, currency) {
  if (amount === null || amount === undefined) return '—';
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency: currency || 'EUR' }).format(amount);
  } catch {
    return `${amount.toFixed(2)} ${currency || ''}`.trim();
  }
}

// ---- messages ----

function notice(text) {
  $('notice').textContent = text;
}

function showError(err) {
  const box = $('alert');
  box.replaceChildren(
    h('p', { text: err instanceof ApiError ? err.describe() : String(err.message || err) }),
    h('button', { type: 'button', class: 'dismiss', onclick: () => box.replaceChildren() }, 'Dismiss'),
  );
}

function clearError() {
  $('alert').replaceChildren();
}

/** An API answer that was not a success; `message` is the API's JSON `error`. */
class ApiError extends Error {
  constructor(status, message, node) {
    super(message);
    this.status = status;
    this.node = node;
  }

  describe() {
    if (!this.status) return this.message;
    return `${this.node || 'The node'} answered ${this.status}: ${this.message}`;
  }
}

async function readBody(res) {
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { error: text.slice(0, 300) };
  }
}

const errorText = (res, body) => (body && body.error) || `${res.status} ${res.statusText}`;

// ---- talking to nodes ----

/** The URL of `path` on node `name`: direct for the serving node, else through its relay. */
function nodeUrl(name, path) {
  return name === state.self ? path : `/console/nodes/${encodeURIComponent(name)}${path}`;
}

/** `headers` with this tab's login token, when there is one. */
function withLogin(headers) {
  const token = sessionStorage.getItem(SESSION_KEY);
  return token ? { ...headers, Authorization: `Bearer ${token}` } : headers;
}

/** A 401 while logged in: the token expired or was ended; ask for the login again. */
function loggedOut(res) {
  if (res.status === 401 && state.auth && sessionStorage.getItem(SESSION_KEY)) {
    sessionStorage.removeItem(SESSION_KEY);
    setMe(null);
  }
}

/** GET from the serving node's own API. */
async function get(path) {
  let res;
  try {
    res = await fetch(path, { cache: 'no-store', headers: withLogin({ Accept: 'application/json' }) });
  } catch (e) {
    throw new ApiError(0, `${state.self || 'The node'} did not answer (${e.message})`);
  }
  const body = await readBody(res);
  if (!res.ok) {
    loggedOut(res);
    throw new ApiError(res.status, errorText(res, body), state.self);
  }
  return body;
}

/** Every page of a listing. */
async function getAll(path, limit = 100) {
  const out = [];
  for (let offset = 0; offset < 100 * limit; offset += limit) {
    const page = await get(`${path}?offset=${offset}&limit=${limit}`);
    out.push(...page.data);
    if (!page.pagination.has_more) break;
  }
  return out;
}

/**
 * A write, sent to the leader this console knows of (or to the serving node, which redirects
 * to its leader). Redirects are followed by the browser; while there is no leader (503) or
 * the leader does not answer (502/504) it is retried, with the same Idempotency-Key, for up
 * to WRITE_PATIENCE_MS. Resolves to { body, node, redirectedBy }.
 */
async function write(method, path, payload) {
  const key = newKey();
  const started = Date.now();
  let target = currentLeader() || state.self;
  for (;;) {
    let res;
    try {
      res = await fetch(`/console/nodes/${encodeURIComponent(target)}${path}`, {
        method,
        cache: 'no-store',
        headers: withLogin({ 'Content-Type': 'application/json', Accept: 'application/json', 'Idempotency-Key': key }),
        body: payload === undefined ? undefined : JSON.stringify(payload),
      });
    } catch (e) {
      throw new ApiError(0, `${state.self} did not answer (${e.message})`);
    }
    const body = await readBody(res);
    const node = res.headers.get('X-Labctl-Node') || target;
    if (res.ok) {
      await catchUp(node);
      return { body, node, redirectedBy: res.redirected ? target : null };
    }
    const patient = Date.now() - started < WRITE_PATIENCE_MS;
    if (patient && res.status === 307 && body && body.leader) {
      target = body.leader;
      continue;
    }
    if (patient && [502, 503, 504].includes(res.status)) {
      // No leader yet, or it stopped answering: ask the serving node, which knows whom it follows.
      target = state.self;
      const retryAfter = Number(res.headers.get('Retry-After')) || 0;
      await sleep(Math.min(Math.max(retryAfter * 1000, 200), 1000));
      continue;
    }
    loggedOut(res);
    throw new ApiError(res.status, errorText(res, body), node);
  }
}

/**
 * Waits (briefly) until the serving node has applied everything the node that answered a
 * write had committed, so the listings read next from the serving node show the write.
 */
async function catchUp(answered) {
  if (answered === state.self) return;
  try {
    const res = await fetch(nodeUrl(answered, '/status'), {
      cache: 'no-store',
      signal: AbortSignal.timeout(STATUS_TIMEOUT_MS),
    });
    const committed = (await res.json()).commit_index;
    const deadline = Date.now() + CATCH_UP_MS;
    while (Date.now() < deadline) {
      if ((await get('/status')).applied_index >= committed) return;
      await sleep(50);
    }
  } catch {
    // The periodic refresh shows the write once this node has it.
  }
}

function answeredBy(result) {
  const via =
    result.redirectedBy && result.redirectedBy !== result.node ? `, redirected by ${result.redirectedBy}` : '';
  return `answered by ${result.node}${via}`;
}

// ---- cluster view ----

/** The node that says it leads, in the highest term among those answering. */
function currentLeader() {
  let best = null;
  for (const [name, seen] of state.seen) {
    const s = seen.status;
    if (!seen.error && s && s.role === 'LEADER' && (!best || s.term > best.term)) best = { name, term: s.term };
  }
  if (best) return best.name;
  const own = state.seen.get(state.self);
  return (own && own.status && own.status.leader) || null;
}

async function pollNode(name) {
  const seen = state.seen.get(name);
  try {
    const res = await fetch(nodeUrl(name, '/status'), {
      cache: 'no-store',
      signal: AbortSignal.timeout(STATUS_TIMEOUT_MS),
    });
    const body = await readBody(res);
    if (!res.ok) throw new Error(errorText(res, body));
    noteChanges(name, seen, body, null);
    seen.status = body;
    seen.error = null;
    seen.lastOk = Date.now();
  } catch (e) {
    const error = e.name === 'TimeoutError' ? 'no answer in time' : e.message;
    noteChanges(name, seen, seen.status, error);
    seen.error = error;
  }
}

function addEvent(text, important) {
  state.events.unshift({ at: new Date(), text, important });
  state.events.length = Math.min(state.events.length, MAX_EVENTS);
}

function noteChanges(name, seen, now, error) {
  if (error && !seen.error && seen.lastOk) addEvent(`${name} stopped answering (${error})`, true);
  if (!error && seen.error && seen.lastOk) addEvent(`${name} answers again`, false);
  const before = seen.status;
  if (error || !now) return;
  if (!before) {
    addEvent(`${name} is ${now.role} in term ${now.term}`, now.role === 'LEADER');
  } else if (before.role !== now.role || before.term !== now.term) {
    const what = before.role !== now.role ? `${before.role} → ${now.role}` : now.role;
    addEvent(`${name}: ${what}, term ${before.term} → ${now.term}`, now.role === 'LEADER');
  }
}

function fact(label, cls, rowCls) {
  const dd = h('dd', { class: cls || null });
  return { row: h('div', { class: rowCls || null }, h('dt', { text: label }), dd), dd };
}

function buildCard(name) {
  const facts = {
    term: fact('Term'),
    leader: fact('Leader'),
    commit: fact('Commit index'),
    applied: fact('Applied index'),
    last: fact('Last log index'),
    elections: fact('Elections'),
    health: fact('Health', 'health'),
    contact: fact('Last contact'),
    problem: fact('Why', 'problem', 'wide'),
    replication: fact('Followers’ match index', null, 'wide'),
  };
  const role = h('span', { class: 'role' });
  const you = name === state.self ? h('span', { class: 'you', text: 'serving this console' }) : null;
  const control = (request, label, wire) =>
    h(
      'button',
      {
        type: 'button',
        class: 'control needs-admin',
        dataset: { focus: `${request}-${name}` },
        onclick: (e) => sendControl(name, request, wire, e.currentTarget),
      },
      label,
      srOnly(` ${name}`),
    );
  const card = h(
    'li',
    { class: 'node', id: `node-${name}`, 'aria-labelledby': `node-${name}-name` },
    h('div', { class: 'node-head' }, h('h2', { id: `node-${name}-name`, text: name }), role, you),
    h(
      'dl',
      { class: 'facts' },
      Object.values(facts).map((f) => f.row),
    ),
    h(
      'div',
      { class: 'actions' },
      control('timeout', 'Timeout', 'TIMEOUT'),
      control('convert-follower', 'Convert to follower', 'CONVERT_FOLLOWER'),
    ),
  );
  return { card, role, facts };
}

function renderCluster() {
  const list = $('nodes');
  const leader = currentLeader();
  let answering = 0;
  for (const name of state.nodes) {
    const seen = state.seen.get(name);
    if (!seen.card) {
      seen.card = buildCard(name);
      list.append(seen.card.card);
    }
    const { card, role, facts } = seen.card;
    const s = seen.status;
    const down = Boolean(seen.error) || !s;
    if (!seen.error && s) answering += 1;
    const roleName = down ? (seen.error ? 'UNREACHABLE' : 'ASKING') : s.role;
    card.className = `node role-${roleName.toLowerCase()}${name === leader && !down ? ' is-leader' : ''}`;
    role.textContent = roleName;
    role.className = `role role-${roleName.toLowerCase()}`;
    const set = (f, v) => {
      if (f.dd.textContent !== v) f.dd.textContent = v;
    };
    set(facts.term, s ? String(s.term) : '—');
    set(facts.leader, s ? s.leader || 'none known' : '—');
    set(facts.commit, s ? String(s.commit_index) : '—');
    set(facts.applied, s ? String(s.applied_index) : '—');
    set(facts.last, s ? String(s.last_log_index) : '—');
    set(facts.elections, s ? String(s.elections) : '—');
    let health = 'asking…';
    if (seen.error) health = 'unreachable';
    else if (s) health = s.leader ? 'healthy' : 'no leader known';
    set(facts.health, health);
    facts.problem.row.hidden = !seen.error;
    set(facts.problem, seen.error || '');
    facts.health.dd.className = `health ${seen.error ? 'bad' : s && s.leader ? 'good' : 'warn'}`;
    set(facts.contact, seen.lastOk ? ago(Date.now() - seen.lastOk) : 'never');
    const matches = s && s.role === 'LEADER' ? s.peers.filter((p) => p.match_index !== undefined) : [];
    facts.replication.row.hidden = matches.length === 0;
    set(facts.replication, matches.map((p) => `${p.name} ${p.match_index}`).join(' · '));
  }
  const leaderStatus = leader && state.seen.get(leader).status;
  const summary = leaderStatus
    ? `Leader ${leader} in term ${leaderStatus.term}. ${answering} of ${state.nodes.length} nodes answer.`
    : `No leader right now. ${answering} of ${state.nodes.length} nodes answer.`;
  if ($('cluster-summary').textContent !== summary) $('cluster-summary').textContent = summary;
  renderServedBy(leader);
  renderEvents();
}

function renderServedBy(leader) {
  const own = state.seen.get(state.self);
  const s = own && own.status;
  const text = s
    ? `Console of ${state.self} · ${s.role.toLowerCase()} · term ${s.term} · leader ${leader || 'unknown'}`
    : `Console of ${state.self}`;
  if ($('served-by').textContent !== text) $('served-by').textContent = text;
}

function renderEvents() {
  const key = state.events.length ? state.events[0].at.getTime() + state.events[0].text : '';
  const list = $('events');
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(
    ...state.events.map((e) =>
      h('li', { class: e.important ? 'important' : null }, h('time', { text: clock(e.at) }), ' ', e.text),
    ),
  );
}

async function sendControl(name, request, wire, button) {
  clearError();
  let headers = { Accept: 'application/json' };
  const token = $('console-token').value.trim();
  if (state.auth) headers = withLogin(headers);
  else if (token) headers.Authorization = `Bearer ${token}`;
  button.disabled = true;
  try {
    let res;
    try {
      res = await fetch(nodeUrl(name, `/api/control/${request}`), { method: 'POST', headers, cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, `${state.self} did not answer (${e.message})`);
    }
    const body = await readBody(res);
    if (!res.ok) {
      const err = new ApiError(res.status, errorText(res, body), name);
      if (res.status === 401 && state.auth) {
        loggedOut(res);
        err.message += '. Log in (top of the page) as an admin.';
      } else if (res.status === 401) {
        $('token-box').hidden = false;
        err.message += '. Enter the console token above the nodes.';
      }
      throw err;
    }
    notice(`${wire} sent to ${name} at ${clock(new Date())}; watch the roles change.`);
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

/** Polls one node for ever; each node on its own, so a silent one delays no other. */
async function pollForever(name) {
  for (;;) {
    await pollNode(name);
    renderCluster();
    await sleep(state.view === 'cluster' && !document.hidden ? POLL_VISIBLE_MS : POLL_HIDDEN_MS);
  }
}

// ---- tasks and users ----

function userName(id) {
  const user = state.users.find((u) => u.id === id);
  return user ? user.name : `user #${id}`;
}

function taskQuery() {
  const params = new URLSearchParams({ offset: state.tasks.offset, limit: state.tasks.limit });
  for (const [field, id] of [
    ['status', 'filter-status'],
    ['priority', 'filter-priority'],
    ['assignee', 'filter-assignee'],
  ]) {
    if ($(id).value) params.set(field, $(id).value);
  }
  return params;
}

async function loadTasks(force) {
  if (state.tasks.loading) return;
  state.tasks.loading = true;
  try {
    const [page, stats, users] = await Promise.all([
      get(`/api/tasks?${taskQuery()}`),
      get('/api/tasks/stats'),
      getAll('/api/users'),
    ]);
    const key = JSON.stringify([page, stats, users]);
    $('tasks-source').textContent = `As ${state.self} has applied the log; refreshed ${clock(new Date())}.`;
    if (!force && key === state.tasks.key) return;
    state.tasks.key = key;
    state.tasks.page = page;
    state.users = users;
    keepingFocus(() => {
      renderUsers();
      renderStats(stats);
      renderTasks(page);
    });
  } finally {
    state.tasks.loading = false;
  }
}

/** Runs `render` and puts the keyboard focus back on the element it was on. */
function keepingFocus(render) {
  const key = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.focus : null;
  render();
  if (key) {
    const again = document.querySelector(`[data-focus="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

function renderStats(stats) {
  $('stats-caption').textContent =
    `${stats.total} task${stats.total === 1 ? '' : 's'} in all, ${stats.overdue} overdue`;
  const bars = (el, counts, names, prefix) => {
    const max = Math.max(1, ...Object.values(counts));
    el.replaceChildren(
      ...Object.keys(names).map((k) => {
        const n = counts[k] || 0;
        const fill = h('span', { class: `fill ${prefix}-${k}` });
        fill.style.width = `${(100 * n) / max}%`;
        return h(
          'div',
          { class: 'bar-row' },
          h('dt', { text: names[k] }),
          h('dd', {}, h('span', { class: 'track' }, fill), h('span', { class: 'n', text: String(n) })),
        );
      }),
    );
  };
  bars($('stats-status'), stats.by_status, STATUS_NAMES, 'status');
  bars($('stats-priority'), stats.by_priority, PRIORITY_NAMES, 'prio');
}

function renderTasks(page) {
  const list = $('task-list');
  const today = new Date().toISOString().slice(0, 10);
  if (page.data.length === 0) {
    list.replaceChildren(h('li', { class: 'empty', text: 'No task matches these filters.' }));
  } else {
    list.replaceChildren(...page.data.map((t) => taskItem(t, today)));
  }
  $('task-count').textContent = `(${page.pagination.total})`;
  showPager(page, 'tasks');
}

/** Fills a listing's pager (`<prefix>-range`, `-prev`, `-next`); returns the range text. */
function showPager(page, prefix) {
  const p = page.pagination;
  const first = p.total === 0 ? 0 : p.offset + 1;
  const range = `${first}–${p.offset + page.data.length} of ${p.total}`;
  $(`${prefix}-range`).textContent = range;
  $(`${prefix}-prev`).disabled = p.offset === 0;
  $(`${prefix}-next`).disabled = !p.has_more;
  return range;
}

function taskItem(t, today) {
  const overdue = t.due_date && t.due_date < today && t.status !== 'done';
  const button = (label, action, onclick, cls) =>
    h(
      'button',
      { type: 'button', class: cls || null, dataset: { focus: `${action}-${t.id}` }, onclick },
      label,
      srOnly(` “${t.title}”`),
    );
  return h(
    'li',
    { class: `task status-${t.status}`, dataset: { id: t.id } },
    h(
      'div',
      { class: 'task-head' },
      h('h3', { class: 'task-title', text: t.title }),
      h('span', { class: `chip status-chip status-${t.status}`, text: STATUS_NAMES[t.status] || t.status }),
      h('span', { class: `chip prio-${t.priority}`, text: `${PRIORITY_NAMES[t.priority] || t.priority} priority` }),
      overdue ? h('span', { class: 'chip overdue', text: 'Overdue' }) : null,
    ),
    t.description ? h('p', { class: 'task-desc', text: t.description }) : null,
    h(
      'dl',
      { class: 'task-meta' },
      h(
        'div',
        {},
        h('dt', { text: 'Assignee' }),
        h('dd', { text: t.assignee != null ? userName(t.assignee) : 'nobody' }),
      ),
      h('div', {}, h('dt', { text: 'Due' }), h('dd', { text: t.due_date || 'no date' })),
      h('div', {}, h('dt', { text: 'Id' }), h('dd', { text: `#${t.id}` })),
    ),
    h(
      'div',
      { class: 'actions' },
      (TRANSITIONS[t.status] || []).map(([status, label]) =>
        button(label, `status-${status}`, () => changeStatus(t, status), 'primary-outline needs-member'),
      ),
      button('Edit', 'edit', () => startEdit(t), 'needs-member'),
      button('Delete', 'delete', () => deleteTask(t), 'danger needs-member'),
    ),
  );
}

/** The full task as PUT takes it (an update replaces every field). */
function taskInput(t) {
  return {
    title: t.title,
    description: t.description ?? null,
    due_date: t.due_date ?? null,
    status: t.status,
    priority: t.priority,
    assignee: t.assignee ?? null,
  };
}

async function run(action) {
  clearError();
  try {
    await action();
  } catch (e) {
    showError(e);
  }
}

function changeStatus(t, status) {
  return run(async () => {
    const result = await write('PUT', `/api/tasks/${t.id}`, { ...taskInput(t), status });
    notice(`Task #${t.id} “${t.title}” is now ${STATUS_NAMES[status].toLowerCase()} — ${answeredBy(result)}.`);
    await loadTasks(true);
  });
}

function deleteTask(t) {
  if (!window.confirm(`Delete task #${t.id} “${t.title}”?`)) return undefined;
  return run(async () => {
    const result = await write('DELETE', `/api/tasks/${t.id}`);
    if (state.editing && state.editing.id === t.id) resetTaskForm();
    notice(`Task #${t.id} “${t.title}” deleted — ${answeredBy(result)}.`);
    await loadTasks(true);
    $('h-task-list').setAttribute('tabindex', '-1');
    $('h-task-list').focus();
  });
}

function startEdit(t) {
  state.editing = t;
  $('task-form-title').textContent = `Edit task #${t.id}`;
  $('task-submit').textContent = 'Save changes';
  $('task-cancel').hidden = false;
  $('task-title').value = t.title;
  $('task-description').value = t.description || '';
  $('task-status').value = t.status;
  $('task-priority').value = t.priority;
  $('task-due').value = t.due_date || '';
  $('task-assignee').value = t.assignee != null ? String(t.assignee) : '';
  $('task-form').scrollIntoView({ block: 'nearest' });
  $('task-title').focus();
}

function resetTaskForm() {
  state.editing = null;
  $('task-form').reset();
  $('task-form-title').textContent = 'New task';
  $('task-submit').textContent = 'Create task';
  $('task-cancel').hidden = true;
}

function submitTask(event) {
  event.preventDefault();
  const payload = {
    title: $('task-title').value.trim(),
    description: $('task-description').value.trim() || null,
    due_date: $('task-due').value || null,
    status: $('task-status').value,
    priority: $('task-priority').value,
    assignee: $('task-assignee').value ? Number($('task-assignee').value) : null,
  };
  const editing = state.editing;
  return run(async () => {
    const result = editing
      ? await write('PUT', `/api/tasks/${editing.id}`, payload)
      : await write('POST', '/api/tasks', payload);
    const task = result.body;
    notice(`Task #${task.id} “${task.title}” ${editing ? 'saved' : 'created'} — ${answeredBy(result)}.`);
    resetTaskForm();
    await loadTasks(true);
    if (editing) {
      const again = document.querySelector(`[data-focus="edit-${task.id}"]`);
      if (again) again.focus();
    } else {
      $('task-title').focus();
    }
  });
}

function renderUsers() {
  const list = $('user-list');
  if (state.users.length === 0) {
    list.replaceChildren(h('li', { class: 'empty', text: 'No users yet.' }));
  } else {
    list.replaceChildren(
      ...state.users.map((u) =>
        h(
          'li',
          { class: 'user' },
          h('span', { class: 'user-name', text: u.name }),
          h('span', { class: 'user-email', text: u.email }),
          h('span', { class: 'user-id', text: `#${u.id}` }),
          h(
            'button',
            {
              type: 'button',
              class: 'danger small needs-admin',
              dataset: { focus: `delete-user-${u.id}` },
              onclick: () => deleteUser(u),
            },
            'Delete',
            srOnly(` ${u.name}`),
          ),
        ),
      ),
    );
  }
  for (const [id, none] of [
    ['filter-assignee', 'Anyone'],
    ['task-assignee', 'Nobody'],
  ]) {
    const select = $(id);
    const value = select.value;
    select.replaceChildren(
      h('option', { value: '', text: none }),
      ...state.users.map((u) => h('option', { value: String(u.id), text: `${u.name} (#${u.id})` })),
    );
    select.value = state.users.some((u) => String(u.id) === value) ? value : '';
  }
}

function submitUser(event) {
  event.preventDefault();
  const payload = { name: $('user-name').value.trim(), email: $('user-email').value.trim() };
  return run(async () => {
    const result = await write('POST', '/api/users', payload);
    notice(`User #${result.body.id} ${result.body.name} added — ${answeredBy(result)}.`);
    $('user-form').reset();
    await loadTasks(true);
    $('user-name').focus();
  });
}

function deleteUser(u) {
  if (!window.confirm(`Delete user ${u.name}? Their tasks become unassigned.`)) return undefined;
  return run(async () => {
    const result = await write('DELETE', `/api/users/${u.id}`);
    notice(`User #${u.id} ${u.name} deleted — ${answeredBy(result)}.`);
    await loadTasks(true);
    $('h-users').setAttribute('tabindex', '-1');
    $('h-users').focus();
  });
}

// ---- products ----

function productQuery() {
  const params = new URLSearchParams({ offset: state.products.offset, limit: $('page-size').value });
  for (const [field, id] of [
    ['min_price', 'min-price'],
    ['max_price', 'max-price'],
  ]) {
    if ($(id).value !== '') params.set(field, $(id).value);
  }
  return params;
}

async function loadProducts() {
  const page = await get(`/api/products?${productQuery()}`);
  $('products-source').textContent = `As ${state.self} has applied the log; read ${clock(new Date())}.`;
  const rows = page.data.map((p) => {
    const title = p.link
      ? h(
          'a',
          { href: p.link, rel: 'noopener noreferrer external', target: '_blank' },
          p.title,
          srOnly(' (opens the shop page)'),
        )
      : p.title;
    const stars = p.rating ? '★'.repeat(p.rating) + '☆'.repeat(Math.max(0, 5 - p.rating)) : null;
    const rating = stars
      ? h(
          'span',
          {},
          h('span', { 'aria-hidden': 'true', class: 'stars', text: stars }),
          srOnly(`${p.rating} of 5 stars`),
        )
      : '—';
    const scraped = p.scraped_at ? new Date(p.scraped_at).toLocaleString() : '—';
    const cell = (label, attrs, ...content) => h('td', { role: 'cell', 'data-label': label, ...attrs }, ...content);
    return h(
      'tr',
      { role: 'row' },
      cell('Title', { class: 'title' }, title),
      cell('Price', { class: 'num', text: money(p.price, p.currency) }),
      cell('Converted', { class: 'num', text: money(p.converted_price, p.converted_currency) }),
      cell('Availability', { text: p.availability || '—' }),
      cell('Rating', {}, rating),
      cell('Scraped', { text: scraped }),
    );
  });
  if (rows.length === 0) {
    rows.push(
      h(
        'tr',
        { role: 'row' },
        h('td', { role: 'cell', colspan: '6', class: 'empty', text: 'No product in this price range.' }),
      ),
    );
  }
  $('product-rows').replaceChildren(...rows);
  const range = showPager(page, 'products');
  const min = $('min-price').value;
  const max = $('max-price').value;
  const filter = min || max ? `, priced ${min || '0'} to ${max || 'any'}` : '';
  $('products-caption').textContent = `Products ${range}${filter}`;
}

function productPage(delta) {
  const limit = Number($('page-size').value);
  state.products.offset = Math.max(0, state.products.offset + delta * limit);
  return run(loadProducts);
}

// ---- views ----

const VIEWS = ['cluster', 'tasks', 'products'];
const VIEW_TITLES = { cluster: 'Cluster', tasks: 'Tasks', products: 'Products' };

function route(moveFocus) {
  const wanted = (location.hash || '#cluster').slice(1);
  state.view = VIEWS.includes(wanted) ? wanted : 'cluster';
  for (const v of VIEWS) {
    $(`view-${v}`).hidden = v !== state.view;
    if (v === state.view) $(`tab-${v}`).setAttribute('aria-current', 'page');
    else $(`tab-${v}`).removeAttribute('aria-current');
  }
  document.title = `${VIEW_TITLES[state.view]} · labctl console${state.self ? ` (${state.self})` : ''}`;
  if (moveFocus) {
    notice('');
    clearError();
    $(`h-${state.view}`).focus();
  }
  if (!state.self) return;
  if (state.view === 'tasks') run(() => loadTasks(true));
  if (state.view === 'products') run(loadProducts);
}

function wire() {
  window.addEventListener('hashchange', () => route(true));
  $('task-form').addEventListener('submit', submitTask);
  $('task-cancel').addEventListener('click', () => {
    const id = state.editing && state.editing.id;
    resetTaskForm();
    const again = id && document.querySelector(`[data-focus="edit-${id}"]`);
    if (again) again.focus();
  });
  $('user-form').addEventListener('submit', submitUser);
  $('task-filters').addEventListener('submit', (e) => e.preventDefault());
  $('task-filters').addEventListener('change', () => {
    state.tasks.offset = 0;
    run(() => loadTasks(true));
  });
  $('tasks-prev').addEventListener('click', () => {
    state.tasks.offset = Math.max(0, state.tasks.offset - state.tasks.limit);
    run(() => loadTasks(true));
  });
  $('tasks-next').addEventListener('click', () => {
    state.tasks.offset += state.tasks.limit;
    run(() => loadTasks(true));
  });
  $('product-filters').addEventListener('submit', (e) => {
    e.preventDefault();
    state.products.offset = 0;
    run(loadProducts);
  });
  $('product-filters').addEventListener('reset', () => {
    state.products.offset = 0;
    setTimeout(() => run(loadProducts), 0);
  });
  $('products-prev').addEventListener('click', () => productPage(-1));
  $('products-next').addEventListener('click', () => productPage(1));
  $('login-form').addEventListener('submit', logIn);
  $('logout').addEventListener('click', logOut);
  const token = $('console-token');
  token.value = sessionStorage.getItem(TOKEN_KEY) || '';
  token.addEventListener('input', () => sessionStorage.setItem(TOKEN_KEY, token.value));
  setInterval(() => {
    if (state.view === 'tasks' && !document.hidden && state.self) loadTasks(false).catch(() => {});
  }, REFRESH_MS);
  // "Last contact" keeps counting between polls.
  setInterval(() => {
    for (const seen of state.seen.values()) {
      if (seen.card && seen.lastOk) seen.card.facts.contact.dd.textContent = ago(Date.now() - seen.lastOk);
    }
  }, 250);
}

/** Shows who is logged in (or the login form) and hides what their role may not do. */
function setMe(me) {
  state.me = me;
  $('account').hidden = !state.auth;
  $('login-form').hidden = !state.auth || Boolean(me);
  $('logged-in').hidden = !state.auth || !me;
  $('who').textContent = me ? `Logged in as ${me.name} (${me.role})` : '';
  // Open mode: everything is allowed, as for an admin.
  document.body.dataset.role = !state.auth ? 'admin' : me ? me.role : 'none';
}

/** Asks the serving node who this tab is. */
async function whoAmI() {
  try {
    const me = await get('/api/me');
    state.auth = Boolean(me.auth);
    setMe(me.auth ? { name: me.name, role: me.role } : null);
  } catch (e) {
    if (e.status !== 401) throw e;
    state.auth = true;
    setMe(null);
  }
}

/** Logs in at the leader (a follower's 307 is followed through the relay). */
async function logIn(event) {
  event.preventDefault();
  clearError();
  const payload = { name: $('login-name').value.trim(), password: $('login-password').value };
  const target = currentLeader() || state.self;
  try {
    const res = await fetch(`/console/nodes/${encodeURIComponent(target)}/api/login`, {
      method: 'POST',
      cache: 'no-store',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(payload),
    });
    const body = await readBody(res);
    if (!res.ok) throw new ApiError(res.status, errorText(res, body), res.headers.get('X-Labctl-Node') || target);
    sessionStorage.setItem(SESSION_KEY, body.token);
    $('login-password').value = '';
    setMe({ name: body.name, role: body.role });
    notice(`Logged in as ${body.name} (${body.role}) until ${clock(new Date(body.expires_at))}.`);
    route(false);
  } catch (e) {
    showError(e);
  }
}

async function logOut() {
  clearError();
  try {
    await write('POST', '/api/logout');
  } catch (e) {
    showError(e);
  }
  sessionStorage.removeItem(SESSION_KEY);
  setMe(null);
}

async function start() {
  wire();
  route(false);
  let own;
  let control;
  for (;;) {
    try {
      [own, control] = await Promise.all([get('/status'), get('/api/control')]);
      state.self = own.name;
      state.tokenRequired = Boolean(control.token_required);
      state.nodes = [own.name, ...own.peers.map((p) => p.name)].sort((a, b) => nodeNumber(a) - nodeNumber(b));
      for (const name of state.nodes) state.seen.set(name, { status: null, error: null, lastOk: 0, card: null });
      break;
    } catch (e) {
      $('served-by').textContent = `This node does not answer yet (${e.message}); trying again…`;
      await sleep(1000);
    }
  }
  state.auth = Boolean(control.auth);
  for (;;) {
    try {
      await whoAmI();
      break;
    } catch (e) {
      $('served-by').textContent = `This node does not answer yet (${e.message}); trying again…`;
      await sleep(1000);
    }
  }
  $('token-box').hidden = !state.tokenRequired || state.auth;
  route(false);
  for (const name of state.nodes) pollForever(name);
}

start();
