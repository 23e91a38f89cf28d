#!/usr/bin/env node
// Conformance scenarios written with amqplib, the way Node.js applications use RabbitMQ.
//
// Usage: node scenarios.js --url amqp://guest:guest@127.0.0.1:5672/%2F --list
//        node scenarios.js --url ... --run NAME
//
// Each scenario asserts what a user would observe from RabbitMQ and prints a JSON object of
// its observations on the last line. Exit status 0 means the scenario passed.

'use strict';

const amqp = require('amqplib');
const { execFileSync } = require('child_process');
// amqplib's method ids (not exported; required by path) for the methods it has no API for.
const defs = require(require('path').join(
  require('path').dirname(require.resolve('amqplib')), 'lib', 'defs.js'));
const assert = require('assert/strict');
const crypto = require('crypto');

const unique = (prefix) => `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

// Rejects if `promise` has not settled within `ms`.
function within(promise, what, ms = 10000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// amqplib formats a close as `... 404 (NOT-FOUND) with message "TEXT"`; returns [code, TEXT].
function codeText(err) {
  const m = /with message "([\s\S]*)"$/.exec(err.message);
  assert.ok(m, `not a close by the broker: ${err.message}`);
  return [err.code, m[1]];
}

// Opens a channel on `conn`, runs `action` on it, which must make the broker close the
// channel, and returns [code, text] of that close.
async function channelError(conn, action) {
  const ch = await conn.createChannel();
  const closed = new Promise((resolve) => ch.on('error', resolve));
  await Promise.resolve()
    .then(() => action(ch))
    .catch(() => {}); // the pending operation is rejected too; the 'error' event says why
  return codeText(await within(closed, 'the channel to be closed by the broker'));
}

// Opens a fresh connection, runs `action` on a channel of it, which must make the broker
// close the connection, and returns [code, text] of that close.
async function connectionError(url, action) {
  const conn = await amqp.connect(url);
  const closed = new Promise((resolve) => conn.on('error', resolve));
  const ch = await conn.createChannel();
  ch.on('error', () => {});
  await Promise.resolve()
    .then(() => action(ch))
    .catch(() => {});
  return codeText(await within(closed, 'the connection to be closed by the broker'));
}

// basic.get until a message arrives (TTLs are time-based).
// Polls until `queue` holds n ready messages, and returns the count (the last one seen if it
// never got there). RabbitMQ hands back what a closed channel held after its close-ok, and does
// not order a publish on one channel before a method on another: a scenario that looks from
// another channel waits for the count first.
async function waitReady(ch, queue, n, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const { messageCount } = await ch.checkQueue(queue);
    if (messageCount >= n || Date.now() > deadline) return messageCount;
    await sleep(10);
  }
}

async function waitGet(ch, queue, noAck) {
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    const msg = await ch.get(queue, { noAck });
    if (msg) return msg;
    await sleep(10);
  }
  throw new Error(`nothing arrived in ${queue}`);
}

// Gets every ready message; returns [body, redelivered] pairs.
async function drain(ch, queue) {
  const out = [];
  for (;;) {
    const msg = await ch.get(queue, { noAck: true });
    if (!msg) return out;
    out.push([msg.content.toString(), msg.fields.redelivered]);
  }
}

// The capabilities every scenario may rely on (both brokers advertise them).
const CAPABILITIES = ['authentication_failure_close', 'basic.nack', 'consumer_cancel_notify',
  'consumer_priorities', 'exchange_exchange_bindings', 'per_consumer_qos', 'publisher_confirms'];

// JSON with object keys sorted at every level, like Python's json.dumps(sort_keys=True).
function sortedJson(value) {
  return JSON.stringify(value, (key, v) => (v && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
    : v));
}

const scenarios = {
  // Two competing consumers with prefetch 1 share a durable work queue.
  async work_queue(url) {
    const queue = unique('tasks');
    const producer = await amqp.connect(url);
    const pch = await producer.createChannel();
    await pch.assertQueue(queue, { durable: true });
    const n = 40;
    const done = { a: [], b: [] };
    const workers = [];
    // Both workers subscribe before any task exists, so both get a share.
    for (const name of ['a', 'b']) {
      const conn = await amqp.connect(url);
      const ch = await conn.createChannel();
      await ch.prefetch(1);
      await ch.consume(queue, async (msg) => {
        if (!msg) return;
        await sleep(2);
        done[name].push(msg.content.toString());
        ch.ack(msg);
      });
      workers.push({ conn, ch });
    }
    for (let i = 0; i < n; i++) {
      pch.sendToQueue(queue, Buffer.from(`task ${i}`), { persistent: true });
    }
    await waitFor(() => done.a.length + done.b.length >= n, 'all tasks');
    // Closing the channel first makes sure its last ack reached the broker: amqplib
    // multiplexes channels, so a connection.close could overtake an ack still buffered.
    for (const w of workers) {
      await w.ch.close();
      await w.conn.close();
    }
    const processed = [...done.a, ...done.b].sort((x, y) => +x.split(' ')[1] - +y.split(' ')[1]);
    assert.deepEqual(processed, Array.from({ length: n }, (_, i) => `task ${i}`));
    assert.ok(done.a.length > 0 && done.b.length > 0, 'both workers got work');
    const { messageCount } = await pch.checkQueue(queue);
    assert.equal(messageCount, 0);
    await pch.deleteQueue(queue);
    await producer.close();
    return { processed: processed.length, both_workers_busy: true, left: messageCount };
  },

  // Subscribers bind exclusive server-named queues to a topic exchange with wildcards.
  async topic_pubsub(url) {
    const exchange = unique('logs');
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertExchange(exchange, 'topic', { durable: false });
    const patterns = { all: '#', kern: 'kern.*', critical: '*.critical' };
    const queues = {};
    for (const [name, pattern] of Object.entries(patterns)) {
      const { queue } = await ch.assertQueue('', { exclusive: true });
      assert.match(queue, /^amq\.gen-/);
      await ch.bindQueue(queue, exchange, pattern);
      queues[name] = queue;
    }
    const keys = ['kern.critical', 'kern.info', 'app.critical', 'app.info.extra'];
    for (const k of keys) ch.publish(exchange, k, Buffer.from(k));
    const got = {};
    for (const [name, queue] of Object.entries(queues)) {
      got[name] = [];
      for (;;) {
        const msg = await ch.get(queue, { noAck: true });
        if (!msg) break;
        got[name].push(msg.content.toString());
      }
    }
    assert.deepEqual(got.all, keys);
    assert.deepEqual(got.kern, ['kern.critical', 'kern.info']);
    assert.deepEqual(got.critical, ['kern.critical', 'app.critical']);
    await ch.deleteExchange(exchange);
    await conn.close();
    return got;
  },

  // A client sends requests with replyTo and correlationId; a server answers each.
  async rpc(url) {
    const queue = unique('rpc');
    const server = await amqp.connect(url);
    const sch = await server.createChannel();
    await sch.assertQueue(queue, { durable: false });
    await sch.consume(queue, (msg) => {
      if (!msg) return; // cancelled by the broker when the queue is deleted at the end
      const n = parseInt(msg.content.toString(), 10);
      sch.sendToQueue(msg.properties.replyTo, Buffer.from(String(n * n)), {
        correlationId: msg.properties.correlationId,
      });
      sch.ack(msg);
    });
    const client = await amqp.connect(url);
    const cch = await client.createChannel();
    const { queue: callback } = await cch.assertQueue('', { exclusive: true });
    const responses = {};
    await cch.consume(callback, (msg) => {
      if (!msg) return;
      responses[msg.properties.correlationId] = msg.content.toString();
    }, { noAck: true });
    const asked = {};
    for (let n = 1; n <= 5; n++) {
      const corr = crypto.randomUUID();
      asked[corr] = n;
      cch.sendToQueue(queue, Buffer.from(String(n)), { replyTo: callback, correlationId: corr });
    }
    await waitFor(() => Object.keys(responses).length === 5, 'all answers');
    for (const [corr, n] of Object.entries(asked)) assert.equal(responses[corr], String(n * n));
    await client.close();
    await sch.deleteQueue(queue);
    await server.close();
    return { answers: Object.values(asked).map((n) => n * n).sort((a, b) => a - b) };
  },

  // RPC through amq.rabbitmq.reply-to: no reply queue; the server answers to the name the
  // broker put in reply_to; a request without a reply consumer closes the channel.
  async rpc_direct_reply_to(url) {
    const queue = unique('rpc-direct');
    const server = await amqp.connect(url);
    const sch = await server.createChannel();
    await sch.assertQueue(queue, { durable: false });
    const seenReplyTo = [];
    await sch.consume(queue, (msg) => {
      if (!msg) return;
      seenReplyTo.push(msg.properties.replyTo);
      const n = parseInt(msg.content.toString(), 10);
      sch.sendToQueue(msg.properties.replyTo, Buffer.from(String(n * 2)), {
        correlationId: msg.properties.correlationId,
      });
      sch.ack(msg);
    });
    const client = await amqp.connect(url);
    const cch = await client.createChannel();
    const responses = {};
    const tags = [];
    await cch.consume('amq.rabbitmq.reply-to', (msg) => {
      responses[msg.properties.correlationId] = msg.content.toString();
      tags.push(msg.fields.deliveryTag);
    }, { noAck: true });
    for (let n = 1; n <= 3; n++) {
      cch.sendToQueue(queue, Buffer.from(String(n)), { replyTo: 'amq.rabbitmq.reply-to', correlationId: `c${n}` });
    }
    await waitFor(() => Object.keys(responses).length === 3, 'all answers');
    assert.deepEqual(responses, { c1: '2', c2: '4', c3: '6' });
    assert.equal(new Set(seenReplyTo).size, 1);
    assert.ok(seenReplyTo[0].startsWith('amq.rabbitmq.reply-to.'));
    const declared = await cch.assertQueue('amq.rabbitmq.reply-to');
    const refused = await channelError(client, async (ch) => {
      ch.sendToQueue(queue, Buffer.from('1'), { replyTo: 'amq.rabbitmq.reply-to' });
      await ch.checkQueue(queue);
    });
    await client.close();
    await sch.deleteQueue(queue);
    await server.close();
    return {
      responses,
      delivery_tags: tags,
      declare: [declared.queue, declared.messageCount, declared.consumerCount],
      without_reply_consumer: refused,
    };
  },

  // The retry pattern: a worker rejects, the message waits in a TTL queue, comes back through
  // the dead-letter exchanges, and x-death counts every round per queue and reason.
  async dlx_retry_backoff(url) {
    const [work, wait, retryX, workX] = [unique('work'), unique('wait'), unique('retry-x'), unique('work-x')];
    const names = { [work]: 'WORK', [wait]: 'WAIT', [retryX]: 'RETRY_X', [workX]: 'WORK_X' };
    const anon = (v) => {
      if (Buffer.isBuffer(v)) v = v.toString();
      if (typeof v === 'string') return names[v] || v;
      if (Array.isArray(v)) return v.map(anon);
      if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, anon(x)]));
      return v;
    };
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertExchange(retryX, 'fanout', { durable: false });
    await ch.assertExchange(workX, 'fanout', { durable: false });
    await ch.assertQueue(work, { durable: false, deadLetterExchange: retryX });
    await ch.bindQueue(work, workX, '');
    await ch.assertQueue(wait, { durable: false, deadLetterExchange: workX, messageTtl: 50 });
    await ch.bindQueue(wait, retryX, '');
    ch.publish(workX, 'task.created', Buffer.from('task'), { persistent: true, headers: { app: 'billing' } });
    const rounds = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      const msg = await waitGet(ch, work, false);
      const headers = msg.properties.headers || {};
      const deaths = (headers['x-death'] || []).map((d) => {
        const { time, ...rest } = d; // eslint-disable-line no-unused-vars
        return anon(rest);
      });
      rounds.push({
        exchange: anon(msg.fields.exchange),
        routing_key: msg.fields.routingKey,
        redelivered: msg.fields.redelivered,
        deaths,
        first_death: Object.fromEntries(Object.entries(headers)
          .filter(([k]) => k.startsWith('x-first-death')).map(([k, v]) => [k, anon(v)])),
        app: anon(headers.app),
        delivery_mode: msg.properties.deliveryMode,
      });
      if (attempt < 2) ch.reject(msg, false);
      else ch.ack(msg);
    }
    for (const q of [work, wait]) await ch.deleteQueue(q);
    for (const x of [retryX, workX]) await ch.deleteExchange(x);
    await conn.close();
    assert.deepEqual(rounds[0].deaths, []);
    assert.deepEqual(rounds[2].deaths.map((d) => d.count), [2, 2]);
    return { rounds };
  },

  // x-max-length drops the oldest, reject-publish nacks the newest, the dead-letter exchange
  // receives what was dropped, with reason maxlen.
  async length_limits(url) {
    const [dropq, rejq, dlx, dlq] = [unique('drop'), unique('reject'), unique('dlx'), unique('dlq')];
    const conn = await amqp.connect(url);
    const ch = await conn.createConfirmChannel();
    await ch.assertExchange(dlx, 'fanout', { durable: false });
    await ch.assertQueue(dlq, { durable: false });
    await ch.bindQueue(dlq, dlx, '');
    await ch.assertQueue(dropq, { durable: false, maxLength: 2, deadLetterExchange: dlx });
    await ch.assertQueue(rejq, { durable: false, arguments: { 'x-max-length-bytes': 6, 'x-overflow': 'reject-publish' } });
    for (let i = 0; i < 4; i++) ch.sendToQueue(dropq, Buffer.from(`d${i}`));
    await ch.waitForConfirms();
    const refused = [];
    for (let i = 0; i < 4; i++) {
      refused.push(await new Promise((resolve) => {
        ch.sendToQueue(rejq, Buffer.from(`r${i}`), {}, (err) => resolve(err !== null && err !== undefined));
      }));
    }
    const dead = [];
    for (let i = 0; i < 2; i++) {
      const m = await waitGet(ch, dlq, true);
      dead.push([m.content.toString(), String(m.properties.headers['x-first-death-reason'])]);
    }
    const result = { kept: await drain(ch, dropq), refused, accepted: await drain(ch, rejq), dead };
    for (const q of [dropq, rejq, dlq]) await ch.deleteQueue(q);
    await ch.deleteExchange(dlx);
    await conn.close();
    assert.deepEqual(result.kept, [['d2', false], ['d3', false]]);
    return result;
  },

  // Per-queue and per-message TTLs: expired messages go to the dead-letter exchange with reason
  // expired and the original expiration; only the head expires.
  async message_ttl(url) {
    const [q, dlx, dlq] = [unique('ttl'), unique('dlx'), unique('dlq')];
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertExchange(dlx, 'fanout', { durable: false });
    await ch.assertQueue(dlq, { durable: false });
    await ch.bindQueue(dlq, dlx, '');
    await ch.assertQueue(q, { durable: false, messageTtl: 60000, deadLetterExchange: dlx });
    ch.sendToQueue(q, Buffer.from('short'), { expiration: '30' });
    const m = await waitGet(ch, dlq, true);
    const expired = {
      body: m.content.toString(),
      expiration: m.properties.expiration === undefined ? null : m.properties.expiration,
      deaths: (m.properties.headers['x-death'] || []).map((d) => ({
        count: d.count, reason: d.reason, exchange: d.exchange, 'original-expiration': d['original-expiration'],
      })),
    };
    ch.sendToQueue(q, Buffer.from('long'), { expiration: '60000' });
    ch.sendToQueue(q, Buffer.from('behind'), { expiration: '10' });
    await sleep(100);
    const { messageCount: countBehind } = await ch.checkQueue(q);
    const got = await ch.get(q, { noAck: true });
    const result = { expired, count_behind: countBehind, got: [got.content.toString(), got.fields.messageCount] };
    for (const name of [q, dlq]) await ch.deleteQueue(name);
    await ch.deleteExchange(dlx);
    await conn.close();
    return result;
  },

  // x-max-priority: higher priorities first, capped at the maximum, FIFO within one.
  async priority_queue(url) {
    const q = unique('prio');
    const conn = await amqp.connect(url);
    const ch = await conn.createConfirmChannel();
    await ch.assertQueue(q, { durable: false, maxPriority: 5 });
    for (const [body, p] of [['p5', 5], ['p9', 9], ['p3', 3], ['none', undefined], ['p1', 1], ['p0', 0], ['p3b', 3]]) {
      ch.sendToQueue(q, Buffer.from(body), p === undefined ? {} : { priority: p });
    }
    await ch.waitForConfirms();
    const order = (await drain(ch, q)).map((m) => m[0]);
    await ch.deleteQueue(q);
    await conn.close();
    assert.deepEqual(order, ['p5', 'p9', 'p3', 'p3b', 'p1', 'none', 'p0']);
    return { order };
  },

  // x-single-active-consumer: one consumer gets everything; when it cancels, the next one takes
  // over.
  async single_active_consumer(url) {
    const q = unique('sac');
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertQueue(q, { durable: false, arguments: { 'x-single-active-consumer': true } });
    const got = [];
    await ch.consume(q, (m) => m && got.push(['a', m.content.toString()]), { noAck: true, consumerTag: 'a' });
    await ch.consume(q, (m) => m && got.push(['b', m.content.toString()]), { noAck: true, consumerTag: 'b' });
    for (let i = 0; i < 3; i++) ch.sendToQueue(q, Buffer.from(`m${i}`));
    await waitFor(() => got.length === 3, 'the first three');
    await ch.cancel('a');
    for (let i = 3; i < 5; i++) ch.sendToQueue(q, Buffer.from(`m${i}`));
    await waitFor(() => got.length === 5, 'the last two');
    const { consumerCount } = await ch.checkQueue(q);
    await ch.deleteQueue(q);
    await conn.close();
    assert.deepEqual(got, [['a', 'm0'], ['a', 'm1'], ['a', 'm2'], ['b', 'm3'], ['b', 'm4']]);
    return { got, consumers_after_cancel: consumerCount };
  },

  // Channel and connection errors carry RabbitMQ's codes and texts.
  async errors(url) {
    const observed = {};
    const conn = await amqp.connect(url);
    const missing = unique('does-not-exist');
    let [code, text] = await channelError(conn, (ch) => ch.checkQueue(missing));
    assert.deepEqual([code, text], [404, `NOT_FOUND - no queue '${missing}' in vhost '/'`]);
    observed.passive_missing = [code, text.split("'")[0]];

    const q = unique('ttl');
    const setup = await conn.createChannel();
    await setup.assertQueue(q, { arguments: { 'x-message-ttl': 1000 } });
    [code, text] = await channelError(conn, (ch) => ch.assertQueue(q, { arguments: { 'x-message-ttl': 2000 } }));
    assert.deepEqual([code, text], [406, `PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '${q}' in `
      + "vhost '/': received '2000' but current is '1000'"]);
    observed.inequivalent = [code, text.replace(q, 'Q')];

    [code, text] = await channelError(conn, (ch) => ch.assertExchange('amq.mine', 'direct'));
    assert.deepEqual([code, text], [403, "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'"]);
    observed.reserved = [code, text];

    await setup.assertExchange(`${q}-x`, 'direct', { durable: false });
    await setup.assertQueue(`${q}-q`, { durable: false });
    await setup.bindQueue(`${q}-q`, `${q}-x`, 'k');
    [code, text] = await channelError(conn, (ch) => ch.deleteExchange(`${q}-x`, { ifUnused: true }));
    assert.deepEqual([code, text], [406, `PRECONDITION_FAILED - exchange '${q}-x' in vhost '/' in use`]);
    observed.exchange_in_use = [code, text.replace(q, 'Q')];

    setup.sendToQueue(`${q}-q`, Buffer.from('x'));
    // The publish and the delete travel on different channels; wait until it is enqueued.
    await within((async () => {
      while ((await setup.checkQueue(`${q}-q`)).messageCount < 1) await sleep(5);
    })(), 'the message to be enqueued');
    [code, text] = await channelError(conn, (ch) => ch.deleteQueue(`${q}-q`, { ifEmpty: true }));
    assert.deepEqual([code, text], [406, `PRECONDITION_FAILED - queue '${q}-q' in vhost '/' not empty`]);
    observed.queue_not_empty = [code, text.replace(q, 'Q')];

    [code, text] = await channelError(conn, (ch) => ch.assertExchange(`${q}-x`, 'fanout', { durable: false }));
    assert.equal(code, 406);
    observed.exchange_inequivalent = [code, text.replace(q, 'Q')];

    [code, text] = await channelError(conn, (ch) => ch.publish('no-such-exchange-here', 'k', Buffer.from('x')));
    assert.deepEqual([code, text], [404, "NOT_FOUND - no exchange 'no-such-exchange-here' in vhost '/'"]);
    observed.publish_missing_exchange = [code, text];

    await setup.deleteExchange(`${q}-x`);
    await setup.deleteQueue(`${q}-q`);
    await setup.deleteQueue(q);
    [code, text] = await channelError(conn, (ch) => ch.ack({ fields: { deliveryTag: 42 } }));
    assert.deepEqual([code, text], [406, 'PRECONDITION_FAILED - unknown delivery tag 42']);
    observed.unknown_tag = [code, text];
    await conn.close();

    return observed;
  },

  // AMQP over TLS with the run's certificates: PLAIN without a client certificate, EXTERNAL
  // with one (as the subject's distinguished name), refused when that user is gone.
  async tls(url) {
    const fs = require('fs');
    const tls = JSON.parse(process.env.CONFORMANCE_TLS);
    const subject = 'CN=conformance-client';
    const options = (clientCert, external) => {
      const o = { ca: [fs.readFileSync(tls.ca)], servername: 'localhost' };
      if (clientCert) {
        o.cert = fs.readFileSync(tls.client_cert);
        o.key = fs.readFileSync(tls.client_key);
      }
      if (external) o.credentials = amqp.credentials.external();
      return o;
    };
    const target = (user) => ({
      protocol: 'amqps', hostname: 'localhost', port: tls.port, username: user, password: user,
      vhost: '/', heartbeat: 0,
    });
    const roundTrip = async (conn) => {
      const ch = await conn.createChannel();
      const { queue } = await ch.assertQueue('', { exclusive: true });
      ch.sendToQueue(queue, Buffer.from('over tls'));
      const msg = await waitGet(ch, queue, true);
      await conn.close();
      return msg.content.toString();
    };
    const observed = {};
    observed.plain = await roundTrip(await amqp.connect(target('guest'), options(false, false)));
    ctl('add_user', subject, 'unused-password');
    try {
      ctl('set_permissions', '-p', '/', subject, '.*', '.*', '.*');
      observed.external = await roundTrip(await amqp.connect(target(''), options(true, true)));
    } finally {
      ctl('delete_user', subject);
    }
    try {
      const c = await amqp.connect(target(''), options(true, true));
      await c.close();
      observed.external_without_user = 'opened';
    } catch (err) {
      observed.external_without_user = /(ACCESS.REFUSED[^"]*)/.exec(err.message)?.[1] ?? err.message;
    }
    return observed;
  },

  // A user with narrow permissions (add_user, set_permissions, set_topic_permissions) is
  // refused what RabbitMQ refuses, with its codes and texts.
  async access_control(url) {
    const user = 'amqplib_bob';
    ctl('add_user', user, 'secret');
    ctl('add_user', 'amqplib_nob', 'secret');
    ctl('set_permissions', '-p', '/', user, '^bob', '^(bob|amq\\.default|amq\\.topic)', '^(bob|amq\\.topic)');
    ctl('set_topic_permissions', '-p', '/', user, 'amq.topic', '^{username}\\.', '^r\\.');
    const as = (name) => url.replace('guest:guest@', `${name}:secret@`);
    const observed = {};
    try {
      try {
        const c = await amqp.connect(as('amqplib_nob'));
        await c.close();
        observed.vhost = 'opened';
      } catch (err) {
        observed.vhost = /(NOT_ALLOWED[^"]*)/.exec(err.message)?.[1] ?? err.message;
      }
      const conn = await amqp.connect(as(user));
      conn.on('error', () => {});
      const attempt = async (action) => {
        const ch = await conn.createConfirmChannel();
        let closed = null;
        ch.on('error', (err) => { closed = codeText(err); });
        try {
          await action(ch);
          await ch.close();
          return 'ok';
        } catch (err) {
          await waitFor(() => closed !== null, 'the channel close');
          return closed;
        }
      };
      const publish = (exchange, key, options = {}) => (ch) => new Promise((resolve, reject) => {
        ch.publish(exchange, key, Buffer.from('x'), options, (err) => (err ? reject(err) : resolve()));
      });
      observed.declare_other = await attempt((ch) => ch.assertQueue('other'));
      observed.declare_own = await attempt((ch) => ch.assertQueue('bobq'));
      observed.declare_dlx = await attempt((ch) => ch.assertQueue('bobq2', { deadLetterExchange: 'dx' }));
      observed.declare_exchange = await attempt((ch) => ch.assertExchange('ox', 'direct'));
      observed.declare_own_exchange = await attempt((ch) => ch.assertExchange('bobx', 'direct'));
      observed.delete_queue = await attempt((ch) => ch.deleteQueue('zz'));
      observed.publish_default = await attempt(publish('', 'bobq'));
      observed.publish_direct = await attempt(publish('amq.direct', 'k'));
      observed.publish_topic_own = await attempt(publish('amq.topic', `${user}.x`));
      observed.publish_topic_other = await attempt(publish('amq.topic', 'alice.x'));
      observed.publish_user_id = await attempt(publish('', 'bobq', { userId: 'guest' }));
      observed.get = await attempt((ch) => ch.get('nosuchq'));
      observed.consume = await attempt((ch) => ch.consume('other', () => {}));
      observed.bind_source = await attempt((ch) => ch.bindQueue('bobq', 'amq.direct', 'k'));
      observed.bind_topic_refused = await attempt((ch) => ch.bindQueue('bobq', 'amq.topic', 'w.x'));
      const ch = await conn.createChannel();
      observed.depth = (await ch.deleteQueue('bobq')).messageCount;
      await ch.deleteExchange('bobx');
      await conn.close();
    } finally {
      ctl('delete_user', user);
      ctl('delete_user', 'amqplib_nob');
    }
    return observed;
  },

  // A memory alarm, forced with set_vm_memory_high_watermark 0.0001, blocks a publisher:
  // amqplib emits 'blocked' with RabbitMQ's reason, a consumer drains meanwhile, and when the
  // alarm clears it emits 'unblocked' and the message arrives.
  async memory_alarm(url) {
    const events = [];
    const conn = await amqp.connect(url);
    conn.on('blocked', (reason) => events.push(['blocked', reason]));
    conn.on('unblocked', () => events.push(['unblocked']));
    const ch = await conn.createChannel();
    const q = unique('alarm');
    await ch.assertQueue(q);
    ch.sendToQueue(q, Buffer.from('before'));
    const other = await amqp.connect(url);
    const och = await other.createChannel();
    let drained;
    let readyDuring;
    try {
      ctl('set_vm_memory_high_watermark', '0.0001');
      ch.sendToQueue(q, Buffer.from('during'));
      await waitFor(() => events.length >= 1, 'connection.blocked', 20000);
      drained = (await waitGet(och, q, true)).content.toString();
      ({ messageCount: readyDuring } = await och.checkQueue(q));
    } finally {
      ctl('set_vm_memory_high_watermark', '0.4');
    }
    await waitFor(() => events.length >= 2, 'connection.unblocked', 20000);
    const arrived = (await waitGet(och, q, true)).content.toString();
    await och.deleteQueue(q);
    await other.close();
    await conn.close();
    return { events, drained, ready_during: readyDuring, arrived };
  },

  // exchange.declare with a type no broker has: RabbitMQ 3.10 closes the connection (503),
  // 3.12 and later only the channel (406), with the same text; Lepus follows 3.12.
  async unknown_exchange_type(url) {
    const conn = await amqp.connect(url);
    let connectionClosed = false;
    conn.on('error', () => { connectionClosed = true; });
    const ch = await conn.createChannel();
    const closed = new Promise((resolve) => {
      ch.on('error', resolve);
      conn.on('error', resolve);
    });
    ch.assertExchange(unique('x'), 'ZZwwInvalid').catch(() => {});
    const [code, text] = codeText(await within(closed, 'the broker to refuse the type'));
    assert.ok([503, 406].includes(code), `code ${code}`);
    assert.ok(text.endsWith("unknown exchange type 'ZZwwInvalid'"), text);
    await sleep(200);
    if (!connectionClosed) await conn.close();
    return { close: [code, text], connection_survived: !connectionClosed };
  },

  // Closing a channel with an open transaction rolls it back: what it acked is ready again.
  async tx_close_rollback(url) {
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    const q = unique('txclose');
    await ch.assertQueue(q);
    for (const body of ['m1', 'm2']) ch.sendToQueue(q, Buffer.from(body));
    const tx = await conn.createChannel();
    // amqplib has no tx methods of its own: send tx.select through its generic rpc.
    await tx.rpc(defs.TxSelect, {}, defs.TxSelectOk);
    const m1 = await waitGet(tx, q, false);
    tx.ack(m1);
    const m2 = await waitGet(tx, q, false);
    await tx.close();
    const messageCount = await waitReady(ch, q, 2);
    await ch.deleteQueue(q);
    await conn.close();
    return { got: [m1.content.toString(), m2.content.toString()], ready_after_close: messageCount };
  },

  // Where a requeued message goes: a quorum queue puts what its consumer refused (nack or
  // reject with requeue, basic.recover) behind every ready message, in the order it came
  // back, and what a closing channel let go back in its place; a classic queue puts both
  // back in their places. x-delivery-count counts the returns.
  async quorum_requeue_order(url) {
    const conn = await amqp.connect(url);
    const setup = await conn.createConfirmChannel();
    const ch = await conn.createChannel();
    const fresh = async (q, kind) => {
      await setup.assertQueue(q, { durable: true, arguments: { 'x-queue-type': kind } });
      for (let i = 1; i <= 5; i++) setup.sendToQueue(q, Buffer.from(`m${i}`), { persistent: true });
      await setup.waitForConfirms();
    };
    const drainFive = async (q) => {
      const out = [];
      const deadline = Date.now() + 10000;
      while (out.length < 5 && Date.now() < deadline) {
        const m = await ch.get(q, { noAck: true });
        if (!m) { await sleep(10); continue; }
        const count = (m.properties.headers || {})['x-delivery-count'];
        out.push(m.content.toString() + (m.fields.redelivered ? '*' : '') +
          (count === undefined ? '' : `[${count}]`));
      }
      await setup.deleteQueue(q);
      return out.join(' ');
    };
    const seen = {};
    for (const kind of ['quorum', 'classic']) {
      const q = unique(`order-${kind}`);
      await fresh(q, kind);
      ch.nack(await waitGet(ch, q, false), false, true);
      seen[`${kind} nack`] = await drainFive(q);
      await fresh(q, kind);
      ch.reject(await waitGet(ch, q, false), true);
      seen[`${kind} reject`] = await drainFive(q);
      await fresh(q, kind);
      await waitGet(ch, q, false);
      ch.nack(await waitGet(ch, q, false), true, true);
      seen[`${kind} nack multiple`] = await drainFive(q);
      await fresh(q, kind);
      const m1 = await waitGet(ch, q, false);
      const m2 = await waitGet(ch, q, false);
      ch.nack(m2, false, true);
      ch.nack(m1, false, true);
      seen[`${kind} nack m2 then m1`] = await drainFive(q);
      await fresh(q, kind);
      await waitGet(ch, q, false);
      await ch.recover();
      seen[`${kind} recover`] = await drainFive(q);
      await fresh(q, kind);
      const other = await conn.createChannel();
      await waitGet(other, q, false);
      await other.close();
      await waitReady(ch, q, 5);
      seen[`${kind} channel closed`] = await drainFive(q);
    }
    await conn.close();
    assert.equal(seen['quorum nack'], 'm2[0] m3[0] m4[0] m5[0] m1*[1]');
    assert.equal(seen['quorum channel closed'], 'm1*[1] m2[0] m3[0] m4[0] m5[0]');
    assert.equal(seen['classic nack'], 'm1* m2 m3 m4 m5');
    return seen;
  },

  // What a quorum queue refuses: consumers under a channel-wide prefetch and conditional
  // deletes (connection errors), arguments only quorum queues know with bad values, and a
  // redeclare that changes its delivery limit or dead-letter strategy.
  async quorum_refusals(url) {
    const q = unique('qq-refuse');
    const seen = [];
    const base = { 'x-queue-type': 'quorum', 'x-delivery-limit': 3, 'x-dead-letter-strategy': 'at-most-once' };
    const attempt = async (what, action) => {
      const conn = await amqp.connect(url);
      const ch = await conn.createChannel();
      // The broker's close, of the connection or of the channel (a channel also ends,
      // without the broker's text, when its connection closes).
      const closed = new Promise((resolve) => {
        conn.on('error', resolve);
        ch.on('error', (e) => { if (/with message/.test(e.message)) resolve(e); });
      });
      await ch.assertQueue(q, { durable: true, arguments: base });
      try {
        await action(ch);
        seen.push([what, 'ok']);
        await conn.close();
      } catch (_) {
        const [code, text] = codeText(await within(closed, 'the broker to close'));
        seen.push([what, code, text.split(q).join('Q')]);
        await conn.close().catch(() => {});
      }
    };
    const declare = (args) => (ch) => ch.assertQueue(`${q}-arg`,
      { durable: true, arguments: { 'x-queue-type': 'quorum', ...args } });
    const redeclare = (args) => (ch) => ch.assertQueue(q,
      { durable: true, arguments: { 'x-queue-type': 'quorum', ...args } });
    await attempt('consume under global qos', async (ch) => {
      await ch.prefetch(5, true);
      await ch.consume(q, () => {});
    });
    await attempt('consume, then global qos', async (ch) => {
      await ch.consume(q, () => {});
      await ch.prefetch(5, true);
    });
    await attempt('delete if-empty', (ch) => ch.deleteQueue(q, { ifEmpty: true }));
    await attempt('delete if-unused', (ch) => ch.deleteQueue(q, { ifUnused: true }));
    await attempt('dead-letter strategy bogus', declare({ 'x-dead-letter-strategy': 'bogus' }));
    await attempt('in-memory length negative', declare({ 'x-max-in-memory-length': -1 }));
    await attempt('group size zero', declare({ 'x-quorum-initial-group-size': 0 }));
    await attempt('leader locator bogus', declare({ 'x-queue-leader-locator': 'min-masters' }));
    await attempt('redeclare delivery limit', redeclare({ 'x-delivery-limit': 4, 'x-dead-letter-strategy': 'at-most-once' }));
    await attempt('redeclare strategy', redeclare({ 'x-delivery-limit': 3, 'x-dead-letter-strategy': 'at-least-once' }));
    await attempt('redeclare same', redeclare({ 'x-delivery-limit': 3, 'x-dead-letter-strategy': 'at-most-once' }));
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.deleteQueue(q);
    await conn.close();
    return { attempts: seen };
  },

  // A channel-wide prefetch of 1 shared by consumers of three queues: as acks free the
  // credit, every queue gets a share.
  async global_prefetch_fairness(url) {
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    const x = unique('fair');
    await ch.assertExchange(x, 'fanout');
    const queues = [unique('fair-q'), unique('fair-q'), unique('fair-q')];
    for (const q of queues) {
      await ch.assertQueue(q);
      await ch.bindQueue(q, x, '');
    }
    const consuming = await conn.createChannel();
    await consuming.prefetch(1, true);
    const counts = queues.map(() => 0);
    let acked = 0;
    for (const [i, q] of queues.entries()) {
      await consuming.consume(q, (m) => {
        if (!m) return;
        counts[i] += 1;
        if (acked < 99) {
          acked += 1;
          consuming.ack(m);
        }
      });
    }
    for (let n = 0; n < 100; n++) ch.publish(x, '', Buffer.from(String(n)));
    await waitFor(() => counts.reduce((a, b) => a + b, 0) >= 100, 'all deliveries', 20000);
    const sorted = [...counts].sort((a, b) => a - b);
    await conn.close();
    // RabbitMQ wakes the queues waiting for credit in a shuffled order, so its shares are
    // random (below 20 of 100 once in some 300 runs): 10 tells a share from starvation.
    return { delivered: 100, every_queue_got_a_share: sorted[0] >= 10 };
  },

  // A TTL-0 message taken at once by a waiting consumer and then requeued has expired.
  async ttl_zero_requeue(url) {
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    const [q, dlx, dead] = [unique('ttl0'), unique('ttl0-dlx'), unique('ttl0-dead')];
    await ch.assertExchange(dlx, 'fanout');
    await ch.assertQueue(dead);
    await ch.bindQueue(dead, dlx, '');
    await ch.assertQueue(q, { arguments: { 'x-message-ttl': 0, 'x-dead-letter-exchange': dlx } });
    const deliveries = [];
    await ch.consume(q, (m) => {
      if (!m) return; // cancelled when the queue is deleted below
      deliveries.push(m.content.toString());
      ch.reject(m, true);
    });
    ch.sendToQueue(q, Buffer.from('now or never'));
    const m = await waitGet(ch, dead, true);
    await sleep(300);
    const reason = m.properties.headers['x-death'][0].reason;
    for (const name of [q, dead]) await ch.deleteQueue(name);
    await ch.deleteExchange(dlx);
    await conn.close();
    return { deliveries, dead_lettered: m.content.toString(), reason };
  },

  // A consumer that stops reading its socket is disconnected after the broker's TCP send
  // timeout (5 s in this suite, on both brokers); what it held goes back to the queue.
  async send_timeout(url) {
    const setup = await amqp.connect(url);
    const ch = await setup.createConfirmChannel();
    const q = unique('stuck');
    await ch.assertQueue(q);
    const body = Buffer.alloc(65536, 'x');
    for (let i = 0; i < 400; i++) ch.sendToQueue(q, body);
    await ch.waitForConfirms();
    const stuck = await amqp.connect(url + (url.includes('?') ? '&' : '?') + 'heartbeat=0');
    stuck.on('error', () => {});
    const sch = await stuck.createChannel();
    sch.on('error', () => {});
    await sch.consume(q, () => {});
    // From here on the stuck connection reads nothing.
    stuck.connection.stream.pause();
    let ready = 0;
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline) {
      ({ messageCount: ready } = await ch.checkQueue(q));
      if (ready === 400) break;
      await sleep(500);
    }
    await ch.deleteQueue(q);
    await setup.close();
    return { requeued: ready };
  },

  // The connection negotiates and the server advertises the capabilities clients use.
  async handshake(url) {
    const conn = await amqp.connect(url);
    const props = conn.connection.serverProperties;
    const caps = props.capabilities || {};
    const missing = CAPABILITIES.filter((c) => caps[c] !== true);
    assert.deepEqual(missing, [], `capabilities missing: ${missing}`);
    for (const key of ['product', 'version', 'platform']) assert.ok(key in props, key);
    assert.ok(conn.connection.frameMax <= 131072, `frameMax ${conn.connection.frameMax}`);
    await conn.close();
    return { capabilities: CAPABILITIES };
  },

  // Every subscriber of a fanout exchange gets every message.
  async pubsub_fanout(url) {
    const exchange = unique('broadcast');
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertExchange(exchange, 'fanout', { durable: false });
    const queues = [];
    for (let i = 0; i < 3; i++) {
      const { queue } = await ch.assertQueue('', { exclusive: true });
      await ch.bindQueue(queue, exchange, '');
      queues.push(queue);
    }
    for (let i = 0; i < 5; i++) ch.publish(exchange, 'ignored', Buffer.from(`news ${i}`));
    const got = [];
    for (const q of queues) got.push((await drain(ch, q)).map(([b]) => b));
    const expected = Array.from({ length: 5 }, (_, i) => `news ${i}`);
    for (const g of got) assert.deepEqual(g, expected);
    await ch.deleteExchange(exchange);
    await conn.close();
    return { each_got: got[0], subscribers: got.length };
  },

  // With prefetch 1 a consumer holding an unacked message gets nothing more; the next
  // message goes to a consumer with room.
  async prefetch(url) {
    const queue = unique('prefetch');
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertQueue(queue, { durable: false });
    const slow = await conn.createChannel();
    await slow.prefetch(1);
    const fast = await conn.createChannel();
    const got = { slow: [], fast: [] };
    await slow.consume(queue, (msg) => msg && got.slow.push(msg.content.toString()));
    await fast.consume(queue, (msg) => msg && got.fast.push(msg.content.toString()), { noAck: true });
    for (let i = 0; i < 6; i++) ch.sendToQueue(queue, Buffer.from(`m${i}`));
    await waitFor(() => got.slow.length + got.fast.length >= 6, 'six deliveries');
    assert.deepEqual(got, { slow: ['m0'], fast: ['m1', 'm2', 'm3', 'm4', 'm5'] });
    await ch.deleteQueue(queue);
    await conn.close();
    return got;
  },

  // Rejected and nacked messages come back in their original position, redelivered.
  async requeue_order(url) {
    const queue = unique('requeue');
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertQueue(queue, { durable: false });
    for (let i = 0; i < 6; i++) ch.sendToQueue(queue, Buffer.from(`m${i}`));
    const msgs = [];
    for (let i = 0; i < 4; i++) {
      const msg = await ch.get(queue, { noAck: false });
      assert.ok(msg, `message ${i}`);
      msgs.push(msg);
    }
    ch.reject(msgs[2], true);
    ch.nack(msgs[0], false, true);
    ch.ack(msgs[3], false);
    ch.reject(msgs[1], false);
    const got = await drain(ch, queue);
    assert.deepEqual(got, [['m0', true], ['m2', true], ['m4', false], ['m5', false]]);
    await ch.deleteQueue(queue);
    await conn.close();
    return { order: got };
  },

  // An unroutable mandatory message comes back with 312 NO_ROUTE.
  async mandatory_return(url) {
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    const returned = [];
    ch.on('return', (msg) => returned.push(
      [msg.fields.replyCode, msg.fields.replyText, msg.fields.routingKey, msg.content.toString()]));
    const nobody = unique('nobody');
    ch.publish('', nobody, Buffer.from('lost'), { mandatory: true });
    ch.publish('amq.direct', 'no-binding', Buffer.from('lost too'), { mandatory: true });
    await waitFor(() => returned.length >= 2, 'two returns', 5000);
    assert.deepEqual(returned, [[312, 'NO_ROUTE', nobody, 'lost'], [312, 'NO_ROUTE', 'no-binding', 'lost too']]);
    await conn.close();
    return { returned: returned.map((r) => [r[0], r[1], r[3]]) };
  },

  // Publisher confirms: every publish is acked; an unroutable mandatory one is returned
  // and still acked.
  async confirms(url) {
    const queue = unique('confirm');
    const conn = await amqp.connect(url);
    const ch = await conn.createConfirmChannel();
    await ch.assertQueue(queue, { durable: false });
    let acked = 0;
    for (let i = 0; i < 100; i++) {
      ch.sendToQueue(queue, Buffer.from(`c${i}`), {}, (err) => {
        assert.equal(err, null, `publish ${i} nacked`);
        acked++;
      });
    }
    await within(ch.waitForConfirms(), 'confirms');
    assert.equal(acked, 100);
    const returns = [];
    ch.on('return', (msg) => returns.push(msg.content.toString()));
    const confirmed = new Promise((resolve, reject) => {
      ch.publish('', unique('nowhere'), Buffer.from('x'), { mandatory: true },
        (err) => (err ? reject(new Error('unroutable publish nacked')) : resolve(returns.length)));
    });
    const returnedBeforeAck = await within(confirmed, 'the confirm of the unroutable publish');
    assert.equal(returnedBeforeAck, 1, 'basic.return arrives before basic.ack');
    const { messageCount } = await ch.checkQueue(queue);
    assert.equal(messageCount, 100);
    await ch.deleteQueue(queue);
    await conn.close();
    return { confirmed: acked, returned: returns.length };
  },

  // Bodies larger than a frame arrive intact, and so do empty ones.
  async large_messages(url) {
    const queue = unique('large');
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertQueue(queue, { durable: false });
    const big = Buffer.alloc(5 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = i % 256;
    ch.sendToQueue(queue, big);
    ch.sendToQueue(queue, Buffer.alloc(0));
    const m1 = await ch.get(queue, { noAck: true });
    const m2 = await ch.get(queue, { noAck: true });
    assert.ok(m1 && m2, 'both messages arrived');
    assert.ok(m1.content.equals(big), `big body differs (${m1.content.length} bytes)`);
    assert.equal(m2.content.length, 0);
    await ch.deleteQueue(queue);
    await conn.close();
    return { sizes: [m1.content.length, m2.content.length] };
  },

  // 200 channels on one connection each use their own queue; a channel error on one
  // leaves the others usable.
  async many_channels(url) {
    const n = 200;
    const conn = await amqp.connect(url);
    const channels = [];
    for (let i = 0; i < n; i++) {
      const ch = await conn.createChannel();
      const { queue } = await ch.assertQueue('', { exclusive: true });
      assert.match(queue, /^amq\.gen-/);
      channels.push({ ch, queue });
    }
    assert.equal(new Set(channels.map((c) => c.queue)).size, n, 'distinct queues');
    const roundTrip = async (list, round) => {
      let delivered = 0;
      for (const [i, { ch, queue }] of list.entries()) ch.sendToQueue(queue, Buffer.from(`${round} ${i}`));
      for (const [i, { ch, queue }] of list.entries()) {
        const msg = await ch.get(queue, { noAck: true });
        assert.ok(msg, `channel ${i} got its message`);
        assert.equal(msg.content.toString(), `${round} ${i}`);
        delivered++;
      }
      return delivered;
    };
    const delivered = await roundTrip(channels, 'first');
    // A channel error on one channel...
    const victim = channels[n / 2];
    const closed = new Promise((resolve) => victim.ch.on('error', resolve));
    const missing = unique('missing');
    await victim.ch.checkQueue(missing).catch(() => {});
    const [code, text] = codeText(await within(closed, 'the channel error'));
    assert.deepEqual([code, text], [404, `NOT_FOUND - no queue '${missing}' in vhost '/'`]);
    // ...leaves the others usable.
    const others = channels.filter((c) => c !== victim);
    const usable = await roundTrip(others, 'second');
    await conn.close();
    return { channels: n, delivered, error: [code, text.replace(missing, 'Q')], usable_after_error: usable };
  },

  // An exclusive queue is locked to its connection and deleted with it.
  async exclusive_queue(url) {
    const owner = await amqp.connect(url);
    const och = await owner.createChannel();
    const queue = unique('mine');
    await och.assertQueue(queue, { exclusive: true });
    const other = await amqp.connect(url);
    const locked = await channelError(other, (ch) => ch.checkQueue(queue));
    assert.deepEqual(locked, [405, `RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '${queue}' in `
      + "vhost '/'. It could be originally declared on another connection or the exclusive property value "
      + 'does not match that of the original declaration.']);
    await owner.close();
    const gone = await channelError(other, (ch) => ch.checkQueue(queue));
    assert.deepEqual(gone, [404, `NOT_FOUND - no queue '${queue}' in vhost '/'`]);
    await other.close();
    return {
      locked: [locked[0], locked[1].replace(queue, 'Q')],
      after_close: [gone[0], gone[1].replace(queue, 'Q')],
    };
  },

  // Deleting a queue under a consumer tells the consumer (basic.cancel from the broker).
  async consumer_cancel_notify(url) {
    const queue = unique('doomed');
    const conn = await amqp.connect(url);
    const ch = await conn.createChannel();
    await ch.assertQueue(queue, { durable: false });
    const cancelled = [];
    ch.on('cancel', (fields) => cancelled.push(fields.consumerTag));
    let gotNull = false;
    await ch.consume(queue, (msg) => {
      if (msg === null) gotNull = true;
    }, { noAck: true, consumerTag: 'watcher' });
    const other = await conn.createChannel();
    const { messageCount } = await other.deleteQueue(queue);
    await waitFor(() => gotNull, 'the consumer to be cancelled', 5000);
    assert.deepEqual(cancelled, ['watcher']);
    await conn.close();
    return { cancelled, deleted_messages: messageCount };
  },

  // Durable definitions and persistent messages survive a broker restart; transient ones do
  // not. The runner restarts the broker between the two phases.
  async restart_durable(url, phase) {
    const [q, tq, x] = ['conf-restart-amqplib', 'conf-restart-amqplib-transient', 'conf-restart-amqplib-x'];
    const conn = await amqp.connect(url);
    if (phase === 'before') {
      const ch = await conn.createConfirmChannel();
      await ch.deleteQueue(q);
      await ch.deleteQueue(tq);
      await ch.deleteExchange(x);
      await ch.assertExchange(x, 'direct', { durable: true });
      await ch.assertQueue(q, { durable: true });
      await ch.assertQueue(tq, { durable: false });
      await ch.bindQueue(q, x, 'k');
      for (const [body, persistent] of [['p1', true], ['p2', true], ['t1', false], ['p3', true]]) {
        ch.publish(x, 'k', Buffer.from(body), { persistent });
      }
      ch.sendToQueue(tq, Buffer.from('on-transient-queue'), { persistent: true });
      await ch.waitForConfirms();
      const first = await ch.get(q, { noAck: false });
      ch.ack(first);
      // p2 stays delivered and unacked until the connection closes, then goes back.
      const second = await ch.get(q, { noAck: false });
      const { messageCount } = await ch.checkQueue(q);
      await conn.close();
      return { acked: first.content.toString(), unacked: second.content.toString(), depth: messageCount };
    }
    const ch = await conn.createConfirmChannel();
    const { messageCount } = await ch.checkQueue(q);
    await ch.checkExchange(x);
    const gone = await channelError(conn, (c) => c.checkQueue(tq));
    const messages = await drain(ch, q);
    assert.deepEqual(messages.map((m) => m[0]), ['p2', 'p3']);
    ch.publish(x, 'k', Buffer.from('after'));
    await ch.waitForConfirms();
    const routed = await drain(ch, q);
    await ch.deleteQueue(q);
    await ch.deleteExchange(x);
    await conn.close();
    return { depth: messageCount, messages, transient_queue: gone, binding_routes: routed };
  },
};

// Runs the broker's rabbitmqctl (lepusctl for Lepus) with `args`.
function ctl(...args) {
  const argv = JSON.parse(process.env.CONFORMANCE_CTL).concat(args);
  execFileSync(argv[0], argv.slice(1), { stdio: 'ignore', timeout: 60000 });
}

async function main() {
  const args = process.argv.slice(2);
  const url = args[args.indexOf('--url') + 1];
  if (args.includes('--list')) {
    console.log(Object.keys(scenarios).join('\n'));
    return;
  }
  const [name, phase] = args[args.indexOf('--run') + 1].split(':');
  const observed = await scenarios[name](url, phase);
  console.log(sortedJson(observed));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
  },
);
