// The web UI as a person uses it, in headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core; no browser is downloaded): log in, see a queue declared over AMQP
// appear, publish to it from the UI and get the message back, purge and delete it. Saves a
// screenshot at each step.
//
//   node webui.js --mgmt http://127.0.0.1:15672 --url amqp://guest:guest@127.0.0.1:5672 \
//       --screenshots DIR
//
// Exits 0 and prints what it saw as a JSON line, or exits 1 with the step that failed.
'use strict';

const assert = require('assert/strict');
const fs = require('fs');
const path = require('path');
const amqp = require('amqplib');
const {chromium} = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// The UI refreshes every 5 s and rates need two samples: waits are for events, with room.
const WAIT_MS = 20000;

function option(name) {
  const i = process.argv.indexOf('--' + name);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error('missing --' + name);
  return process.argv[i + 1];
}

async function main() {
  const mgmt = option('mgmt');
  const url = option('url');
  const shots = option('screenshots');
  fs.mkdirSync(shots, {recursive: true});
  const seen = {};

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Without the background-networking flags Chromium keeps trying hosts this closed
    // network refuses; as root it needs --no-sandbox.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const connection = await amqp.connect(url);
  try {
    const page = await browser.newPage({viewport: {width: 1280, height: 900}});
    const errors = [];
    page.on('pageerror', e => errors.push(e.message));
    page.on('dialog', dialog => dialog.accept());
    const shot = async name => {
      const file = path.join(shots, name + '.png');
      await page.screenshot({path: file, fullPage: true});
      return file;
    };
    const toast = async text => {
      await page.locator('#toast.show', {hasText: text}).waitFor({timeout: WAIT_MS});
    };

    // A wrong password is refused in the page, without the browser's own dialog.
    await page.goto(mgmt + '/');
    await page.fill('#username', 'guest');
    await page.fill('#password', 'wrong');
    await page.click('button:has-text("Login")');
    await page.locator('.login .error', {hasText: 'Login failed'}).waitFor({timeout: WAIT_MS});
    seen.wrong_password = await page.locator('.login .error').textContent();
    await shot('01-login-failed');

    await page.fill('#password', 'guest');
    await page.click('button:has-text("Login")');
    await page.locator('#nav a', {hasText: 'Queues'}).waitFor({timeout: WAIT_MS});
    seen.tabs = await page.locator('#nav a').allTextContents();

    // A queue declared over AMQP appears in the list (after the UI's next refresh at most).
    const channel = await connection.createChannel();
    const queue = 'webui-orders';
    await channel.assertQueue(queue, {durable: false});
    // A hostile name is shown as text, never run as HTML.
    const hostile = '<img src=x onerror="window.pwned=1">';
    await channel.assertQueue(hostile, {durable: false});
    await page.click('#nav a:has-text("Queues")');
    await page.getByRole('link', {name: queue, exact: true}).waitFor({timeout: WAIT_MS});
    await page.getByRole('link', {name: hostile, exact: true}).waitFor({timeout: WAIT_MS});
    seen.hostile_name_ran = await page.evaluate(() => window.pwned === 1);
    await shot('02-queues');

    // Publish from the queue's page, through the default exchange.
    await page.getByRole('link', {name: queue, exact: true}).click();
    await page.locator('h2', {hasText: queue}).waitFor({timeout: WAIT_MS});
    const publish = page.locator('form', {hasText: 'Publish a message'});
    await publish.locator('textarea[name=payload]').fill('hello from the UI');
    await publish.locator('select[name=delivery_mode]').selectOption('2');
    await publish.locator('textarea[name=properties]').fill('{"correlation_id": "ui-1"}');
    await publish.locator('button[type=submit]').click();
    await toast('Message published.');
    seen.publish_toast = 'Message published.';

    // The depth shown on the page reaches 1.
    await page.locator('dt:text-is("Ready") + dd', {hasText: /^1$/}).waitFor({timeout: WAIT_MS});

    // Get it back in the UI (requeued: "Nack message requeue true").
    const get = page.locator('form', {hasText: 'Get messages'});
    await get.locator('button[type=submit]').click();
    await page.locator('.message pre.payload').waitFor({timeout: WAIT_MS});
    seen.got_in_ui = await page.locator('.message pre.payload').textContent();
    await shot('03-queue-with-message');

    // And over AMQP: the same message, requeued once, with its properties.
    const message = await channel.get(queue, {noAck: true});
    seen.got_over_amqp = message && {
      body: message.content.toString(),
      redelivered: message.fields.redelivered,
      correlation_id: message.properties.correlationId,
      delivery_mode: message.properties.deliveryMode,
    };

    // Publish again and purge from the UI.
    await publish.locator('textarea[name=payload]').fill('to be purged');
    await publish.locator('button[type=submit]').click();
    await toast('Message published.');
    await page.click('button:has-text("Purge messages")');
    await toast('purged');
    seen.after_purge = (await channel.checkQueue(queue)).messageCount;

    // Delete from the UI: the AMQP client sees it gone.
    await page.click('button:has-text("Delete queue")');
    await page.waitForURL(/#\/queues$/, {timeout: WAIT_MS});
    await toast('deleted');
    const probe = await connection.createChannel();
    probe.on('error', () => {});
    seen.after_delete = await probe.checkQueue(queue).then(() => 'still there', e => e.code);
    await shot('04-queue-deleted');

    // The exchange page publishes too, and says when nothing was routed.
    await page.goto(mgmt + '/#/exchanges/%2F/amq.direct');
    const xPublish = page.locator('form', {hasText: 'Publish a message'});
    await xPublish.locator('input[name=routing_key]').fill('nowhere');
    await xPublish.locator('button[type=submit]').click();
    await toast('Message published, but not routed.');
    seen.unrouted_toast = 'Message published, but not routed.';

    // The overview: totals, charts of the last minutes, node and alarms. Some traffic first,
    // over two of the broker's 5 s samples, so that the charts have lines to draw.
    await channel.assertQueue('webui-chart', {durable: false});
    const traffic = setInterval(() => {
      for (let i = 0; i < 50; i++) channel.sendToQueue('webui-chart', Buffer.from('tick'));
    }, 100);
    await page.click('#nav a:has-text("Overview")');
    try {
      await page.locator('.chart polyline[points*=" "]').first().waitFor({timeout: WAIT_MS});
      await page.waitForFunction(() => /[1-9]/.test(document.querySelector('.card:nth-child(6) .value').textContent),
        null, {timeout: WAIT_MS});
    } finally {
      clearInterval(traffic);
    }
    seen.overview_cards = await page.locator('.card .label').allTextContents();
    seen.node_alarms = await page.locator('.node .badge').allTextContents();
    await shot('05-overview');

    await channel.deleteQueue('webui-chart');
    await channel.deleteQueue(hostile);

    // Connections: the AMQP client's connection is listed, and can be closed from its page.
    await page.click('#nav a:has-text("Connections")');
    await page.locator('table tbody tr').first().waitFor({timeout: WAIT_MS});
    await shot('06-connections');
    const closed = new Promise(resolve => connection.on('close', e => resolve(e && e.message)));
    connection.on('error', () => {});
    await page.locator('table tbody a').first().click();
    await page.locator('form', {hasText: 'Close this connection'}).locator('input[name=reason]').fill('closed from the web UI');
    await page.click('button:has-text("Force close")');
    seen.client_saw = await closed;

    // Policies: create one, see it, delete it.
    await page.click('#nav a:has-text("Policies")');
    const policy = page.locator('form', {hasText: 'Add or update a policy'});
    await policy.locator('input[name=name]').fill('webui-limit');
    await policy.locator('input[name=pattern]').fill('^webui-');
    await policy.locator('textarea[name=definition]').fill('{"max-length": 10}');
    await policy.locator('button[type=submit]').click();
    await page.locator('td', {hasText: 'webui-limit'}).waitFor({timeout: WAIT_MS});
    await shot('07-policies');
    await page.locator('tr', {hasText: 'webui-limit'}).locator('button:has-text("Delete")').click();
    await page.locator('td', {hasText: 'webui-limit'}).waitFor({state: 'detached', timeout: WAIT_MS});

    seen.script_errors = errors;
  } finally {
    await browser.close();
    await connection.close().catch(() => {});
  }
  // What a person would have seen.
  assert.equal(seen.wrong_password, 'Login failed');
  assert.equal(seen.hostile_name_ran, false, 'a queue name was run as HTML');
  assert.equal(seen.got_in_ui, 'hello from the UI');
  assert.deepEqual(seen.got_over_amqp, {body: 'hello from the UI', redelivered: true, correlation_id: 'ui-1', delivery_mode: 2});
  assert.equal(seen.after_purge, 0);
  assert.equal(seen.after_delete, 404);
  assert.match(seen.client_saw || '', /CONNECTION_FORCED - closed from the web UI/);
  assert.deepEqual(seen.script_errors, []);
  console.log(JSON.stringify(seen));
}

main().catch(e => {
  console.error('webui: ' + (e && e.stack || e));
  process.exit(1);
});
