// Exchanges and queues: lists, their pages, bindings, publishing and getting messages.
'use strict';

function features(o) {
  const out = [];
  if (o.durable) out.push(h('abbr', {title: 'durable'}, 'D'));
  if (o.auto_delete) out.push(h('abbr', {title: 'auto-delete'}, 'AD'));
  if (o.internal) out.push(h('abbr', {title: 'internal'}, 'I'));
  if (o.exclusive) out.push(h('abbr', {title: 'exclusive'}, 'Excl'));
  for (const key of Object.keys(o.arguments || {})) out.push(h('abbr', {title: key + ': ' + JSON.stringify(o.arguments[key])}, 'Args'));
  if (o.policy) out.push(h('abbr', {title: 'policy'}, o.policy));
  return h('span', {class: 'features'}, out);
}

/** A vhost field whose options are filled in from the API. */
function vhostField(names) {
  return {name: 'vhost', label: 'Virtual host', type: 'select', options: names, value: names.includes('/') ? '/' : names[0]};
}

pages.exchanges = async view => {
  view.add(h('h2', {}, 'Exchanges'));
  pagedList(view, '/exchanges', [
    ['Virtual host', x => x.vhost], ['Name', x => link('exchanges', x.vhost, x.name)],
    ['Type', x => x.type], ['Features', x => features(x)],
    ['Message rate in', x => statRate(x, 'publish_in'), 'num'],
    ['Message rate out', x => statRate(x, 'publish_out'), 'num'],
  ], 'No exchanges.');
  const names = await vhostNames();
  view.add(form('Add a new exchange', [
    vhostField(names),
    {name: 'name', label: 'Name', required: true},
    {name: 'type', label: 'Type', type: 'select', options: ['direct', 'fanout', 'headers', 'topic']},
    {name: 'durable', label: 'Durable', type: 'checkbox', value: true},
    {name: 'auto_delete', label: 'Auto delete', type: 'checkbox'},
    {name: 'internal', label: 'Internal', type: 'checkbox'},
    {name: 'arguments', label: 'Arguments', type: 'json', placeholder: '{"alternate-exchange": "unrouted"}'},
  ], 'Add exchange', async (v, el) => {
    await api.put('/exchanges/' + enc(v.vhost) + '/' + enc(v.name), {type: v.type, durable: v.durable,
      auto_delete: v.auto_delete, internal: v.internal, arguments: v.arguments});
    el.reset();
    await view.refresh();
    return 'Exchange ' + v.name + ' added.';
  }));
};

pages.exchange = async (view, vhost, pathName) => {
  const name = pathName === 'amq.default' ? '' : pathName;
  const base = '/exchanges/' + enc(vhost) + '/' + enc(pathName);
  view.add(h('h2', {}, 'Exchange ', h('span', {class: 'name'}, exchangeLabel(name)), h('span', {class: 'vhost'}, 'in ' + vhost)));
  view.live(async () => {
    const [x, bindings] = await Promise.all([api.get(base), api.get(base + '/bindings/source')]);
    return h('div', {}, facts([
      ['Type', x.type], ['Features', features(x)], ['Arguments', args(x.arguments)], ['Policy', x.policy || ''],
      ['Message rate in', statRate(x, 'publish_in')], ['Message rate out', statRate(x, 'publish_out')],
    ]), h('h3', {}, 'Bindings from this exchange'), bindingTable(bindings, 'destination'));
  });
  if (name !== '') view.add(bindForm(view, vhost, name, 'source'));
  view.add(publishForm(vhost, pathName, ''));
  if (name !== '' && !name.startsWith('amq.')) {
    view.add(h('div', {class: 'panel danger'}, h('h3', {}, 'Delete this exchange'),
      button('Delete', 'Delete the exchange ' + name + '?', async () => {
        await api.del(base);
        location.hash = '#/exchanges';
        return 'Exchange ' + name + ' deleted.';
      }, 'danger')));
  }
};

