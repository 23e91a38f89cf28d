// The page being shown, lists that page through the API, and the overview, connections and
// channels pages.
'use strict';

/**
 * What a page shows. Static parts (forms) are added once; live parts are functions that
 * build their content from the API and run again every few seconds and after every change,
 * so a form being filled in is never redrawn under the user's hands.
 */
class View {
  constructor(main) {
    this.main = main;
    this.parts = [];
  }

  add(...nodes) {
    this.main.append(...nodes);
  }

  live(build) {
    const box = h('div', {class: 'live'});
    this.main.append(box);
    const run = async () => {
      try {
        box.replaceChildren(await build());
      } catch (e) {
        if (e.status === 401) return app.logout('Your login is no longer accepted.');
        box.replaceChildren(h('p', {class: 'error'}, e.message));
      }
    };
    this.parts.push(run);
    return run();
  }

  refresh() {
    return Promise.all(this.parts.map(run => run()));
  }
}

/** Page size of the lists, and how each list page is asked for. */
const PAGE_SIZE = 100;

/**
 * A list of one kind of object through the API's paging (`page`, `page_size`, `name`), with
 * a filter box and previous/next. The filter and page survive refreshes.
 */
function pagedList(view, path, columns, empty) {
  const state = {page: 1, name: ''};
  let refresh;
  const filter = h('input', {type: 'search', placeholder: 'Filter by name', 'aria-label': 'Filter by name',
    oninput: () => { state.name = filter.value; state.page = 1; refresh(); }});
  view.add(h('div', {class: 'toolbar'}, filter));
  const run = view.live(async () => {
    const query = () => '?page=' + state.page + '&page_size=' + PAGE_SIZE + '&name=' + enc(state.name) +
      '&use_regex=false&sort=name';
    let result;
    try {
      result = await api.get(path + query());
    } catch (e) {
      // The list shrank under the page being shown: back to the first.
      if (e.status !== 400 || state.page === 1) throw e;
      state.page = 1;
      result = await api.get(path + query());
    }
    const pages = Math.max(1, result.page_count || 1);
    const pager = h('div', {class: 'pager'},
      h('span', {}, 'Showing ' + num(result.item_count) + ' of ' + num(result.filtered_count) +
        (result.filtered_count !== result.total_count ? ' (' + num(result.total_count) + ' in all)' : '')),
      pages > 1 ? [
        h('button', {type: 'button', disabled: state.page <= 1,
          onclick: () => { state.page--; refresh(); }}, 'Previous'),
        h('span', {}, 'page ' + state.page + ' of ' + pages),
        h('button', {type: 'button', disabled: state.page >= pages,
          onclick: () => { state.page++; refresh(); }}, 'Next'),
      ] : null);
    return h('div', {}, pager, table(columns, result.items, empty));
  });
  refresh = () => view.refresh();
  return run;
}

/** The vhost names the user may see, for the forms' vhost fields. */
async function vhostNames() {
  const vhosts = await api.get('/vhosts');
  return vhosts.map(v => v.name);
}

const pages = {};

pages.overview = async view => {
  view.add(h('h2', {}, 'Overview'));
  view.live(async () => {
    const [overview, nodes, history] = await Promise.all([
      api.get('/overview'), api.get('/nodes').catch(() => []), api.get('/rates/history')]);
    const totals = overview.object_totals || {};
    const queued = overview.queue_totals || {};
    const cards = [
      ['Connections', totals.connections, '#/connections'], ['Channels', totals.channels, '#/channels'],
      ['Exchanges', totals.exchanges, '#/exchanges'], ['Queues', totals.queues, '#/queues'],
      ['Consumers', totals.consumers], ['Ready', queued.messages_ready],
      ['Unacked', queued.messages_unacknowledged], ['Total messages', queued.messages],
    ].filter(([, value]) => value !== undefined).map(([label, value, href]) => h(href ? 'a' : 'div', {class: 'card', href},
      h('span', {class: 'value'}, num(value || 0)), h('span', {class: 'label'}, label)));
    const charts = history.length ? h('div', {class: 'charts'},
      chart('Queued messages', [['messages_ready', 'Ready', '#e8a33d'],
        ['messages_unacknowledged', 'Unacked', '#3d7be8']], history, v => num(Math.round(v * 10) / 10)),
      chart('Message rates', [['publish', 'Publish', '#2f9e44'], ['deliver_get', 'Deliver / get', '#3d7be8'],
        ['ack', 'Ack', '#9c36b5'], ['confirm', 'Confirm', '#e8a33d']], history, rate)) : null;
    return h('div', {}, h('div', {class: 'cards'}, cards), charts, nodes.map(node => nodePanel(node, overview)));
  });
};

