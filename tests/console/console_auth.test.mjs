// The web console's login, in real headless Chromium, against nodes that require accounts.
//
// Started by tests/console_e2e.rs, which runs the nodes (with --auth) and passes them in the
// environment:
//   LABCTL_CONSOLE_URL          a follower's console, http://127.0.0.N:PORT
//   LABCTL_CONSOLE_VIEWER       "name:password" of a viewer account
//   LABCTL_CONSOLE_ADMIN        "name:password" of the admin
//   LABCTL_CONSOLE_SCREENSHOTS  where the screenshots go
//   LABCTL_CHROMIUM             the browser (default /usr/bin/chromium); never downloaded
// Exits 0 when every check passed; otherwise prints what failed and exits 1.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { launchChromium } from './browser.mjs';

const url = process.env.LABCTL_CONSOLE_URL;
const [viewerName, viewerPassword] = process.env.LABCTL_CONSOLE_VIEWER.split(':');
const [adminName, adminPassword] = process.env.LABCTL_CONSOLE_ADMIN.split(':');
const shots = process.env.LABCTL_CONSOLE_SCREENSHOTS;
const executablePath = process.env.LABCTL_CHROMIUM || '/usr/bin/chromium';
const WAIT = 15000;

function step(text) {
  console.log(`-- ${text}`);
}

const browser = await launchChromium(executablePath);

/** Whether the element `id` is laid out at all (a role's rule sets display: none on it). */
async function displayed(page, id) {
  return page.evaluate((id) => getComputedStyle(document.getElementById(id)).display !== 'none', id);
}

async function logIn(page, name, password) {
  await page.getByLabel('Account', { exact: true }).fill(name);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
}

let failed = false;
try {
  fs.mkdirSync(shots, { recursive: true });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));

  step('the console of a node that requires accounts asks for a login');
  await page.goto(url);
  await page.locator('#login-form').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.evaluate(() => document.body.dataset.role), 'none');
  assert.equal(await displayed(page, 'task-form'), false, 'nobody may create tasks');

  step('a wrong password is refused and shown');
  await logIn(page, viewerName, 'not-the-password');
  await page.locator('#alert').filter({ hasText: /401|password|credentials/i }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#login-form').isVisible(), true);

  step('a viewer logs in on a follower: who is shown, what a viewer may not do is hidden');
  await logIn(page, viewerName, viewerPassword);
  await page.locator('#who').filter({ hasText: `Logged in as ${viewerName} (viewer)` }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#login-form').isVisible(), false);
  assert.equal(await page.evaluate(() => document.body.dataset.role), 'viewer');
  assert.equal(await displayed(page, 'task-form'), false, 'a viewer may not create tasks');
  assert.equal(await displayed(page, 'user-form'), false, 'a viewer may not create users');
  await page.screenshot({ path: path.join(shots, 'login-viewer.png') });

  step('logging out asks for a login again');
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.locator('#login-form').waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await page.evaluate(() => document.body.dataset.role), 'none');

  step('the admin logs in: everything is offered');
  await logIn(page, adminName, adminPassword);
  await page.locator('#who').filter({ hasText: `Logged in as ${adminName} (admin)` }).waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => document.body.dataset.role), 'admin');
  assert.equal(await displayed(page, 'task-form'), true, 'an admin may create tasks');
  assert.equal(await displayed(page, 'user-form'), true, 'an admin may create users');
  await page.screenshot({ path: path.join(shots, 'login-admin.png') });
  assert.deepEqual(errors, [], 'errors in the page');
} catch (e) {
  failed = true;
  console.log(`FAILED: ${e.stack || e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