/** Bindings, showing the other end (`side`), each with an Unbind button. */
function bindingTable(bindings, side) {
  return table([
    [side === 'source' ? 'From' : 'To', b => side === 'source'
      ? link('exchanges', b.vhost, b.source)
      : link(b.destination_type === 'queue' ? 'queues' : 'exchanges', b.vhost, b.destination)],
    ['Kind', b => b.destination_type], ['Routing key', b => b.routing_key], ['Arguments', b => args(b.arguments)],
    ['', b => b.source === '' ? '' : button('Unbind', null, async () => {
      const kind = b.destination_type === 'queue' ? 'q' : 'e';
      await api.del('/bindings/' + enc(b.vhost) + '/e/' + enc(b.source) + '/' + kind + '/' +
        enc(b.destination) + '/' + enc(b.properties_key));
      await app.view.refresh();
      return 'Unbound.';
    })],
  ], bindings, 'No bindings.');
}

/** Adds a binding with this object at one end (`side` is 'source' or 'destination'). */
function bindForm(view, vhost, name, side) {
  const fields = side === 'source'
    ? [{name: 'kind', label: 'To', type: 'select', options: [['q', 'queue'], ['e', 'exchange']]},
       {name: 'other', label: 'Destination', required: true}]
    : [{name: 'other', label: 'From exchange', required: true}];
  return form(side === 'source' ? 'Add a binding from this exchange' : 'Add a binding to this queue', fields.concat([
    {name: 'routing_key', label: 'Routing key'},
    {name: 'arguments', label: 'Arguments', type: 'json', placeholder: '{"x-match": "all"}'},
  ]), 'Bind', async (v, el) => {
    const path = side === 'source'
      ? '/bindings/' + enc(vhost) + '/e/' + enc(name) + '/' + v.kind + '/' + enc(v.other)
      : '/bindings/' + enc(vhost) + '/e/' + enc(v.other) + '/q/' + enc(name);
    await api.post(path, {routing_key: v.routing_key, arguments: v.arguments});
    el.reset();
    await view.refresh();
    return 'Bound.';
  });
}

/** Publishes through an exchange (the default one, to a queue, with the queue's name as key). */
function publishForm(vhost, pathName, routingKey) {
  return form('Publish a message', [
    {name: 'routing_key', label: 'Routing key', value: routingKey},
    {name: 'delivery_mode', label: 'Delivery mode', type: 'select', options: [['1', '1 - Non-persistent'], ['2', '2 - Persistent']]},
    {name: 'headers', label: 'Headers', type: 'json', placeholder: '{"x-retry": 1}'},
    {name: 'properties', label: 'Properties', type: 'json', placeholder: '{"content_type": "text/plain", "correlation_id": "42"}'},
    {name: 'payload', label: 'Payload', type: 'textarea', rows: 4},
  ], 'Publish message', async v => {
    const properties = Object.assign({}, v.properties, {delivery_mode: Number(v.delivery_mode)});
    if (Object.keys(v.headers).length) properties.headers = v.headers;
    const result = await api.post('/exchanges/' + enc(vhost) + '/' + enc(pathName) + '/publish', {
      routing_key: v.routing_key, properties, payload: v.payload, payload_encoding: 'string'});
    await app.view.refresh();
    // RabbitMQ's UI says the same.
    return result.routed ? 'Message published.' : 'Message published, but not routed.';
  });
}

pages.queues = async view => {
  view.add(h('h2', {}, 'Queues'));
  pagedList(view, '/queues', [
    ['Virtual host', q => q.vhost], ['Name', q => link('queues', q.vhost, q.name)],
    ['Type', q => q.type || 'classic'], ['Features', q => features(q)], ['State', q => q.state],
    ['Ready', q => num(q.messages_ready), 'num'], ['Unacked', q => num(q.messages_unacknowledged), 'num'],
    ['Total', q => num(q.messages), 'num'], ['Consumers', q => num(q.consumers), 'num'],
    ['Incoming', q => statRate(q, 'publish'), 'num'], ['Deliver / get', q => statRate(q, 'deliver_get'), 'num'],
    ['Ack', q => statRate(q, 'ack'), 'num'],
  ], 'No queues.');
  const names = await vhostNames();
  view.add(form('Add a new queue', [
    vhostField(names),
    {name: 'name', label: 'Name', required: true},
    {name: 'durable', label: 'Durable', type: 'checkbox', value: true},
    {name: 'auto_delete', label: 'Auto delete', type: 'checkbox'},
    {name: 'arguments', label: 'Arguments', type: 'json',
      placeholder: '{"x-message-ttl": 60000, "x-max-length": 1000, "x-dead-letter-exchange": "dlx"}'},
  ], 'Add queue', async (v, el) => {
    await api.put('/queues/' + enc(v.vhost) + '/' + enc(v.name),
      {durable: v.durable, auto_delete: v.auto_delete, arguments: v.arguments});
    el.reset();
    await view.refresh();
    return 'Queue ' + v.name + ' added.';
  }));
};

