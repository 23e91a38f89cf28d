// The pieces every page is built from: building elements, calling the API, formatting
// numbers, tables, forms and charts. Data from the broker is only ever set as text (never as
// HTML), so a queue named "<img onerror=...>" is shown, not run.
'use strict';

/** Builds an element: h('a', {href: '#/queues', class: 'x'}, 'text', child, [more]). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    // An input's value attribute is its default, which a form's reset() restores.
    else if (key === 'value' && tag !== 'input') el.value = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const enc = encodeURIComponent;

/** The HTTP API, with the logged-in user's credentials. */
const api = {
  credentials: sessionStorage.getItem('lepus.credentials'),

  login(username, password) {
    // btoa takes Latin-1 only: encode the UTF-8 bytes of the pair first.
    const bytes = new TextEncoder().encode(username + ':' + password);
    this.credentials = btoa(String.fromCharCode(...bytes));
  },

  async call(method, path, body, headers) {
    const init = {
      method,
      headers: Object.assign({
        'Authorization': 'Basic ' + this.credentials,
        // Tells the API not to ask the browser for a password itself on a 401.
        'X-Requested-With': 'XMLHttpRequest',
      }, headers || {}),
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch('/api' + path, init);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (!response.ok) {
      const error = new Error((data && data.reason) || response.status + ' ' + response.statusText);
      error.status = response.status;
      throw error;
    }
    return data;
  },
  get(path) { return this.call('GET', path); },
  put(path, body) { return this.call('PUT', path, body === undefined ? {} : body); },
  post(path, body) { return this.call('POST', path, body === undefined ? {} : body); },
  del(path, headers) { return this.call('DELETE', path, undefined, headers); },
};

/** 1234567 -> "1,234,567"; absent -> "". */
function num(value) {
  return typeof value === 'number' ? value.toLocaleString('en') : '';
}

/** A rate per second, with one decimal below 100. */
function rate(value) {
  if (typeof value !== 'number') return '';
  return (value < 100 ? value.toFixed(1) : Math.round(value).toLocaleString('en')) + '/s';
}

/** The rate of one message_stats field of an object. */
function statRate(object, field) {
  const stats = object && object.message_stats;
  const details = stats && stats[field + '_details'];
  return rate(details ? details.rate : 0);
}

function bytes(value) {
  if (typeof value !== 'number') return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
  return (i === 0 ? value : value.toFixed(1)) + ' ' + units[i];
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
}

/** "" for the default exchange, as RabbitMQ's UI shows it. */
function exchangeLabel(name) {
  return name === '' ? '(AMQP default)' : name;
}

/** The link to an object's page: kind is 'queues', 'exchanges', 'connections' or 'users'. */
function link(kind, ...parts) {
  const name = parts[parts.length - 1];
  const text = kind === 'exchanges' ? exchangeLabel(name) : name;
  return h('a', {href: '#/' + kind + '/' + parts.map(p => enc(p === '' ? 'amq.default' : p)).join('/')}, text);
}

/**
 * A table: columns are [title, row => cell, 'num' for right-aligned numbers]; rows are the
 * API's objects.
 */
function table(columns, rows, empty) {
  if (!rows || rows.length === 0) return h('p', {class: 'empty'}, empty || 'Nothing to show.');
  return h('table', {},
    h('thead', {}, h('tr', {}, columns.map(([title, , kind]) => h('th', {class: kind}, title)))),
    h('tbody', {}, rows.map(row => h('tr', {},
      columns.map(([, cell, kind]) => h('td', {class: kind}, cell(row)))))));
}

/** A list of label: value pairs. */
function facts(pairs) {
  return h('dl', {class: 'facts'}, pairs.filter(p => p).map(([label, value]) =>
    [h('dt', {}, label), h('dd', {}, value === '' || value === undefined ? '\u2014' : value)]));
}

/** Arguments or a definition, as "key: value" lines. */
function args(object) {
  const entries = Object.entries(object || {});
  if (entries.length === 0) return '';
  return h('span', {class: 'args'}, entries.map(([k, v]) =>
    h('span', {}, k + ': ' + (typeof v === 'string' ? v : JSON.stringify(v)))));
}

/** A short notice at the bottom of the page. */
function toast(message, isError) {
  const el = document.getElementById('toast');
  el.textContent = message;
  el.className = isError ? 'show error' : 'show';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.className = ''; }, isError ? 8000 : 4000);
}

/**
 * A form. Fields are {name, label, type ('text', 'password', 'number', 'textarea', 'select',
 * 'checkbox', 'json', 'file'), options, value, placeholder, required}. On submit, onSubmit gets
 * the values ('json' fields parsed) and what it returns is shown; an error is shown as one.
 */
