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
      workers.push(conn);
    }
    for (let i = 0; i < n; i++) {
      pch.sendToQueue(queue, Buffer.from(`task ${i}`), { persistent: true });
    }
    await waitFor(() => done.a.length + done.b.length >= n, 'all tasks');
    for (const w of workers) await w.close();
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

  // Channel errors carry RabbitMQ's codes and texts.
  async errors(url) {
    const conn = await amqp.connect(url);
    const observed = {};
    const expectClose = async (action) => {
      const ch = await conn.createChannel();
      const closed = new Promise((resolve) => ch.on('error', resolve));
      await action(ch).catch(() => {});
      const err = await closed;
      return [err.code, err.message];
    };
    const missing = unique('missing');
    const [code, message] = await expectClose((ch) => ch.checkQueue(missing));
    assert.equal(code, 404);
    assert.match(message, new RegExp(`NOT_FOUND - no queue '${missing}' in vhost '/'`));
    observed.passive_missing = code;
    const [code2, message2] = await expectClose((ch) => ch.assertExchange('amq.mine', 'direct'));
    assert.equal(code2, 403);
    assert.match(message2, /ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.\*'/);
    observed.reserved = code2;
    await conn.close();
    return observed;
  },
};

async function main() {
  const args = process.argv.slice(2);
  const url = args[args.indexOf('--url') + 1];
  if (args.includes('--list')) {
    console.log(Object.keys(scenarios).join('\n'));
    return;
  }
  const name = args[args.indexOf('--run') + 1];
  const observed = await scenarios[name](url);
  console.log(JSON.stringify(observed, Object.keys(observed).sort()));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
  },
);