pages.queue = async (view, vhost, name) => {
  const base = '/queues/' + enc(vhost) + '/' + enc(name);
  view.add(h('h2', {}, 'Queue ', h('span', {class: 'name'}, name), h('span', {class: 'vhost'}, 'in ' + vhost)));
  view.live(async () => {
    const [q, bindings] = await Promise.all([api.get(base), api.get(base + '/bindings')]);
    return h('div', {}, facts([
      ['State', q.state], ['Features', features(q)], ['Arguments', args(q.arguments)],
      ['Policy', q.policy || ''], ['Effective policy', args(q.effective_policy_definition)],
      ['Ready', num(q.messages_ready)], ['Unacked', num(q.messages_unacknowledged)], ['Total', num(q.messages)],
      ['Message body bytes', bytes(q.message_bytes)], ['Consumers', num(q.consumers)],
      ['Incoming', statRate(q, 'publish')], ['Deliver / get', statRate(q, 'deliver_get')],
      ['Redelivered', statRate(q, 'redeliver')], ['Ack', statRate(q, 'ack')],
    ]), h('h3', {}, 'Consumers'), table([
      ['Channel', c => (c.channel_details || {}).name || ''], ['Consumer tag', c => c.consumer_tag],
      ['Ack required', c => c.ack_required ? 'yes' : 'no'], ['Exclusive', c => c.exclusive ? 'yes' : 'no'],
      ['Prefetch', c => num(c.prefetch_count), 'num'], ['Arguments', c => args(c.arguments)],
    ], q.consumer_details, 'No consumers.'), h('h3', {}, 'Bindings'), bindingTable(bindings, 'source'));
  });
  view.add(bindForm(view, vhost, name, 'destination'));
  view.add(publishForm(vhost, 'amq.default', name));
  const got = h('div', {class: 'messages'});
  view.add(form('Get messages', [
    {name: 'ackmode', label: 'Ack mode', type: 'select', options: [
      ['ack_requeue_true', 'Nack message requeue true'], ['ack_requeue_false', 'Automatic ack'],
      ['reject_requeue_true', 'Reject requeue true'], ['reject_requeue_false', 'Reject requeue false']]},
    {name: 'encoding', label: 'Encoding', type: 'select', options: [['auto', 'Auto string / base64'], ['base64', 'base64']]},
    {name: 'count', label: 'Messages', type: 'number', value: 1, min: 1},
  ], 'Get message(s)', async v => {
    const messages = await api.post(base + '/get', {count: v.count || 1, ackmode: v.ackmode, encoding: v.encoding, truncate: 50000});
    got.replaceChildren(...(messages.length ? messages.map(messageView) : [h('p', {class: 'empty'}, 'Queue is empty')]));
    await view.refresh();
    return null;
  }), got);
  view.add(h('div', {class: 'panel danger'}, h('h3', {}, 'Purge or delete'),
    button('Purge messages', 'Purge every ready message of ' + name + '?', async () => {
      await api.del(base + '/contents');
      await view.refresh();
      return 'Queue ' + name + ' purged.';
    }, 'danger'),
    button('Delete queue', 'Delete the queue ' + name + '?', async () => {
      await api.del(base);
      location.hash = '#/queues';
      return 'Queue ' + name + ' deleted.';
    }, 'danger')));
};

function messageView(m, i) {
  return h('section', {class: 'panel message'}, h('h3', {}, 'Message ' + (i + 1)), facts([
    ['Exchange', exchangeLabel(m.exchange)], ['Routing key', m.routing_key], ['Redelivered', m.redelivered ? 'yes' : 'no'],
    ['Messages left', num(m.message_count)], ['Properties', args(m.properties)],
    ['Payload', h('span', {}, h('small', {}, num(m.payload_bytes) + ' bytes, encoding: ' + m.payload_encoding),
      h('pre', {class: 'payload'}, m.payload))],
  ]));
}