function nodePanel(node, overview) {
  const alarm = on => on ? h('span', {class: 'badge alarm'}, 'alarm') : h('span', {class: 'badge ok'}, 'ok');
  const meter = (used, limit) => {
    const bar = h('span', {class: 'fill'});
    bar.style.width = Math.min(100, limit ? (used / limit) * 100 : 0).toFixed(1) + '%';
    return h('span', {class: 'meter'}, bar);
  };
  return h('section', {class: 'panel node'}, h('h3', {}, 'Node ' + node.name),
    facts([
      ['Version', overview.product_name + ' ' + overview.product_version],
      ['Uptime', duration(node.uptime || 0)],
      ['Memory', h('span', {}, meter(node.mem_used, node.mem_limit),
        bytes(node.mem_used) + ' of ' + bytes(node.mem_limit) + ' high watermark ', alarm(node.mem_alarm))],
      ['Free disk', h('span', {}, bytes(node.disk_free) + ' (limit ' + bytes(node.disk_free_limit) + ') ',
        alarm(node.disk_free_alarm))],
      ['File descriptors', num(node.fd_used) + ' of ' + num(node.fd_total)],
      ['Listeners', (overview.listeners || []).map(l => l.protocol + ' ' + l.ip_address + ':' + l.port).join(', ')],
    ]));
}

pages.connections = async view => {
  view.add(h('h2', {}, 'Connections'));
  pagedList(view, '/connections', [
    ['Name', c => link('connections', c.name)],
    ['User', c => c.user], ['Virtual host', c => c.vhost],
    ['Client', c => ((c.client_properties || {}).product || '') + ' ' + ((c.client_properties || {}).version || '')],
    ['State', c => c.state], ['TLS', c => c.ssl ? 'yes' : ''],
    ['Channels', c => num(c.channels), 'num'],
    ['From client', c => bytes((c.recv_oct_details || {}).rate || 0) + '/s', 'num'],
    ['To client', c => bytes((c.send_oct_details || {}).rate || 0) + '/s', 'num'],
  ], 'No connections.');
};

pages.connection = async (view, name) => {
  view.add(h('h2', {}, 'Connection ', h('span', {class: 'name'}, name)));
  view.live(async () => {
    const [c, channels] = await Promise.all([
      api.get('/connections/' + enc(name)), api.get('/connections/' + enc(name) + '/channels')]);
    return h('div', {}, facts([
      ['User', c.user], ['Virtual host', c.vhost], ['Protocol', c.protocol], ['State', c.state],
      ['Client', JSON.stringify(c.client_properties || {})], ['Peer', c.peer_host + ':' + c.peer_port],
      ['Heartbeat', c.timeout + ' s'], ['Frame max', num(c.frame_max) + ' bytes'],
      ['Channel max', num(c.channel_max)], ['Received', bytes(c.recv_oct)], ['Sent', bytes(c.send_oct)],
    ]), h('h3', {}, 'Channels'), channelTable(channels));
  });
  view.add(form('Close this connection', [
    {name: 'reason', label: 'Reason', value: 'Closed via management plugin'},
  ], 'Force close', async values => {
    await api.del('/connections/' + enc(name), {'X-Reason': values.reason});
    location.hash = '#/connections';
    return 'Connection closed.';
  }));
};

function channelTable(channels) {
  return table([
    ['Channel', c => c.name], ['User', c => c.user], ['Virtual host', c => c.vhost],
    ['Mode', c => (c.confirm ? 'C' : '') + (c.transactional ? 'T' : '')],
    ['Prefetch', c => num(c.prefetch_count), 'num'], ['Unacked', c => num(c.messages_unacknowledged), 'num'],
    ['Consumers', c => num(c.consumer_count), 'num'],
    ['Publish', c => statRate(c, 'publish'), 'num'], ['Deliver / get', c => statRate(c, 'deliver_get'), 'num'],
    ['Ack', c => statRate(c, 'ack'), 'num'],
  ], channels, 'No channels.');
}

pages.channels = async view => {
  view.add(h('h2', {}, 'Channels'));
  view.live(async () => channelTable(await api.get('/channels')));
};
