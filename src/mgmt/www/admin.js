// The administrator's pages: users and their permissions, virtual hosts, policies, and
// definitions export and import.
'use strict';

const TAGS = ['administrator', 'monitoring', 'policymaker', 'management', 'impersonator'];

pages.users = async view => {
  view.add(h('h2', {}, 'Users'));
  view.live(async () => {
    const [users, permissions] = await Promise.all([api.get('/users'), api.get('/permissions')]);
    return h('div', {}, table([
      ['Name', u => link('users', u.name)],
      ['Tags', u => (Array.isArray(u.tags) ? u.tags : String(u.tags || '').split(',')).join(', ')],
      ['Can access virtual hosts', u => permissions.filter(p => p.user === u.name).map(p => p.vhost).join(', ') || 'No access'],
      ['Has password', u => u.password_hash ? 'yes' : 'no'],
    ], users), h('h3', {}, 'Permissions'), permissionTable(permissions, view));
  });
  view.add(form('Add a user', [
    {name: 'name', label: 'Username', required: true, autocomplete: 'off'},
    {name: 'password', label: 'Password', type: 'password', autocomplete: 'new-password'},
    {name: 'tags', label: 'Tags', placeholder: TAGS.join(', ')},
  ], 'Add user', async (v, el) => {
    await api.put('/users/' + enc(v.name), {password: v.password, tags: v.tags});
    el.reset();
    await view.refresh();
    return 'User ' + v.name + ' added.';
  }));
  view.add(await permissionForm(view, null));
};

function permissionTable(permissions, view) {
  return table([
    ['User', p => link('users', p.user)], ['Virtual host', p => p.vhost],
    ['Configure', p => p.configure], ['Write', p => p.write], ['Read', p => p.read],
    ['', p => button('Clear', 'Clear the permissions of ' + p.user + ' in ' + p.vhost + '?', async () => {
      await api.del('/permissions/' + enc(p.vhost) + '/' + enc(p.user));
      await view.refresh();
      return 'Permissions cleared.';
    })],
  ], permissions, 'No permissions.');
}

async function permissionForm(view, user) {
  const names = await vhostNames();
  const fields = [vhostField(names)];
  if (!user) fields.unshift({name: 'user', label: 'User', required: true});
  return form('Set permissions', fields.concat([
    {name: 'configure', label: 'Configure regexp', value: '.*'},
    {name: 'write', label: 'Write regexp', value: '.*'},
    {name: 'read', label: 'Read regexp', value: '.*'},
  ]), 'Set permission', async v => {
    const name = user || v.user;
    await api.put('/permissions/' + enc(v.vhost) + '/' + enc(name),
      {configure: v.configure, write: v.write, read: v.read});
    await view.refresh();
    return 'Permissions of ' + name + ' in ' + v.vhost + ' set.';
  });
}

pages.user = async (view, name) => {
  view.add(h('h2', {}, 'User ', h('span', {class: 'name'}, name)));
  view.live(async () => {
    const [user, permissions, topic] = await Promise.all([api.get('/users/' + enc(name)),
      api.get('/users/' + enc(name) + '/permissions'), api.get('/users/' + enc(name) + '/topic-permissions')]);
    return h('div', {}, facts([['Tags', [].concat(user.tags || []).join(', ')]]),
      h('h3', {}, 'Permissions'), permissionTable(permissions, view),
      h('h3', {}, 'Topic permissions'), table([
        ['Virtual host', p => p.vhost], ['Exchange', p => p.exchange], ['Write', p => p.write], ['Read', p => p.read],
      ], topic, 'No topic permissions.'));
  });
  view.add(await permissionForm(view, name));
  view.add(form('Update this user', [
    {name: 'password', label: 'New password (empty: keep it)', type: 'password', autocomplete: 'new-password'},
    {name: 'tags', label: 'Tags', placeholder: TAGS.join(', ')},
  ], 'Update user', async v => {
    const body = {tags: v.tags};
    if (v.password) body.password = v.password;
    else {
      // The hash is kept with its algorithm (an imported SHA-512 or MD5 one stays one).
      const user = await api.get('/users/' + enc(name));
      body.password_hash = user.password_hash;
      body.hashing_algorithm = user.hashing_algorithm;
    }
    await api.put('/users/' + enc(name), body);
    await view.refresh();
    return 'User ' + name + ' updated.';
  }));
  view.add(h('div', {class: 'panel danger'}, h('h3', {}, 'Delete this user'),
    button('Delete', 'Delete the user ' + name + '?', async () => {
      await api.del('/users/' + enc(name));
      location.hash = '#/users';
      return 'User ' + name + ' deleted.';
    }, 'danger')));
};

