// The application: logging in, the navigation, which page a URL shows, and refreshing it.
'use strict';

/** How often the page shown is refreshed from the API (RabbitMQ's UI: 5 s). */
const REFRESH_MS = 5000;

/** URL fragment -> page; captured parts are percent-decoded and passed to the page. */
const ROUTES = [
  [/^#?\/?$/, pages.overview],
  [/^#\/overview$/, pages.overview],
  [/^#\/connections$/, pages.connections],
  [/^#\/connections\/([^/]+)$/, pages.connection],
  [/^#\/channels$/, pages.channels],
  [/^#\/exchanges$/, pages.exchanges],
  [/^#\/exchanges\/([^/]+)\/([^/]+)$/, pages.exchange],
  [/^#\/queues$/, pages.queues],
  [/^#\/queues\/([^/]+)\/([^/]+)$/, pages.queue],
  [/^#\/users$/, pages.users, true],
  [/^#\/users\/([^/]+)$/, pages.user, true],
  [/^#\/vhosts$/, pages.vhosts, true],
  [/^#\/policies$/, pages.policies],
  [/^#\/definitions$/, pages.definitions, true],
];

const TABS = [
  ['#/', 'Overview'], ['#/connections', 'Connections'], ['#/channels', 'Channels'],
  ['#/exchanges', 'Exchanges'], ['#/queues', 'Queues'], ['#/users', 'Users', true],
  ['#/vhosts', 'Virtual hosts', true], ['#/policies', 'Policies'], ['#/definitions', 'Definitions', true],
];

const app = {
  view: null,
  user: null,

  async start() {
    if (!api.credentials) return this.loginPage();
    try {
      this.user = await api.get('/whoami');
    } catch (e) {
      return this.logout(e.status === 401 ? null : e.message);
    }
    const tags = [].concat(this.user.tags || []);
    this.admin = tags.includes('administrator');
    document.getElementById('nav').replaceChildren(...TABS.filter(([, , admin]) => !admin || this.admin)
      .map(([href, label]) => h('a', {href}, label)));
    document.getElementById('who').replaceChildren(h('span', {}, 'User ' + this.user.name),
      h('button', {type: 'button', onclick: () => this.logout()}, 'Log out'));
    window.addEventListener('hashchange', () => this.show());
    setInterval(() => {
      if (this.view && !document.hidden) this.view.refresh();
    }, REFRESH_MS);
    return this.show();
  },

  async show() {
    const hash = location.hash || '#/';
    const main = document.getElementById('main');
    main.replaceChildren();
    this.view = new View(main);
    for (const a of document.querySelectorAll('#nav a')) {
      const href = a.getAttribute('href');
      a.classList.toggle('current', href === '#/' ? hash === '#/' : hash.startsWith(href));
    }
    const route = ROUTES.find(([pattern]) => pattern.test(hash));
    if (!route) return main.append(h('p', {class: 'error'}, 'No such page.'));
    if (route[2] && !this.admin) return main.append(h('p', {class: 'error'}, 'Only administrators see this page.'));
    const parts = hash.match(route[0]).slice(1).map(decodeURIComponent);
    try {
      await route[1](this.view, ...parts);
    } catch (e) {
      main.append(h('p', {class: 'error'}, e.message));
    }
  },

  loginPage(message) {
    document.getElementById('nav').replaceChildren();
    document.getElementById('who').replaceChildren();
    const main = document.getElementById('main');
    const error = h('p', {class: 'error', role: 'alert'}, message || '');
    const username = h('input', {id: 'username', name: 'username', autocomplete: 'username', required: true});
    const password = h('input', {id: 'password', name: 'password', type: 'password', autocomplete: 'current-password'});
    const login = h('form', {class: 'panel login'}, h('h2', {}, 'Log in'),
      h('div', {class: 'field'}, h('label', {for: 'username'}, 'Username'), username),
      h('div', {class: 'field'}, h('label', {for: 'password'}, 'Password'), password),
      h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Login')), error);
    login.addEventListener('submit', async event => {
      event.preventDefault();
      api.login(username.value, password.value);
      try {
        await api.get('/whoami');
      } catch (e) {
        api.credentials = null;
        // The API's reason: "Login failed", or "Not management user".
        error.textContent = e.message;
        return;
      }
      sessionStorage.setItem('lepus.credentials', api.credentials);
      location.reload();
    });
    main.replaceChildren(login);
    username.focus();
  },

  logout(message) {
    sessionStorage.removeItem('lepus.credentials');
    api.credentials = null;
    if (message === undefined) return location.reload();
    this.view = null;
    return this.loginPage(message);
  },
};

app.start();
