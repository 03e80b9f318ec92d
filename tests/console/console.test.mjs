// The web console in real headless Chromium against a real labctl cluster.
//
// Started by tests/console_e2e.rs, which runs the nodes and passes them in the environment:
//   LABCTL_CONSOLE_NODES        JSON [{"name": "node1", "url": "http://127.0.0.1:PORT"}, …]
//   LABCTL_CONSOLE_LEADER       the leader's name when the test starts
//   LABCTL_CONSOLE_TOKEN        the nodes' console token
//   LABCTL_CONSOLE_PRODUCTS     how many products the cluster holds (prices 1, 2, … N)
//   LABCTL_CONSOLE_SCREENSHOTS  where the screenshots go
//   LABCTL_CHROMIUM             the browser (default /usr/bin/chromium); never downloaded
// Exits 0 when every check passed; otherwise prints what failed and exits 1.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { launchChromium } from './browser.mjs';

const nodes = JSON.parse(process.env.LABCTL_CONSOLE_NODES);
const firstLeader = process.env.LABCTL_CONSOLE_LEADER;
const token = process.env.LABCTL_CONSOLE_TOKEN;
const productCount = Number(process.env.LABCTL_CONSOLE_PRODUCTS);
const shots = process.env.LABCTL_CONSOLE_SCREENSHOTS;
const executablePath = process.env.LABCTL_CHROMIUM || '/usr/bin/chromium';

const urlOf = (name) => nodes.find((n) => n.name === name).url;
const follower = nodes.find((n) => n.name !== firstLeader).name;
const other = nodes.find((n) => n.name !== firstLeader && n.name !== follower).name;
const origins = new Set(nodes.map((n) => new URL(n.url).origin));

const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 375, height: 812 };
const WAIT = 15000;

function step(text) {
  console.log(`-- ${text}`);
}

/** Polls `check` (which may throw) until it returns a truthy value, or fails after `timeout`. */
/** Waits until the keyboard focus is on the element `id`: a view renders after the click returns. */
async function focusOn(page, id, what) {
  await until(what, async () => (await page.evaluate(() => document.activeElement && document.activeElement.id)) === id);
}

async function until(what, check, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const browser = await launchChromium(executablePath);

const outside = [];
const pageErrors = [];

async function openConsole(node, hash, viewport = DESKTOP) {
  const context = await browser.newContext({
    viewport,
    deviceScaleFactor: 1,
    isMobile: viewport === PHONE,
    hasTouch: viewport === PHONE,
  });
  const page = await context.newPage();
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (!origins.has(url.origin) && url.protocol !== 'data:') outside.push(request.url());
  });
  page.on('pageerror', (error) => pageErrors.push(`${node}: ${error.message}`));
  await page.goto(`${urlOf(node)}/${hash}`);
  await until(`${node}'s console to know its node`, async () =>
    (await page.locator('#served-by').textContent()).includes(`Console of ${node} ·`),
  );
  return page;
}

const notice = (page) => page.locator('#notice').textContent();
const alertText = (page) => page.locator('#alert').textContent();

async function noticeMatching(page, pattern) {
  return until(`a notice matching ${pattern}`, async () => {
    const alert = await alertText(page);
    if (alert) throw new Error(`the console shows an error: ${alert}`);
    const text = await notice(page);
    if (!pattern.test(text)) throw new Error(`the notice says ${JSON.stringify(text)}`);
    return text;
  });
}

const taskItem = (page, title) => page.locator('#task-list li.task', { has: page.locator('h3', { hasText: title }) });

async function screenshot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

/** Every form control and button has an accessible name. */
async function unnamedControls(page) {
  return page.evaluate(() => {
    const named = (el) => {
      if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return true;
      if (['INPUT', 'SELECT', 'TEXTAREA'].includes(el.tagName)) return Boolean(el.labels && el.labels.length);
      return el.textContent.trim().length > 0;
    };
    return [...document.querySelectorAll('button, a, input, select, textarea')]
      .filter((el) => el.getClientRects().length > 0 && !named(el))
      .map((el) => el.outerHTML.slice(0, 120));
  });
}

/** The node that leads in the highest term, asked from here (not through the console). */
async function leaderNow() {
  return until('a leader', async () => {
    const statuses = await Promise.all(
      nodes.map((n) =>
        fetch(`${n.url}/status`)
          .then((r) => r.json())
          .catch(() => null),
      ),
    );
    const leaders = statuses.filter((s) => s && s.role === 'LEADER').sort((a, b) => b.term - a.term);
    return leaders.length ? leaders[0].name : null;
  });
}

async function noHorizontalScroll(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
}