pages.vhosts = async view => {
  view.add(h('h2', {}, 'Virtual hosts'));
  view.live(async () => table([
    ['Name', v => v.name], ['Description', v => v.description || ''],
    ['Ready', v => num(v.messages_ready), 'num'], ['Unacked', v => num(v.messages_unacknowledged), 'num'],
    ['Total', v => num(v.messages), 'num'],
    ['Publish', v => statRate(v, 'publish'), 'num'], ['Deliver / get', v => statRate(v, 'deliver_get'), 'num'],
    ['', v => button('Delete', 'Delete the virtual host ' + v.name + ' and everything in it?', async () => {
      await api.del('/vhosts/' + enc(v.name));
      await view.refresh();
      return 'Virtual host ' + v.name + ' deleted.';
    }, 'danger')],
  ], await api.get('/vhosts')));
  view.add(form('Add a virtual host', [
    {name: 'name', label: 'Name', required: true},
    {name: 'description', label: 'Description'},
    {name: 'tags', label: 'Tags'},
  ], 'Add virtual host', async (v, el) => {
    await api.put('/vhosts/' + enc(v.name), {description: v.description, tags: v.tags});
    el.reset();
    await view.refresh();
    return 'Virtual host ' + v.name + ' added.';
  }));
};

pages.policies = async view => {
  view.add(h('h2', {}, 'Policies'));
  const policyTable = (path, kind, rows) => table([
    ['Virtual host', p => p.vhost], ['Name', p => p.name], ['Pattern', p => p.pattern],
    ['Apply to', p => p['apply-to']], ['Definition', p => args(p.definition)], ['Priority', p => num(p.priority), 'num'],
    ['', p => button('Delete', 'Delete the policy ' + p.name + '?', async () => {
      await api.del(path + '/' + enc(p.vhost) + '/' + enc(p.name));
      await view.refresh();
      return 'Policy ' + p.name + ' deleted.';
    }, 'danger')],
  ], rows, 'No ' + kind + ' yet.');
  view.live(async () => {
    const [user, operator] = await Promise.all([api.get('/policies'), api.get('/operator-policies').catch(() => [])]);
    return h('div', {}, h('h3', {}, 'User policies'), policyTable('/policies', 'policies', user),
      h('h3', {}, 'Operator policies'), policyTable('/operator-policies', 'operator policies', operator));
  });
  const names = await vhostNames();
  view.add(form('Add or update a policy', [
    vhostField(names),
    {name: 'name', label: 'Name', required: true},
    {name: 'pattern', label: 'Pattern', required: true, placeholder: '^orders\\.'},
    {name: 'apply_to', label: 'Apply to', type: 'select', options: [['all', 'Exchanges and queues'], ['queues', 'Queues'], ['exchanges', 'Exchanges']]},
    {name: 'priority', label: 'Priority', type: 'number', value: 0},
    {name: 'definition', label: 'Definition', type: 'json', placeholder: '{"max-length": 1000, "dead-letter-exchange": "dlx"}'},
    {name: 'operator', label: 'Operator policy', type: 'checkbox'},
  ], 'Add / update policy', async (v, el) => {
    const path = (v.operator ? '/operator-policies/' : '/policies/') + enc(v.vhost) + '/' + enc(v.name);
    await api.put(path, {pattern: v.pattern, 'apply-to': v.apply_to, priority: v.priority || 0, definition: v.definition});
    el.reset();
    await view.refresh();
    return 'Policy ' + v.name + ' set.';
  }));
};

pages.definitions = async view => {
  view.add(h('h2', {}, 'Definitions'));
  view.add(h('section', {class: 'panel'}, h('h3', {}, 'Export'),
    h('p', {}, 'Users, virtual hosts, permissions, policies, queues, exchanges and bindings, as RabbitMQ exports them.'),
    button('Download broker definitions', null, async () => {
      const definitions = await api.get('/definitions');
      const blob = new Blob([JSON.stringify(definitions, null, 2)], {type: 'application/json'});
      const a = h('a', {href: URL.createObjectURL(blob), download: 'lepus-definitions.json'});
      document.body.append(a);
      a.click();
      a.remove();
      return 'Definitions exported.';
    })));
  view.add(form('Import', [
    {name: 'file', label: 'Definitions file (JSON, from Lepus or RabbitMQ)', type: 'file', accept: '.json,application/json', required: true},
  ], 'Upload broker definitions', async (v, el) => {
    const text = await v.file.text();
    let definitions;
    try { definitions = JSON.parse(text); } catch (e) { throw new Error('The file is not JSON: ' + e.message); }
    await api.post('/definitions', definitions);
    el.reset();
    return 'Your definitions were imported successfully.';
  }));
};