function form(title, fields, submitLabel, onSubmit) {
  const inputs = {};
  const rows = fields.map(f => {
    let input;
    const id = 'f-' + Math.random().toString(36).slice(2);
    if (f.type === 'select') {
      input = h('select', {id, name: f.name},
        f.options.map(o => Array.isArray(o) ? h('option', {value: o[0]}, o[1]) : h('option', {value: o}, o)));
      if (f.value !== undefined) input.value = f.value;
    } else if (f.type === 'textarea' || f.type === 'json') {
      input = h('textarea', {id, name: f.name, rows: f.rows || 3, placeholder: f.placeholder}, f.value || '');
    } else if (f.type === 'checkbox') {
      input = h('input', {id, name: f.name, type: 'checkbox'});
      input.checked = !!f.value;
    } else {
      input = h('input', {id, name: f.name, type: f.type || 'text', placeholder: f.placeholder,
        required: f.required, value: f.value, min: f.min, accept: f.accept, autocomplete: f.autocomplete});
    }
    inputs[f.name] = [f, input];
    return h('div', {class: 'field'}, h('label', {for: id}, f.label), input);
  });
  const button = h('button', {type: 'submit'}, submitLabel);
  const el = h('form', {class: 'panel'}, title ? h('h3', {}, title) : null, rows, h('div', {class: 'actions'}, button));
  el.addEventListener('submit', async event => {
    event.preventDefault();
    const values = {};
    try {
      for (const [name, [f, input]] of Object.entries(inputs)) {
        if (f.type === 'checkbox') values[name] = input.checked;
        else if (f.type === 'number') values[name] = input.value === '' ? undefined : Number(input.value);
        else if (f.type === 'file') values[name] = input.files[0];
        else if (f.type === 'json') values[name] = parseJson(f.label, input.value);
        else values[name] = input.value;
      }
      button.disabled = true;
      const message = await onSubmit(values, el);
      if (message) toast(message);
    } catch (e) {
      toast(e.message, true);
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

function parseJson(label, text) {
  if (text.trim() === '') return {};
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error();
    return value;
  } catch (e) {
    throw new Error(label + ' must be a JSON object, such as {"x-max-length": 1000}');
  }
}

/** A button that asks first, runs action, and shows what it returns. */
function button(label, question, action, kind) {
  return h('button', {type: 'button', class: kind || '', onclick: async event => {
    if (question && !window.confirm(question)) return;
    event.target.disabled = true;
    try {
      const message = await action();
      if (message) toast(message);
    } catch (e) {
      toast(e.message, true);
    } finally {
      event.target.disabled = false;
    }
  }}, label);
}

const SVG = 'http://www.w3.org/2000/svg';

/** The smallest of 2, 5 and 10 times a power of ten at or above value (at least 2). */
function niceCeiling(value) {
  let step = 1;
  while (step * 10 < value) step *= 10;
  for (const m of [2, 5, 10]) if (step * m >= value) return step * m;
  return step * 10;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

/**
 * A line chart of points over time: series are [field, label, colour]; points are objects
 * with a timestamp (ms) and a number per field.
 */
function chart(title, series, points, format) {
  const width = 560, height = 150, left = 56, bottom = 18;
  const values = points.flatMap(p => series.map(([f]) => Number(p[f]) || 0));
  const top = niceCeiling(Math.max(0, ...values));
  const times = points.map(p => p.timestamp);
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const x = t => left + (t1 === t0 ? 0 : (t - t0) / (t1 - t0)) * (width - left - 4);
  const y = v => 4 + (1 - v / top) * (height - bottom - 8);
  const plot = svg('svg', {viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', 'aria-label': title});
  for (const frac of [0, 0.5, 1]) {
    plot.append(svg('line', {x1: left, x2: width - 4, y1: y(top * frac), y2: y(top * frac), class: 'grid'}));
    const label = svg('text', {x: left - 6, y: y(top * frac) + 4, 'text-anchor': 'end', class: 'axis'});
    label.textContent = format(top * frac);
    plot.append(label);
  }
  if (points.length > 1) {
    const span = svg('text', {x: width - 4, y: height - 2, 'text-anchor': 'end', class: 'axis'});
    span.textContent = 'last ' + duration(t1 - t0);
    plot.append(span);
  }
  for (const [field, , colour] of series) {
    const line = points.map(p => x(p.timestamp).toFixed(1) + ',' + y(Number(p[field]) || 0).toFixed(1)).join(' ');
    plot.append(svg('polyline', {points: line, fill: 'none', stroke: colour, 'stroke-width': 2}));
  }
  const last = points[points.length - 1] || {};
  const legend = h('ul', {class: 'legend'}, series.map(([field, label, colour]) => {
    const swatch = h('span', {class: 'swatch'});
    swatch.style.background = colour;
    return h('li', {}, swatch, label + ' ', h('strong', {}, format(Number(last[field]) || 0)));
  }));
  return h('figure', {class: 'panel'}, h('figcaption', {}, title), points.length ? plot : h('p', {class: 'empty'},
    'Rates appear after two samples (every few seconds).'), legend);
}