try {
  fs.mkdirSync(shots, { recursive: true });

  step(`create a user and two tasks in the leader's (${firstLeader}) console`);
  const leaderPage = await openConsole(firstLeader, '#tasks');
  await leaderPage.getByLabel('Name', { exact: true }).fill('Ada Lovelace');
  await leaderPage.getByLabel('E-mail').fill('ada@example.org');
  await leaderPage.getByRole('button', { name: 'Add user' }).click();
  await noticeMatching(leaderPage, new RegExp(`User #\\d+ Ada Lovelace added — answered by ${await leaderNow()}`));
  await until('Ada in the assignee list', async () =>
    (await leaderPage.locator('#task-assignee option').allTextContents()).some((t) => t.startsWith('Ada Lovelace')),
  );

  await leaderPage.getByLabel('Title', { exact: true }).fill('Write the release notes');
  await leaderPage.getByLabel('Description').fill('What changed in the console, for the operators.');
  await leaderPage.locator('#task-priority').selectOption('high');
  await leaderPage.getByLabel('Due date').fill('2031-05-04');
  await leaderPage
    .locator('#task-assignee')
    .selectOption({
      label: (await leaderPage.locator('#task-assignee option', { hasText: 'Ada Lovelace' }).textContent()).trim(),
    });
  await leaderPage.getByRole('button', { name: 'Create task' }).click();
  await noticeMatching(
    leaderPage,
    new RegExp(`Task #\\d+ “Write the release notes” created — answered by ${await leaderNow()}`),
  );
  await leaderPage.getByLabel('Title', { exact: true }).fill('Throwaway task');
  await leaderPage.getByRole('button', { name: 'Create task' }).click();
  await noticeMatching(leaderPage, /“Throwaway task” created/);
  await until(
    'both tasks listed on the leader',
    async () => (await taskItem(leaderPage, 'Throwaway task').count()) === 1,
  );
  assert.equal(
    await taskItem(leaderPage, 'Write the release notes').locator('dd').first().textContent(),
    'Ada Lovelace',
  );

  step('the API error of a refused write is shown: the same e-mail again');
  await leaderPage.getByLabel('Name', { exact: true }).fill('Ada again');
  await leaderPage.getByLabel('E-mail').fill('ada@example.org');
  await leaderPage.getByRole('button', { name: 'Add user' }).click();
  const refused = await until('the refusal', async () => alertText(leaderPage));
  assert.match(refused, new RegExp(`${await leaderNow()} answered 409: email ada@example.org is taken`));
  await leaderPage.getByRole('button', { name: 'Dismiss' }).click();

  step(`the task is listed on a follower's (${follower}) console`);
  const followerPage = await openConsole(follower, '#tasks');
  const task = taskItem(followerPage, 'Write the release notes');
  await until('the task on the follower', async () => (await task.count()) === 1);
  assert.match(await task.textContent(), /High priority/);

  step("change its status from the follower's console: the write goes to the leader");
  await followerPage.getByRole('button', { name: 'Start “Write the release notes”' }).click();
  await noticeMatching(
    followerPage,
    new RegExp(`“Write the release notes” is now in progress — answered by ${await leaderNow()}`),
  );
  await until(
    'the new status on the follower',
    async () => (await task.locator('.status-chip').textContent()) === 'In progress',
  );
  await until(
    'the new status on the leader',
    async () =>
      (await taskItem(leaderPage, 'Write the release notes').locator('.status-chip').textContent()) === 'In progress',
  );

  step("a follower's redirect is followed by the browser on the console's origin");
  const redirect = await followerPage.evaluate(async (self) => {
    const res = await fetch(`/console/nodes/${self}/api/users`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': 'browser-redirect-check' },
      body: JSON.stringify({ name: 'Grace Hopper', email: 'grace@example.org' }),
    });
    return {
      status: res.status,
      redirected: res.redirected,
      node: res.headers.get('X-Labctl-Node'),
      body: await res.json(),
    };
  }, follower);
  assert.deepEqual(
    [redirect.status, redirect.redirected, redirect.node],
    [201, true, await leaderNow()],
    JSON.stringify(redirect),
  );
  assert.equal(redirect.body.name, 'Grace Hopper');

  step('filters, edit, delete and the stats chart on the follower');
  await followerPage.locator('#filter-status').selectOption('done');
  await until('no done task', async () =>
    (await followerPage.locator('#task-list').textContent()).includes('No task matches'),
  );
  await followerPage.locator('#filter-status').selectOption('in_progress');
  await until(
    'only the started task',
    async () => (await followerPage.locator('#task-list li.task').count()) === 1 && (await task.count()) === 1,
  );
  await followerPage.locator('#filter-status').selectOption('');
  await followerPage.locator('#filter-priority').selectOption('high');
  await until(
    'only the high-priority task',
    async () => (await followerPage.locator('#task-list li.task').count()) === 1 && (await task.count()) === 1,
  );
  await followerPage.locator('#filter-priority').selectOption('');
  const adaId = await followerPage
    .locator('#filter-assignee option', { hasText: 'Ada Lovelace' })
    .getAttribute('value');
  await followerPage.locator('#filter-assignee').selectOption(adaId);
  await until(
    "only Ada's task",
    async () => (await followerPage.locator('#task-list li.task').count()) === 1 && (await task.count()) === 1,
  );
  await followerPage.locator('#filter-assignee').selectOption('');
  await until('both tasks again', async () => (await followerPage.locator('#task-list li.task').count()) === 2);

  await followerPage.getByRole('button', { name: 'Edit “Throwaway task”' }).click();
  assert.match(await followerPage.locator('#task-form-title').textContent(), /^Edit task #\d+$/);
  await focusOn(followerPage, 'task-title', 'Edit moves the focus to the form');
  await followerPage.getByLabel('Title', { exact: true }).fill('Throwaway task, edited');
  await followerPage.getByRole('button', { name: 'Save changes' }).click();
  await noticeMatching(followerPage, new RegExp(`“Throwaway task, edited” saved — answered by ${await leaderNow()}`));
  await until('the edited title', async () => (await taskItem(followerPage, 'Throwaway task, edited').count()) === 1);
  followerPage.once('dialog', (dialog) => dialog.accept());
  await followerPage.getByRole('button', { name: 'Delete “Throwaway task, edited”' }).click();
  await noticeMatching(followerPage, /“Throwaway task, edited” deleted/);
  await until('the deleted task gone', async () => (await followerPage.locator('#task-list li.task').count()) === 1);
  await until('the chart', async () => {
    const row = followerPage.locator('#stats-status .bar-row', { hasText: 'In progress' });
    return (
      (await row.locator('.n').textContent()) === '1' &&
      (await followerPage.locator('#stats-caption').textContent()).startsWith('1 task in all')
    );
  });
  await followerPage.getByLabel('Name', { exact: true }).fill('Alan Turing');
  await followerPage.getByLabel('E-mail').fill('alan@example.org');
  await followerPage.getByRole('button', { name: 'Add user' }).click();
  await noticeMatching(followerPage, /User #\d+ Alan Turing added/);
  followerPage.once('dialog', (dialog) => dialog.accept());
  await followerPage.getByRole('button', { name: 'Delete Grace Hopper' }).click();
  await noticeMatching(followerPage, /User #\d+ Grace Hopper deleted/);
  assert.deepEqual(await unnamedControls(followerPage), []);
  await screenshot(followerPage, 'tasks-desktop');

  step('products: pages and the price filter');
  await followerPage.getByRole('link', { name: 'Products' }).click();
  await focusOn(followerPage, 'h-products', 'a view change moves the focus to its heading');
  await until(
    'the first page',
    async () => (await followerPage.locator('#products-caption').textContent()) === `Products 1–20 of ${productCount}`,
  );
  assert.equal(await followerPage.locator('#product-rows tr').count(), 20);
  await followerPage.getByRole('button', { name: 'Next page' }).click();
  await until(
    'the second page',
    async () => (await followerPage.locator('#products-caption').textContent()) === `Products 21–40 of ${productCount}`,
  );
  await followerPage.getByLabel('Lowest price').fill('10');
  await followerPage.getByLabel('Highest price').fill('30');
  await followerPage.getByRole('button', { name: 'Apply' }).click();
  await until(
    'the filtered first page',
    async () =>
      (await followerPage.locator('#products-caption').textContent()) === 'Products 1–20 of 21, priced 10 to 30',
  );
  await followerPage.getByRole('button', { name: 'Next page' }).click();
  await until(
    'the filtered last page',
    async () =>
      (await followerPage.locator('#products-caption').textContent()) === 'Products 21–21 of 21, priced 10 to 30',
  );
  assert.equal(await followerPage.getByRole('button', { name: 'Next page' }).isDisabled(), true);
  await followerPage.getByLabel('Lowest price').fill('30');
  await followerPage.getByLabel('Highest price').fill('10');
  await followerPage.getByRole('button', { name: 'Apply' }).click();
  await until(
    'an empty range',
    async () => (await followerPage.locator('#product-rows').textContent()) === 'No product in this price range.',
  );
  await followerPage.getByRole('button', { name: 'Clear' }).click();
  await until(
    'the unfiltered list',
    async () => (await followerPage.locator('#products-caption').textContent()) === `Products 1–20 of ${productCount}`,
  );
  await screenshot(followerPage, 'products-desktop');

  step('the keyboard reaches the views, and the focus is visible');
  const keys = await openConsole(other, '#cluster');
  let onTasksTab = false;
  for (let i = 0; i < 12 && !onTasksTab; i += 1) {
    await keys.keyboard.press('Tab');
    onTasksTab = await keys.evaluate(() => document.activeElement.id === 'tab-tasks');
  }
  assert.ok(onTasksTab, 'Tab reaches the Tasks link');
  assert.equal(
    await keys.evaluate(() => getComputedStyle(document.activeElement).outlineStyle),
    'solid',
    'focus is visible',
  );
  await keys.keyboard.press('Enter');
  await until('the tasks view', async () =>
    keys.evaluate(() => location.hash === '#tasks' && !document.getElementById('view-tasks').hidden),
  );
  await until(
    'the task on the third node',
    async () => (await taskItem(keys, 'Write the release notes').count()) === 1,
  );
  await focusOn(keys, 'h-tasks', 'the Tasks view has the focus on its heading');
  await keys.context().close();

  const before = await leaderNow();
  const target = (nodes.find((n) => n.name !== before && n.name !== follower) || nodes.find((n) => n.name !== before))
    .name;
  step(`cluster view on ${follower}: the leader (${before}) is highlighted; TIMEOUT to ${target} from the console`);
  await followerPage.getByRole('link', { name: 'Cluster' }).click();
  const leaderCard = followerPage.locator('.node.is-leader');
  await until(
    `${before} highlighted`,
    async () => (await leaderCard.count()) === 1 && (await leaderCard.locator('h2').textContent()) === before,
  );
  const termBefore = Number(await leaderCard.locator('dt:text-is("Term") + dd').textContent());
  await until('every node answering', async () =>
    (await followerPage.locator('#cluster-summary').textContent()).includes(
      `${nodes.length} of ${nodes.length} nodes answer`,
    ),
  );
  assert.deepEqual(await unnamedControls(followerPage), []);
  await screenshot(followerPage, 'cluster-desktop');

  await followerPage.getByRole('button', { name: `Timeout ${target}` }).click();
  const denied = await until('the refusal without a token', async () => alertText(followerPage));
  assert.match(denied, new RegExp(`${target} answered 401: this node requires the console token`));
  await followerPage.getByLabel('Console token').fill(token);
  await followerPage.getByRole('button', { name: `Timeout ${target}` }).click();
  await noticeMatching(followerPage, new RegExp(`TIMEOUT sent to ${target}`));
  const newLeader = await until('a new leader highlighted', async () => {
    if ((await leaderCard.count()) !== 1) return null;
    const name = await leaderCard.locator('h2').textContent();
    const term = Number(await leaderCard.locator('dt:text-is("Term") + dd').textContent());
    return name !== before && term > termBefore && { name, term };
  });
  console.log(`leader ${before} (term ${termBefore}) → ${newLeader.name} (term ${newLeader.term})`);
  const events = await until('the election in the event list', async () => {
    const text = await followerPage.locator('#events').textContent();
    return (
      text.includes(`${newLeader.name}: `) &&
      new RegExp(`${newLeader.name}: \\w+ → LEADER, term \\d+ → ${newLeader.term}`).test(text) &&
      text
    );
  });
  console.log(`events seen:\n${(await followerPage.locator('#events li').allTextContents()).join('\n')}`);
  assert.ok(events);
  assert.match(
    await followerPage.locator('#cluster-summary').textContent(),
    new RegExp(`Leader ${newLeader.name} in term ${newLeader.term}`),
  );
  await until('all nodes agreeing on the new leader', async () => {
    const leaders = await followerPage.locator('.node dt:text-is("Leader") + dd').allTextContents();
    return leaders.length === nodes.length && leaders.every((l) => l === newLeader.name);
  });
  await screenshot(followerPage, 'cluster-after-timeout-desktop');

  step('a write after the election finds the new leader');
  await followerPage.getByRole('link', { name: 'Tasks' }).click();
  await followerPage.getByRole('button', { name: 'Mark done “Write the release notes”' }).click();
  await noticeMatching(followerPage, new RegExp(`is now done — answered by ${newLeader.name}`));

  step('phone width: readable, nothing wider than the screen');
  for (const view of ['cluster', 'tasks', 'products']) {
    const phone = await openConsole(follower, `#${view}`, PHONE);
    if (view === 'cluster')
      await until('the node cards', async () => (await phone.locator('.node.is-leader').count()) === 1);
    if (view === 'tasks')
      await until('the tasks', async () => (await phone.locator('#task-list li.task').count()) === 1);
    if (view === 'products')
      await until('the products', async () => (await phone.locator('#product-rows tr').count()) === 20);
    assert.ok(await noHorizontalScroll(phone), `the ${view} view is wider than ${PHONE.width} px`);
    assert.deepEqual(await unnamedControls(phone), []);
    await screenshot(phone, `${view}-phone`);
    await phone.context().close();
  }

  assert.deepEqual(outside, [], 'the console fetched something from outside the cluster');
  assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
  console.log('console browser test passed');
  await browser.close();
} catch (error) {
  console.error(`FAILED: ${error.stack || error}`);
  await browser.close();
  process.exit(1);
}
