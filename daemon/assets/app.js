// parkguard operator console. Plain ES2020, no build step, no third-party code.
// Data: the /api/v1 REST endpoints for snapshots, /api/v1/events (SSE) for changes.
'use strict';

const TZ = 'Asia/Shanghai';
const I18N = {
  zh: {
    product: '园区安全监测', username: '用户名', password: '密码', login: '登录', logout: '退出',
    lang_other: 'English', bad_login: '用户名或密码错误', rate_limited: '失败次数过多，请稍后再试',
    nav_alarms: '报警', nav_map: '地图', nav_kpi: '指标', nav_limits: '阈值', nav_audit: '审计',
    nav_unmapped: '未映射数据', nav_drill: '演练', silence: '消音', silenced: '已消音', enable_sound: '开启声音',
    disconnected: '实时连接中断，正在重连…', drill_note: '演练报警，非真实报警',
    active_alarms: '当前报警', no_alarms: '无报警', time: '时间', priority: '优先级', enterprise: '企业',
    point: '位号', name: '名称', condition: '类型', value: '数值', limit: '限值', state: '状态', actions: '操作',
    ack: '确认', shelve: '搁置', unshelve: '解除搁置', close: '消警', first: '首报',
    high: '高', medium: '中', low: '低',
    st_unack: '未确认', st_ack: '已确认', st_rtn_unack: '已恢复未确认', st_shelved: '已搁置',
    st_out_of_service: '停用', st_normal: '已恢复',
    ps_normal: '正常', ps_alarm_unack: '报警未确认', ps_alarm_ack: '报警已确认', ps_rtn_unack: '恢复未确认',
    ps_shelved: '搁置', ps_out_of_service: '停用', ps_fault: '故障', ps_novalue: '无数据',
    ack_title: '确认报警', shelve_title: '搁置报警', comment: '备注', reason: '原因（必填）',
    shelve_for: '搁置时长', cancel: '取消', confirm: '确定', reason_required: '请填写原因',
    cause: '原因', action_taken: '处置措施', close_title: '消警（原因 / 措施，用 / 分隔）',
    park: '园区', warn_none: '无预警', warn_blue: '蓝色', warn_yellow: '黄色', warn_orange: '橙色', warn_red: '红色',
    map_title: '园区地图', legend_normal: '正常', legend_alarm: '报警', legend_mask: '故障/屏蔽', legend_novalue: '无数据',
    trend: '近一小时趋势', alarm_history: '报警历史', quality: '质量', source_time: '采集时间',
    deliveries: '最近一次报警的通知投递', dl_channel: '通道', dl_status: '状态', dl_attempts: '尝试次数', dl_receipt: '回执', dl_at: '送达时间', dl_error: '最近错误',
    dl_pending: '待投递', dl_delivered: '已送达', dl_failed: '已放弃', no_deliveries: '无通知（未配置联动通道或无匹配路由）',
    out_of_service: '停用（维护）', return_to_service: '恢复使用',
    kpi_title: '报警指标', per10: '每10分钟报警数', floods: '报警泛滥次数', chattering: '振荡报警',
    top10: '前十位报警源', mix: '优先级构成', count: '次数',
    limits_title: '阈值调整', choose_point: '选择位号', load: '载入', current: '当前', new_value: '新值',
    save: '保存', versions: '历史版本', version: '版本', changed_by: '修改人', restore: '恢复此版本',
    saved: '已保存', engineer_only: '仅工程师可修改', on_delay: '延时报警(s)', off_delay: '延时恢复(s)',
    deadband: '死区', no_change: '没有改动',
    preview: '预演（历史回放）', preview_hours: '回放时长(h)', preview_title: '若采用新阈值：近期历史回放结果', readings: '回放读数',
    with_current: '现行阈值', with_candidate: '新阈值', alarms_n: '报警次数', time_in_alarm: '报警持续(s)', chattering_points: '振荡位号',
    first_alarm_delta: '首报时间变化(s)', class_title: '按类别批量调整', cls_enterprise: '企业', cls_kind: '类型', cls_gas: '气体',
    any: '（全部）', keep: '不变', matched: '匹配位号', apply_class: '批量保存',
    k_combustible: '可燃气体', k_toxic: '有毒气体', k_oxygen: '氧气', k_pressure: '压力', k_temperature: '温度', k_level: '液位', k_flow: '流量', k_other: '其他',
    audit_title: '审计日志', verify: '校验哈希链', chain_ok: '哈希链完整', chain_bad: '哈希链被篡改',
    who: '操作人', why: '原因', ip: '来源', what: '操作', target: '对象', before: '修改前', after: '修改后',
    unmapped_title: '未映射数据', source: '来源', key: '键', count_seen: '次数', last_seen: '最近', sample: '样例',
    drill_title: '演练报警', drill: '演练', none: '无',
  },
  en: {
    product: 'Park Safety Monitoring', username: 'Username', password: 'Password', login: 'Log in', logout: 'Log out',
    lang_other: '中文', bad_login: 'Wrong username or password', rate_limited: 'Too many failed logins; try later',
    nav_alarms: 'Alarms', nav_map: 'Map', nav_kpi: 'KPIs', nav_limits: 'Limits', nav_audit: 'Audit',
    nav_unmapped: 'Unmapped data', nav_drill: 'Drill', silence: 'Silence', silenced: 'Silenced', enable_sound: 'Enable sound',
    disconnected: 'Live connection lost, reconnecting…', drill_note: 'drill alarms, not real',
    active_alarms: 'Active alarms', no_alarms: 'No alarms', time: 'Time', priority: 'Priority', enterprise: 'Enterprise',
    point: 'Tag', name: 'Name', condition: 'Condition', value: 'Value', limit: 'Limit', state: 'State', actions: 'Actions',
    ack: 'Acknowledge', shelve: 'Shelve', unshelve: 'Unshelve', close: 'Close', first: 'FIRST',
    high: 'High', medium: 'Medium', low: 'Low',
    st_unack: 'Unacknowledged', st_ack: 'Acknowledged', st_rtn_unack: 'Returned, unack', st_shelved: 'Shelved',
    st_out_of_service: 'Out of service', st_normal: 'Normal',
    ps_normal: 'Normal', ps_alarm_unack: 'Alarm, unack', ps_alarm_ack: 'Alarm, ack', ps_rtn_unack: 'Returned, unack',
    ps_shelved: 'Shelved', ps_out_of_service: 'Out of service', ps_fault: 'Fault', ps_novalue: 'No data',
    ack_title: 'Acknowledge alarm', shelve_title: 'Shelve alarm', comment: 'Comment', reason: 'Reason (required)',
    shelve_for: 'Shelve for', cancel: 'Cancel', confirm: 'OK', reason_required: 'A reason is required',
    cause: 'Cause', action_taken: 'Action taken', close_title: 'Close alarm (cause / action, separated by /)',
    park: 'Park', warn_none: 'none', warn_blue: 'blue', warn_yellow: 'yellow', warn_orange: 'orange', warn_red: 'red',
    map_title: 'Park map', legend_normal: 'normal', legend_alarm: 'alarm', legend_mask: 'fault / masked', legend_novalue: 'no data',
    trend: 'Last hour', alarm_history: 'Alarm history', quality: 'Quality', source_time: 'Source time',
    deliveries: 'Notifications of the latest alarm', dl_channel: 'Channel', dl_status: 'Status', dl_attempts: 'Attempts', dl_receipt: 'Receipt', dl_at: 'Delivered', dl_error: 'Last error',
    dl_pending: 'pending', dl_delivered: 'delivered', dl_failed: 'given up', no_deliveries: 'No notifications (no linkage channel or no matching route)',
    out_of_service: 'Out of service', return_to_service: 'Return to service',
    kpi_title: 'Alarm KPIs', per10: 'Alarms per 10 min', floods: 'Floods', chattering: 'Chattering',
    top10: 'Top-10 bad actors', mix: 'Priority mix', count: 'Count',
    limits_title: 'Limits', choose_point: 'Point', load: 'Load', current: 'Current', new_value: 'New',
    save: 'Save', versions: 'Versions', version: 'Version', changed_by: 'Changed by', restore: 'Restore',
    saved: 'Saved', engineer_only: 'Engineers only', on_delay: 'On-delay (s)', off_delay: 'Off-delay (s)',
    deadband: 'Deadband', no_change: 'Nothing changed',
    preview: 'Preview (replay history)', preview_hours: 'Replay (h)', preview_title: 'What the new limits would have done on recent history', readings: 'Readings replayed',
    with_current: 'Current limits', with_candidate: 'New limits', alarms_n: 'Alarms', time_in_alarm: 'Time in alarm (s)', chattering_points: 'Chattering points',
    first_alarm_delta: 'First alarm shift (s)', class_title: 'Change a class of points', cls_enterprise: 'Enterprise', cls_kind: 'Kind', cls_gas: 'Gas',
    any: '(any)', keep: 'keep', matched: 'Matched points', apply_class: 'Save for the class',
    k_combustible: 'Combustible gas', k_toxic: 'Toxic gas', k_oxygen: 'Oxygen', k_pressure: 'Pressure', k_temperature: 'Temperature', k_level: 'Level', k_flow: 'Flow', k_other: 'Other',
    audit_title: 'Audit log', verify: 'Verify hash chain', chain_ok: 'Hash chain intact', chain_bad: 'Hash chain broken',
    who: 'Who', why: 'Reason', ip: 'From', what: 'What', target: 'Target', before: 'Before', after: 'After',
    unmapped_title: 'Unmapped data', source: 'Source', key: 'Key', count_seen: 'Count', last_seen: 'Last seen', sample: 'Sample',
    drill_title: 'Drill alarms', drill: 'Drill', none: 'none',
  },
};
const ROLES = ['viewer', 'operator', 'engineer', 'admin'];

const S = {
  lang: localStorage.getItem('pg_lang') || 'zh',
  me: null, park: null, points: new Map(), alarms: new Map(), warnings: null,
  es: null, silenced: false, audio: null, beepTimer: null, route: '',
};

const $ = (sel, root = document) => root.querySelector(sel);
const t = (k) => (I18N[S.lang] && I18N[S.lang][k]) || I18N.en[k] || k;
function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
const fmtTime = (ms) => ms == null ? '—' : new Intl.DateTimeFormat(S.lang === 'zh' ? 'zh-CN' : 'en-GB', {
  timeZone: TZ, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
}).format(new Date(ms));
const fmtNum = (v) => v == null || !isFinite(v) ? '—' : (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));
const hasRole = (r) => S.me && ROLES.indexOf(S.me.role) >= ROLES.indexOf(r);

function csrf() {
  const m = document.cookie.match(/(?:^|;\s*)pg_csrf=([^;]+)/);
  return m ? m[1] : (S.me && S.me.csrf) || '';
}

async function api(method, path, body) {
  const opt = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') opt.headers['X-CSRF-Token'] = csrf();
  if (body !== undefined) { opt.headers['Content-Type'] = 'application/json'; opt.body = JSON.stringify(body); }
  const r = await fetch(path, opt);
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401 && path !== '/api/v1/session/login') { showLogin(); }
  if (!r.ok) { const e = new Error((data && data.message) || r.statusText); e.status = r.status; e.data = data; throw e; }
  return data;
}

// ------------------------------------------------------------------ language, clock
function applyLang() {
  document.documentElement.lang = S.lang === 'zh' ? 'zh-CN' : 'en';
  document.querySelectorAll('[data-i18n]').forEach((el) => { el.textContent = t(el.dataset.i18n); });
  updateSilence();
}
function toggleLang() {
  S.lang = S.lang === 'zh' ? 'en' : 'zh';
  localStorage.setItem('pg_lang', S.lang);
  applyLang();
  if (S.me) { renderBanner(); render(); }
}
setInterval(() => { const c = $('#clock'); if (c) c.textContent = fmtTime(Date.now()) + ' (UTC+8)'; }, 1000);

// ------------------------------------------------------------------ login
function showLogin() {
  if (S.es) { S.es.close(); S.es = null; }
  S.me = null;
  $('#app').hidden = true;
  $('#login').hidden = false;
  stopBeep();
}
async function doLogin(ev) {
  ev.preventDefault();
  ensureAudio();
  $('#login-error').textContent = '';
  try {
    S.me = await api('POST', '/api/v1/session/login', { username: $('#username').value, password: $('#password').value });
    $('#password').value = '';
    await start();
  } catch (e) {
    $('#login-error').textContent = e.status === 429 ? t('rate_limited') : e.status === 401 ? t('bad_login') : e.message;
  }
}
async function doLogout() {
  try { await api('POST', '/api/v1/session/logout'); } catch (_) { /* already gone */ }
  showLogin();
}

// ------------------------------------------------------------------ data
async function loadSnapshot() {
  const [park, points, alarms, warnings] = await Promise.all([
    api('GET', '/api/v1/park'), api('GET', '/api/v1/points'), api('GET', '/api/v1/alarms/active'), api('GET', '/api/v1/warnings'),
  ]);
  S.park = park;
  S.points = new Map(points.map((p) => [p.tag, p]));
  S.alarms = new Map(alarms.map((a) => [a.id, a]));
  S.warnings = warnings;
}

function connectEvents() {
  if (S.es) S.es.close();
  const es = new EventSource('/api/v1/events');
  S.es = es;
  es.addEventListener('open', () => { $('#conn').hidden = true; });
  es.addEventListener('error', () => {
    $('#conn').hidden = false;
    // The browser retries by itself unless the server refused (e.g. 401 after a restart):
    // then check the session (a 401 shows the login page) and start over from a snapshot.
    if (es.readyState === EventSource.CLOSED) {
      setTimeout(async () => {
        if (S.es !== es || !S.me) return;
        try { await api('GET', '/api/v1/session'); await loadSnapshot(); renderBanner(); connectEvents(); render(); } catch (_) { /* login page shown */ }
      }, 2000);
    }
  });
  es.addEventListener('alarm', (e) => {
    const a = JSON.parse(e.data);
    const known = S.alarms.get(a.id);
    if (a.state === 'normal') S.alarms.delete(a.id); else S.alarms.set(a.id, a);
    if (!known && a.state === 'unack' && !a.drill) S.silenced = false; // a new alarm re-arms the horn
    onAlarmsChanged();
  });
  es.addEventListener('point', (e) => {
    // A new value carries only the fields that change (tag, value, quality, times,
    // state); a state change carries the whole point. Merge either into what we hold.
    const u = JSON.parse(e.data);
    const p = Object.assign({}, S.points.get(u.tag), u);
    S.points.set(p.tag, p);
    updateMarker(p);
    if (S.route.startsWith('point/') && S.route.slice(6) === p.tag) renderPointHeader(p);
  });
  es.addEventListener('warning', (e) => { S.warnings = JSON.parse(e.data); renderBanner(); });
  es.addEventListener('limits', (e) => {
    // Someone changed limits: refresh the editor unless this user is editing it.
    const v = JSON.parse(e.data);
    if (S.route === 'limits/' + encodeURIComponent(v.tag) || S.route === 'limits/' + v.tag) {
      if (!$('#lim-diff-table')) render();
    }
  });
  es.addEventListener('audit', () => { if (S.route === 'audit') render(); });
  es.addEventListener('reset', async () => { await loadSnapshot(); renderBanner(); onAlarmsChanged(); });
}

function realAlarms() { return [...S.alarms.values()].filter((a) => !a.drill); }
function drillAlarms() { return [...S.alarms.values()].filter((a) => a.drill); }
function sortAlarms(v) {
  const pr = { high: 0, medium: 1, low: 2 };
  return v.sort((a, b) => (pr[a.priority] - pr[b.priority]) || (b.raised_ms - a.raised_ms) || (b.id - a.id));
}
function onAlarmsChanged() {
  $('#drill-banner').hidden = drillAlarms().length === 0 && S.route !== 'drill';
  updateSilence();
  if (S.route === 'alarms' || S.route === 'drill') render();
}

// ------------------------------------------------------------------ audible alarm (silence ≠ acknowledge)
function ensureAudio() {
  if (!S.audio) {
    try { S.audio = new (window.AudioContext || window.webkitAudioContext)(); } catch (_) { S.audio = null; }
  }
  if (S.audio && S.audio.state === 'suspended') S.audio.resume();
}
function beep() {
  if (!S.audio) return;
  const o = S.audio.createOscillator(); const g = S.audio.createGain();
  o.type = 'square'; o.frequency.value = 880; g.gain.value = 0.08;
  o.connect(g); g.connect(S.audio.destination);
  const now = S.audio.currentTime; o.start(now); o.stop(now + 0.35);
}
function stopBeep() { if (S.beepTimer) { clearInterval(S.beepTimer); S.beepTimer = null; } }
function updateSilence() {
  const unack = realAlarms().some((a) => a.state === 'unack' || a.state === 'rtn_unack');
  const sounding = unack && !S.silenced && S.me;
  const btn = $('#silence');
  btn.classList.toggle('armed', !!sounding);
  // Browsers keep audio off until the user interacts with the page (e.g. after a reload).
  const muted = sounding && (!S.audio || S.audio.state !== 'running');
  btn.dataset.muted = muted ? '1' : '0';
  btn.textContent = muted ? t('enable_sound') : S.silenced && unack ? t('silenced') : t('silence');
  btn.dataset.sounding = sounding ? '1' : '0';
  if (sounding && !S.beepTimer) { beep(); S.beepTimer = setInterval(beep, 1000); }
  if (!sounding) stopBeep();
}

// ------------------------------------------------------------------ banner
function renderBanner() {
  const w = S.warnings || { park: 'none', enterprises: [] };
  const names = new Map(((S.park && S.park.enterprises) || []).map((e) => [e.code, e.name]));
  const chip = (label, g, id) => `<span class="grade grade-${esc(g)}" id="${id}" data-grade="${esc(g)}">${esc(label)}: ${esc(t('warn_' + g))}</span>`;
  let html = chip(t('park'), w.park, 'grade-park');
  for (const e of w.enterprises.filter((x) => x.grade !== 'none')) {
    html += chip(names.get(e.code) || e.code, e.grade, 'grade-' + e.code);
  }
  $('#warnings-banner').innerHTML = html;
}

// ------------------------------------------------------------------ router
const VIEWS = {
  alarms: renderAlarms, map: renderMap, kpi: renderKpi, limits: renderLimits, audit: renderAudit,
  unmapped: renderUnmapped, drill: renderDrill, point: renderPoint,
};
function render() {
  const hash = location.hash.replace(/^#\/?/, '') || 'alarms';
  S.route = hash;
  const name = hash.split('/')[0];
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.getAttribute('href') === '#/' + name));
  $('#drill-banner').hidden = drillAlarms().length === 0 && name !== 'drill';
  (VIEWS[name] || renderAlarms)(hash.split('/').slice(1).map(decodeURIComponent));
}

// ------------------------------------------------------------------ alarm list
function alarmRowClass(a) {
  if (a.state === 'shelved' || a.state === 'out_of_service' || a.condition === 'fault' || a.condition === 'stale') return 'row-mask';
  if (a.state === 'unack') return 'row-alarm row-unack';
  if (a.state === 'rtn_unack') return 'row-rtn row-unack';
  return 'row-alarm';
}
function alarmTable(list, actions) {
  if (!list.length) return `<p class="empty">${esc(t('no_alarms'))}</p>`;
  const canOp = hasRole('operator');
  const rows = list.map((a) => {
    const p = S.points.get(a.point);
    const btns = !actions ? '' : [
      (a.state === 'unack' || a.state === 'rtn_unack') ? `<button data-act="ack" data-id="${a.id}" ${canOp ? '' : 'disabled'}>${esc(t('ack'))}</button>` : '',
      a.state !== 'shelved' ? `<button data-act="shelve" data-id="${a.id}" ${canOp ? '' : 'disabled'}>${esc(t('shelve'))}</button>` : `<button data-act="unshelve" data-id="${a.id}" ${canOp ? '' : 'disabled'}>${esc(t('unshelve'))}</button>`,
      `<button data-act="close" data-id="${a.id}" ${canOp ? '' : 'disabled'}>${esc(t('close'))}</button>`,
    ].join(' ');
    return `<tr id="alarm-${a.id}" class="${alarmRowClass(a)}" data-state="${esc(a.state)}">
      <td>${a.first ? `<span class="first">${esc(t('first'))}</span>` : ''}</td>
      <td class="num">${esc(fmtTime(a.raised_ms))}</td>
      <td><span class="prio prio-${esc(a.priority)}">${esc(t(a.priority))}</span></td>
      <td>${esc(entName(a.enterprise))}</td>
      <td><a href="#/point/${encodeURIComponent(a.point)}">${esc(a.point)}</a> <span class="muted">${esc(p ? p.name : '')}</span></td>
      <td>${esc(a.condition.toUpperCase())}</td>
      <td class="num">${esc(fmtNum(a.value))} ${esc(a.unit)}</td>
      <td class="num">${esc(fmtNum(a.limit))}</td>
      <td class="state">${esc(t('st_' + a.state))}${a.acked_by ? ` <span class="muted">(${esc(a.acked_by)})</span>` : ''}${a.comment ? `<div class="muted">${esc(a.comment)}</div>` : ''}</td>
      <td>${btns}</td></tr>`;
  }).join('');
  return `<table id="alarm-table"><thead><tr><th></th><th class="num">${esc(t('time'))}</th><th>${esc(t('priority'))}</th><th>${esc(t('enterprise'))}</th>
    <th>${esc(t('point'))}</th><th>${esc(t('condition'))}</th><th class="num">${esc(t('value'))}</th><th class="num">${esc(t('limit'))}</th><th>${esc(t('state'))}</th><th>${esc(t('actions'))}</th></tr></thead>
    <tbody>${rows}</tbody></table>`;
}
function entName(code) {
  const e = S.park && S.park.enterprises.find((x) => x.code === code);
  return e ? e.name : code;
}
function renderAlarms() {
  const list = sortAlarms(realAlarms());
  $('#view').innerHTML = `<h2>${esc(t('active_alarms'))} (${list.length})</h2>${alarmTable(list, true)}`;
}
// ------------------------------------------------------------------ drills (/api/v1/drills)
// Each drill runs its own engine in the daemon; its alarms are listed here under the
// DRILL / 演练 banner and acknowledged as in real life. Engineers start, pause and stop.
let drillTimer = null;
async function renderDrill() {
  $('#drill-banner').hidden = false;
  clearTimeout(drillTimer);
  let drills = [];
  try { drills = (await api('GET', '/api/v1/drills')).drills; } catch (e) { drills = []; }
  if (S.route.split('/')[0] !== 'drill') return;
  const eng = hasRole('engineer'), op = hasRole('operator');
  const ctl = eng ? `<form id="drill-start" class="drill-start">
    <label>${esc(t('drill'))} <input id="drill-scenario" value="chlorine-release"></label>
    <select id="drill-speed"><option>1x</option><option>10x</option><option>60x</option><option>max</option></select>
    <button type="submit">▶ DRILL / 演练</button> <span id="drill-err" class="error"></span></form>` : '';
  const blocks = drills.slice().reverse().map((d) => {
    const btn = (act, label, on) => eng && on ? `<button data-drill="${esc(d.id)}" data-dact="${act}">${label}</button>` : '';
    const rows = d.alarms.map((a) => `<tr class="${a.state === 'unacknowledged' ? 'row-alarm row-unack' : 'row-alarm'}" data-state="${esc(a.state)}">
      <td>${esc(a.alarm)}</td><td>${esc(entName(a.enterprise))}</td><td>${esc(a.priority)}</td><td>${esc(a.state)}</td>
      <td class="num">${a.active_since_ms ? esc(fmtTime(a.active_since_ms)) : ''}</td>
      <td>${a.state === 'unacknowledged' || a.state === 'returned_unacknowledged' ? `<button data-drill="${esc(d.id)}" data-dack="${esc(a.alarm)}" ${op ? '' : 'disabled'}>${esc(t('ack'))}</button>` : ''}</td></tr>`).join('');
    return `<section class="drill" id="drill-${esc(d.id)}"><h3>DRILL / 演练 ${esc(d.id)} · ${esc(d.title)} · ${esc(d.state)} · ${esc(d.speed)} · ${esc(fmtTime(d.clock_ms))}</h3>
      <p>${btn('pause', 'Ⅱ', d.state === 'running')} ${btn('resume', '▶', d.state === 'paused')} ${btn('stop', '■', d.state !== 'stopped')}
      <a href="/api/v1/drills/${encodeURIComponent(d.id)}/report?format=html" target="_blank">${esc(t('drill'))} report</a></p>
      ${rows ? `<table class="drill-alarms"><tbody>${rows}</tbody></table>` : `<p class="empty">${esc(t('no_alarms'))}</p>`}</section>`;
  }).join('');
  const other = sortAlarms(drillAlarms());
  // The start form is built once per visit (and language): the list below it is refreshed
  // every 2 s and on every alarm event, and rebuilding the form then would throw away what
  // the engineer is typing or has chosen.
  const list = $('#drill-list');
  if (!list || list.dataset.lang !== S.lang) {
    $('#view').innerHTML = `<h2>${esc(t('drill_title'))}</h2>${ctl}<div id="drill-list" data-lang="${esc(S.lang)}"></div>`;
    const f = $('#drill-start');
    if (f) f.onsubmit = async (ev) => {
      ev.preventDefault();
      try { await api('POST', '/api/v1/drills', { scenario: $('#drill-scenario').value.trim(), speed: $('#drill-speed').value }); $('#drill-err').textContent = ''; renderDrill(); }
      catch (e) { $('#drill-err').textContent = e.message; }
    };
  }
  $('#drill-list').innerHTML = `${blocks}${other.length ? alarmTable(other, true) : ''}`;
  document.querySelectorAll('[data-dact]').forEach((b) => { b.onclick = async () => { await api('POST', `/api/v1/drills/${encodeURIComponent(b.dataset.drill)}/${b.dataset.dact}`, {}).catch(() => {}); renderDrill(); }; });
  document.querySelectorAll('[data-dack]').forEach((b) => { b.onclick = async () => { await api('POST', `/api/v1/drills/${encodeURIComponent(b.dataset.drill)}/ack`, { alarm: b.dataset.dack }).catch(() => {}); renderDrill(); }; });
  if (drills.some((d) => d.state !== 'stopped')) drillTimer = setTimeout(() => { if (S.route.split('/')[0] === 'drill') renderDrill(); }, 2000);
}

// Dialog for ack / shelve / unshelve / close.
function openDialog(kind, id) {
  const a = S.alarms.get(id);
  if (!a) return;
  const dlg = $('#dlg');
  $('#dlg-title').textContent = t(kind + '_title') !== kind + '_title' ? t(kind + '_title') : t(kind);
  $('#dlg-sub').textContent = `${a.point} · ${a.condition.toUpperCase()} · ${fmtNum(a.value)} ${a.unit}`;
  $('#dlg-dur-label').hidden = kind !== 'shelve';
  $('#dlg-text-label').textContent = kind === 'ack' ? t('comment') : kind === 'close' ? t('close_title') : t('reason');
  $('#dlg-text').value = '';
  $('#dlg-error').textContent = '';
  dlg.dataset.kind = kind; dlg.dataset.id = String(id);
  dlg.showModal();
  $('#dlg-text').focus();
}
async function submitDialog(ev) {
  ev.preventDefault();
  const dlg = $('#dlg');
  const kind = dlg.dataset.kind; const id = dlg.dataset.id;
  const text = $('#dlg-text').value.trim();
  if (kind !== 'ack' && !text) { $('#dlg-error').textContent = t('reason_required'); return; }
  let body;
  if (kind === 'ack') body = { comment: text };
  else if (kind === 'shelve') body = { duration_s: Number($('#dlg-dur').value), reason: text };
  else if (kind === 'unshelve') body = { reason: text };
  else { const [cause, ...rest] = text.split('/'); body = { cause: cause.trim(), action: (rest.join('/') || cause).trim() }; }
  try {
    const a = await api('POST', `/api/v1/alarms/${id}/${kind}`, body);
    if (a.state === 'normal') S.alarms.delete(a.id); else S.alarms.set(a.id, a);
    dlg.close();
    onAlarmsChanged();
  } catch (e) { $('#dlg-error').textContent = e.message; }
}

// ------------------------------------------------------------------ map
const STATE_COLOUR = {
  normal: '#2e9d4a', alarm_unack: '#e02424', alarm_ack: '#e02424', rtn_unack: '#e02424',
  shelved: '#f2c200', out_of_service: '#f2c200', fault: '#f2c200', novalue: '#6b7580',
};
function markerState(p) { return p.value == null && p.state === 'normal' ? 'novalue' : p.state; }
function project() {
  const pts = [];
  const add = (g) => { if (g) pts.push(g); };
  (S.park.boundary || []).forEach(add);
  S.park.enterprises.forEach((e) => { (e.boundary || []).forEach(add); add(e.location); });
  S.park.points.forEach((p) => add(p.location));
  if (!pts.length) return null;
  let [minLon, maxLon, minLat, maxLat] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const g of pts) { minLon = Math.min(minLon, g.lon); maxLon = Math.max(maxLon, g.lon); minLat = Math.min(minLat, g.lat); maxLat = Math.max(maxLat, g.lat); }
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const w = Math.max((maxLon - minLon) * k, 1e-6); const h = Math.max(maxLat - minLat, 1e-6);
  const W = 1000; const H = Math.max(300, Math.round(W * h / w)); const pad = 30;
  const s = Math.min((W - 2 * pad) / w, (H - 2 * pad) / h);
  return { W, H, xy: (g) => [pad + (g.lon - minLon) * k * s, H - pad - (g.lat - minLat) * s] };
}
function renderMap() {
  const pr = project();
  if (!pr) { $('#view').innerHTML = `<p class="empty">${esc(t('none'))}</p>`; return; }
  const poly = (ring, cls) => `<polygon class="${cls}" points="${ring.map((g) => pr.xy(g).map((v) => v.toFixed(1)).join(',')).join(' ')}"/>`;
  let svg = '';
  if (S.park.boundary && S.park.boundary.length) svg += poly(S.park.boundary, 'park-boundary');
  for (const e of S.park.enterprises) {
    if (e.boundary && e.boundary.length) svg += poly(e.boundary, 'ent-boundary');
    let lx; let ly;
    if (e.boundary && e.boundary.length) {
      const xy = e.boundary.map((g) => pr.xy(g));
      lx = Math.min(...xy.map((p) => p[0])) + 6; ly = Math.min(...xy.map((p) => p[1])) + 18;
    } else if (e.location) { [lx, ly] = pr.xy(e.location); ly -= 14; }
    if (lx != null) svg += `<text class="ent-label" x="${lx.toFixed(1)}" y="${ly.toFixed(1)}">${esc(e.name)}</text>`;
  }
  for (const pt of S.park.points) {
    if (!pt.location) continue;
    const [x, y] = pr.xy(pt.location);
    const live = S.points.get(pt.tag) || { state: 'normal', value: null };
    const st = markerState(live);
    svg += `<circle id="marker-${esc(pt.tag)}" class="marker${st === 'alarm_unack' || st === 'rtn_unack' ? ' flash' : ''}" data-tag="${esc(pt.tag)}" data-state="${esc(st)}"
      cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="9" fill="${STATE_COLOUR[st] || '#6b7580'}"><title>${esc(pt.tag)} ${esc(pt.name)}</title></circle>`;
  }
  const legend = [['normal', 'legend_normal'], ['alarm_unack', 'legend_alarm'], ['fault', 'legend_mask'], ['novalue', 'legend_novalue']]
    .map(([s, k]) => `<span><svg class="dot" viewBox="0 0 10 10"><circle cx="5" cy="5" r="5" fill="${STATE_COLOUR[s]}"/></svg>${esc(t(k))}</span>`).join('');
  $('#view').innerHTML = `<h2>${esc(t('map_title'))} · ${esc(S.park.name)}</h2><p class="legend">${legend}</p>
    <svg id="map" viewBox="0 0 ${pr.W} ${pr.H}" preserveAspectRatio="xMidYMid meet">${svg}</svg>`;
}
function updateMarker(p) {
  const m = document.getElementById('marker-' + p.tag);
  if (!m) return;
  const st = markerState(p);
  m.setAttribute('fill', STATE_COLOUR[st] || '#6b7580');
  m.dataset.state = st;
  m.classList.toggle('flash', st === 'alarm_unack' || st === 'rtn_unack');
}

// ------------------------------------------------------------------ point view
function renderPointHeader(p) {
  const el = $('#point-head');
  if (!el) return;
  const st = markerState(p);
  el.innerHTML = `<div class="card"><div class="muted">${esc(p.tag)} · ${esc(entName(p.enterprise))}</div><div class="big" id="point-value">${esc(fmtNum(p.value))} <small>${esc(p.unit)}</small></div></div>
    <div class="card"><div class="muted">${esc(t('state'))}</div><div class="big st-${esc(st)}" id="point-state">${esc(t('ps_' + st))}</div></div>
    <div class="card"><div class="muted">${esc(t('quality'))}</div><div>${esc(p.quality)}</div><div class="muted">${esc(t('source_time'))}</div><div>${esc(fmtTime(p.source_time_ms))}</div></div>`;
}
async function renderPoint([tag]) {
  const p = S.points.get(tag);
  if (!p) { $('#view').innerHTML = `<p class="empty">${esc(tag)}?</p>`; return; }
  const eng = hasRole('engineer');
  $('#view').innerHTML = `<h2>${esc(p.tag)} · ${esc(p.name)}</h2><div class="cards" id="point-head"></div>
    ${eng ? `<p><button id="oos">${esc(t('out_of_service'))}</button> <button id="rts">${esc(t('return_to_service'))}</button> <span id="oos-msg" class="error"></span></p>` : ''}
    <h2>${esc(t('trend'))}</h2><div id="trend"></div><h2>${esc(t('alarm_history'))}</h2><div id="phist"></div><h2>${esc(t('deliveries'))}</h2><div id="pdeliv"></div>`;
  renderPointHeader(p);
  if (eng) {
    const cmd = async (path) => {
      const reason = prompt(t('reason'));
      if (!reason) return;
      try { const np = await api('POST', `/api/v1/points/${encodeURIComponent(tag)}/${path}`, { reason }); S.points.set(tag, np); renderPointHeader(np); } catch (e) { $('#oos-msg').textContent = e.message; }
    };
    $('#oos').onclick = () => cmd('out-of-service');
    $('#rts').onclick = () => cmd('return-to-service');
  }
  const [hist, alarms] = await Promise.all([
    api('GET', `/api/v1/points/${encodeURIComponent(tag)}/history?minutes=60`),
    api('GET', `/api/v1/alarms/history?point=${encodeURIComponent(tag)}&limit=50`),
  ]);
  $('#trend').innerHTML = trendSvg(hist, p);
  $('#phist').innerHTML = alarmTable(alarms, false);
  // Delivery status of the newest alarm's notifications, per channel (the outbox).
  const newest = alarms.reduce((m, a) => (!m || a.raised_ms > m.raised_ms ? a : m), null);
  if (!newest) { $('#pdeliv').innerHTML = `<p class="empty">${esc(t('no_alarms'))}</p>`; return; }
  try {
    const d = await api('GET', `/api/v1/alarms/${newest.id}/deliveries`);
    $('#pdeliv').innerHTML = deliveryTable(d.deliveries || []);
  } catch (e) { $('#pdeliv').innerHTML = `<p class="error">${esc(e.message)}</p>`; }
}
function deliveryTable(rows) {
  if (!rows.length) return `<p class="empty">${esc(t('no_deliveries'))}</p>`;
  const body = rows.map((r) => `<tr class="dl-${esc(r.status)}" data-channel="${esc(r.channel)}"><td>${esc(r.channel)}</td><td>${esc(t('dl_' + r.status))}</td>
    <td class="num">${esc(r.attempts)}</td><td>${esc(r.receipt || '')}</td><td class="num">${esc(r.delivered_at_ms ? fmtTime(r.delivered_at_ms) : '—')}</td><td>${esc(r.last_error || '')}</td></tr>`).join('');
  return `<table id="deliveries"><thead><tr><th>${esc(t('dl_channel'))}</th><th>${esc(t('dl_status'))}</th><th>${esc(t('dl_attempts'))}</th><th>${esc(t('dl_receipt'))}</th><th>${esc(t('dl_at'))}</th><th>${esc(t('dl_error'))}</th></tr></thead><tbody>${body}</tbody></table>`;
}
function trendSvg(hist, p) {
  const W = 900; const H = 260; const L = 50; const R = 10; const T = 10; const B = 24;
  const lim = p.limits || {};
  const vals = hist.samples.filter((s) => s.good).map((s) => s.v);
  const lines = [['hh', lim.hh], ['h', lim.h], ['l', lim.l], ['ll', lim.ll]].filter(([, v]) => v != null);
  const all = vals.concat(lines.map(([, v]) => v));
  let lo = Math.min(...all, p.range[0]); let hi = Math.max(...all);
  if (!isFinite(hi) || hi <= lo) hi = p.range[1];
  hi = Math.min(p.range[1], hi + (hi - lo) * 0.1 || 1);
  const x = (ms) => L + (ms - hist.from_ms) / (hist.to_ms - hist.from_ms) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (H - T - B);
  let s = `<svg class="chart" id="trend-chart" viewBox="0 0 ${W} ${H}" width="100%">`;
  for (let i = 0; i <= 4; i++) { const v = lo + (hi - lo) * i / 4; s += `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#2c343d"/><text x="4" y="${y(v) + 4}">${fmtNum(v)}</text>`; }
  for (let i = 0; i <= 6; i++) { const ms = hist.from_ms + (hist.to_ms - hist.from_ms) * i / 6; s += `<text x="${x(ms) - 18}" y="${H - 6}">${esc(fmtTime(ms).slice(-8, -3))}</text>`; }
  for (const [n, v] of lines) {
    const c = n.length === 2 ? '#e02424' : '#f07800';
    s += `<line class="limit-line" data-limit="${n}" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="${c}" stroke-dasharray="6 4"/><text x="${W - R - 60}" y="${y(v) - 3}" fill="${c}" class="limit-label">${n.toUpperCase()} ${fmtNum(v)}</text>`;
  }
  const pts = hist.samples.filter((q) => q.good).map((q) => `${x(q.t).toFixed(1)},${y(q.v).toFixed(1)}`).join(' ');
  if (pts) s += `<polyline fill="none" stroke="#4aa3ff" stroke-width="2" points="${pts}"/>`;
  return s + '</svg>';
}

// ------------------------------------------------------------------ KPIs
function barChart(items, colour) {
  const W = 440; const rowH = 22; const H = Math.max(1, items.length) * rowH + 10;
  const max = Math.max(1, ...items.map((i) => i.n));
  let s = `<svg class="chart" viewBox="0 0 ${W} ${H}" width="100%">`;
  items.forEach((it, i) => {
    const w = (W - 170) * it.n / max;
    s += `<text x="6" y="${i * rowH + 20}">${esc(it.label)}</text><rect x="120" y="${i * rowH + 7}" width="${w.toFixed(1)}" height="15" fill="${it.colour || colour}"/><text x="${126 + w}" y="${i * rowH + 20}">${it.n}</text>`;
  });
  return s + '</svg>';
}
async function renderKpi() {
  const k = await api('GET', '/api/v1/kpis');
  const mix = k.priority_mix || {};
  const per10 = (k.alarms_per_10min || []).map((b) => ({ label: fmtTime(b.t).slice(-8, -3), n: b.n }));
  $('#view').innerHTML = `<h2>${esc(t('kpi_title'))}</h2>
    <div class="cards"><div class="card"><div class="muted">${esc(t('floods'))}</div><div class="big">${esc(k.floods ?? 0)}</div></div>
    <div class="card"><div class="muted">${esc(t('chattering'))}</div><div class="big">${esc((k.chattering || []).length)}</div></div></div>
    <div class="grid">
      <div><h2>${esc(t('mix'))}</h2>${barChart([{ label: t('high'), n: mix.high || 0, colour: '#e02424' }, { label: t('medium'), n: mix.medium || 0, colour: '#f07800' }, { label: t('low'), n: mix.low || 0, colour: '#f2c200' }])}</div>
      <div><h2>${esc(t('top10'))}</h2>${barChart((k.top10 || []).map((x) => ({ label: x.point, n: x.count })), '#4aa3ff')}</div>
      <div><h2>${esc(t('per10'))}</h2>${per10.length ? barChart(per10, '#4aa3ff') : `<p class="empty">${esc(t('none'))}</p>`}</div>
    </div>`;
}

// ------------------------------------------------------------------ limits editor
const LIMIT_FIELDS = [['hh', 'HH'], ['h', 'H'], ['l', 'L'], ['ll', 'LL'], ['deadband', 'deadband'], ['on_delay_s', 'on_delay'], ['off_delay_s', 'off_delay']];
function previewTable(r) {
  const row = (k, a, b) => `<tr><td>${esc(t(k))}</td><td class="num">${esc(a)}</td><td class="num changed">${esc(b)}</td></tr>`;
  const pts = (r.points || []).map((d) => `<tr data-tag="${esc(d.tag)}"><td>${esc(d.tag)}</td><td class="num">${d.current.alarms}</td><td class="num changed">${d.candidate.alarms}</td>
    <td class="num">${esc(fmtNum(d.current.time_in_alarm_s))}</td><td class="num changed">${esc(fmtNum(d.candidate.time_in_alarm_s))}</td><td class="num">${esc(d.first_alarm_delta_s == null ? '—' : fmtNum(d.first_alarm_delta_s))}</td></tr>`).join('');
  return `<h3>${esc(t('preview_title'))}</h3>
    <p class="muted">${esc(fmtTime(r.from_ms))} – ${esc(fmtTime(r.to_ms))} · ${esc(t('readings'))} <span id="pv-readings">${r.readings}</span></p>
    <table id="pv-totals"><thead><tr><th></th><th>${esc(t('with_current'))}</th><th>${esc(t('with_candidate'))}</th></tr></thead><tbody>
    ${row('alarms_n', r.current.alarms, r.candidate.alarms)}${row('time_in_alarm', fmtNum(r.current.time_in_alarm_s), fmtNum(r.candidate.time_in_alarm_s))}${row('chattering_points', r.current.chattering_points, r.candidate.chattering_points)}</tbody></table>
    ${pts ? `<table id="pv-points"><thead><tr><th></th><th colspan="2">${esc(t('alarms_n'))}</th><th colspan="2">${esc(t('time_in_alarm'))}</th><th>${esc(t('first_alarm_delta'))}</th></tr></thead><tbody>${pts}</tbody></table>` : ''}`;
}
async function runPreview(out, path, body) {
  out.innerHTML = '<p class="muted">…</p>';
  try { out.innerHTML = previewTable(await api('POST', path, body)); } catch (e) { out.innerHTML = `<p class="error" id="pv-error">${esc(e.message)}</p>`; }
}
const KINDS = ['combustible', 'toxic', 'oxygen', 'pressure', 'temperature', 'level', 'flow', 'other'];
function renderClassEditor(eng) {
  const ents = (S.park && S.park.enterprises) || [];
  const parkPoints = (S.park && S.park.points) || [];
  const gases = [...new Set(parkPoints.map((p) => p.gas).filter(Boolean))];
  const sel = (id, opts) => `<select id="${id}" ${eng ? '' : 'disabled'}><option value="">${esc(t('any'))}</option>${opts.map(([v, l]) => `<option value="${esc(v)}">${esc(l)}</option>`).join('')}</select>`;
  const el = document.createElement('section');
  el.id = 'cls';
  el.innerHTML = `<h2>${esc(t('class_title'))}</h2>
    <div class="form-grid"><label>${esc(t('cls_enterprise'))}${sel('cls-enterprise', ents.map((e) => [e.code, `${e.code} ${e.name}`]))}</label>
    <label>${esc(t('cls_kind'))}${sel('cls-kind', KINDS.map((k) => [k, t('k_' + k)]))}</label>
    <label>${esc(t('cls_gas'))}${sel('cls-gas', gases.map((g) => [g, g]))}</label></div>
    <p class="muted">${esc(t('matched'))}: <span id="cls-matched"></span></p>
    <div class="form-grid">${LIMIT_FIELDS.map(([k, l]) => `<label>${esc(k === 'deadband' ? t('deadband') : k === 'on_delay_s' ? t('on_delay') : k === 'off_delay_s' ? t('off_delay') : l)}<input id="cls-${k}" type="number" step="any" placeholder="${esc(t('keep'))}" ${eng ? '' : 'disabled'}></label>`).join('')}</div>
    <label>${esc(t('reason'))}<textarea id="cls-reason" rows="2" ${eng ? '' : 'disabled'}></textarea></label>
    <p><label>${esc(t('preview_hours'))} <input id="cls-hours" type="number" value="24" min="1" max="168"></label>
    <button id="cls-preview" ${eng ? '' : 'disabled'}>${esc(t('preview'))}</button>
    <button id="cls-save" class="primary" ${eng ? '' : 'disabled'}>${esc(t('apply_class'))}</button> <span id="cls-msg"></span></p>
    <div id="cls-preview-out"></div>`;
  $('#view').appendChild(el);
  const selector = () => {
    const o = {};
    for (const k of ['enterprise', 'kind', 'gas']) { const v = $('#cls-' + k).value; if (v) o[k] = v; }
    return o;
  };
  const set = () => {
    const o = {};
    for (const [k] of LIMIT_FIELDS) { const v = $('#cls-' + k).value.trim(); if (v !== '') o[k] = Number(v); }
    return o;
  };
  const matched = () => {
    const s = selector();
    const list = parkPoints.filter((p) => (!s.enterprise || p.enterprise === s.enterprise) && (!s.kind || p.kind === s.kind) && (!s.gas || p.gas === s.gas));
    $('#cls-matched').textContent = Object.keys(s).length ? `${list.length} — ${list.map((p) => p.tag).join(', ')}` : '—';
  };
  el.querySelectorAll('select').forEach((x) => { x.onchange = matched; });
  matched();
  const msg = (text, ok) => { const m = $('#cls-msg'); m.textContent = text; m.className = ok ? 'ok' : 'error'; };
  const errText = (e) => (e.data && e.data.fields ? e.data.fields.map((f) => `${f.field}: ${f.message}`).join('; ') : e.message);
  $('#cls-preview').onclick = () => runPreview($('#cls-preview-out'), '/api/v1/class-limits/preview', { selector: selector(), set: set(), hours: Number($('#cls-hours').value) || 24 });
  $('#cls-save').onclick = async () => {
    const reason = $('#cls-reason').value.trim();
    if (!reason) { msg(t('reason_required'), false); return; }
    try {
      const r = await api('PUT', '/api/v1/class-limits', { selector: selector(), set: set(), reason });
      msg(`${t('saved')} (${r.points.length})`, true);
    } catch (e) { msg(errText(e), false); }
  };
}
async function renderLimits([tag]) {
  const tags = [...S.points.keys()];
  const eng = hasRole('engineer');
  $('#view').innerHTML = `<h2>${esc(t('limits_title'))}</h2>
    <p><label>${esc(t('choose_point'))} <input id="lim-tag" list="tags" value="${esc(tag || '')}"></label><datalist id="tags">${tags.map((x) => `<option value="${esc(x)}">`).join('')}</datalist>
    <button id="lim-load">${esc(t('load'))}</button> ${eng ? '' : `<span class="muted">${esc(t('engineer_only'))}</span>`}</p><div id="lim-body"></div>`;
  $('#lim-load').onclick = () => { location.hash = '#/limits/' + encodeURIComponent($('#lim-tag').value.trim()); };
  if (!tag) { renderClassEditor(eng); return; }
  let cur; let versions;
  try {
    [cur, versions] = await Promise.all([api('GET', `/api/v1/limits/${encodeURIComponent(tag)}`), api('GET', `/api/v1/limits/${encodeURIComponent(tag)}/versions`)]);
  } catch (e) { $('#lim-body').innerHTML = `<p class="error">${esc(e.message)}</p>`; return; }
  const c = cur.current.limits;
  const label = (k, l) => (k === 'deadband' ? t('deadband') : k === 'on_delay_s' ? t('on_delay') : k === 'off_delay_s' ? t('off_delay') : l);
  $('#lim-body').innerHTML = `<p class="muted">${esc(cur.unit)} · [${cur.range[0]}, ${cur.range[1]}] · ${esc(t('version'))} ${cur.current.version}</p>
    <div class="form-grid">${LIMIT_FIELDS.map(([k, l]) => `<label>${esc(label(k, l))}<input id="lim-${k}" data-k="${k}" type="number" step="any" value="${c[k] ?? ''}" ${eng ? '' : 'disabled'}></label>`).join('')}</div>
    <div id="lim-diff"></div>
    <label>${esc(t('reason'))}<textarea id="lim-reason" rows="2" ${eng ? '' : 'disabled'}></textarea></label>
    <p><label>${esc(t('preview_hours'))} <input id="lim-hours" type="number" value="24" min="1" max="168"></label>
    <button id="lim-preview" ${eng ? '' : 'disabled'}>${esc(t('preview'))}</button>
    <button id="lim-save" class="primary" ${eng ? '' : 'disabled'}>${esc(t('save'))}</button> <span id="lim-msg"></span></p>
    <div id="lim-preview-out"></div>
    <h2>${esc(t('versions'))}</h2><table id="lim-versions"><thead><tr><th>${esc(t('version'))}</th><th>${esc(t('time'))}</th><th>${esc(t('changed_by'))}</th><th>HH / H / L / LL</th><th>${esc(t('why'))}</th><th></th></tr></thead><tbody>
    ${versions.slice().reverse().map((v) => `<tr><td>${v.version}</td><td>${esc(v.changed_ms ? fmtTime(v.changed_ms) : '—')}</td><td>${esc(v.changed_by)}</td>
      <td class="num">${[v.limits.hh, v.limits.h, v.limits.l, v.limits.ll].map(fmtNum).join(' / ')}</td><td>${esc(v.reason)}</td>
      <td>${eng && v.version !== cur.current.version ? `<button data-restore="${v.version}">${esc(t('restore'))}</button>` : ''}</td></tr>`).join('')}</tbody></table>`;
  const read = () => {
    const out = {};
    for (const [k] of LIMIT_FIELDS) { const v = $('#lim-' + k).value.trim(); out[k] = v === '' ? (k.endsWith('_s') || k === 'deadband' ? 0 : null) : Number(v); }
    return out;
  };
  const diff = () => {
    const n = read();
    const rows = LIMIT_FIELDS.filter(([k]) => (c[k] ?? null) !== (n[k] ?? null))
      .map(([k, l]) => `<tr><td>${esc(label(k, l))}</td><td class="num">${esc(fmtNum(c[k]))}</td><td class="num changed">${esc(fmtNum(n[k]))}</td></tr>`);
    $('#lim-diff').innerHTML = rows.length ? `<table id="lim-diff-table"><thead><tr><th></th><th>${esc(t('current'))}</th><th>${esc(t('new_value'))}</th></tr></thead><tbody>${rows.join('')}</tbody></table>` : `<p class="muted">${esc(t('no_change'))}</p>`;
    return rows.length;
  };
  document.querySelectorAll('.form-grid input').forEach((i) => { i.oninput = diff; });
  diff();
  const msg = (text, ok) => { const m = $('#lim-msg'); m.textContent = text; m.className = ok ? 'ok' : 'error'; };
  if (S.limMsg && S.limMsg.tag === tag && Date.now() < S.limMsg.until) msg(S.limMsg.text, true);
  $('#lim-preview').onclick = () => runPreview($('#lim-preview-out'), `/api/v1/limits/${encodeURIComponent(tag)}/preview`, { limits: read(), hours: Number($('#lim-hours').value) || 24 });
  $('#lim-save').onclick = async () => {
    const reason = $('#lim-reason').value.trim();
    if (!reason) { msg(t('reason_required'), false); return; }
    if (!diff()) { msg(t('no_change'), false); return; }
    try {
      await api('PUT', `/api/v1/limits/${encodeURIComponent(tag)}`, { limits: read(), reason, expected_version: cur.current.version });
      S.limMsg = { tag, text: t('saved'), until: Date.now() + 8000 };
      render();
    } catch (e) { msg(e.message, false); }
  };
  document.querySelectorAll('[data-restore]').forEach((b) => {
    b.onclick = async () => {
      const reason = $('#lim-reason').value.trim();
      if (!reason) { msg(t('reason_required'), false); return; }
      try { await api('POST', `/api/v1/limits/${encodeURIComponent(tag)}/restore`, { version: Number(b.dataset.restore), reason }); S.limMsg = { tag, text: t('saved'), until: Date.now() + 8000 }; render(); } catch (e) { msg(e.message, false); }
    };
  });
}

// ------------------------------------------------------------------ audit
function flat(v, prefix, out) {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    for (const k of Object.keys(v)) flat(v[k], prefix ? prefix + '.' + k : k, out);
  } else out[prefix || 'value'] = v;
  return out;
}
// Only what changed, one `field: before → after` per line (the raw JSON is in the title).
function auditChange(before, after) {
  let fb; let fa;
  try { fb = flat(JSON.parse(before), '', {}); fa = flat(JSON.parse(after), '', {}); } catch (_) { return `${esc(before)} → ${esc(after)}`; }
  const show = (v) => (v === undefined ? '—' : JSON.stringify(v));
  const keys = [...new Set([...Object.keys(fb), ...Object.keys(fa)])].filter((k) => show(fb[k]) !== show(fa[k]));
  if (!keys.length) return '—';
  return keys.map((k) => `${esc(k)}: ${esc(show(fb[k]))} → <b>${esc(show(fa[k]))}</b>`).join('<br>');
}
async function renderAudit() {
  if (!hasRole('engineer')) { $('#view').innerHTML = `<p class="empty">${esc(t('engineer_only'))}</p>`; return; }
  const list = await api('GET', '/api/v1/audit?limit=200');
  $('#view').innerHTML = `<h2>${esc(t('audit_title'))}</h2><p><button id="verify">${esc(t('verify'))}</button> <span id="verify-msg"></span></p>
    <table id="audit-table"><thead><tr><th>#</th><th>${esc(t('time'))}</th><th>${esc(t('who'))}</th><th>${esc(t('ip'))}</th><th>${esc(t('what'))}</th><th>${esc(t('target'))}</th>
    <th>${esc(t('before'))} → ${esc(t('after'))}</th><th>${esc(t('why'))}</th></tr></thead><tbody>
    ${list.map((e) => `<tr data-action="${esc(e.action)}"><td>${e.seq}</td><td class="num">${esc(fmtTime(e.ts_ms))}</td><td>${esc(e.actor)}</td><td>${esc(e.ip)}</td>
      <td>${esc(e.action)}</td><td>${esc(e.target)}</td><td class="mono" title="${esc(e.before)} → ${esc(e.after)}">${auditChange(e.before, e.after)}</td><td>${esc(e.reason)}</td></tr>`).join('')}
    </tbody></table>`;
  $('#verify').onclick = async () => {
    const v = await api('GET', '/api/v1/audit/verify');
    const m = $('#verify-msg');
    m.className = v.ok ? 'ok' : 'bad';
    m.textContent = v.ok ? `${t('chain_ok')} (${v.entries})` : `${t('chain_bad')}: ${v.problems.join('; ')}`;
  };
}

// ------------------------------------------------------------------ unmapped
async function renderUnmapped() {
  const list = await api('GET', '/api/v1/unmapped');
  $('#view').innerHTML = `<h2>${esc(t('unmapped_title'))}</h2>${!list.length ? `<p class="empty">${esc(t('none'))}</p>` : `<table><thead><tr><th>${esc(t('source'))}</th><th>${esc(t('key'))}</th>
    <th>${esc(t('why'))}</th><th>${esc(t('count_seen'))}</th><th>${esc(t('last_seen'))}</th><th>${esc(t('sample'))}</th></tr></thead><tbody>
    ${list.map((u) => `<tr><td>${esc(u.source)}</td><td>${esc(u.key)}</td><td>${esc(u.reason)}</td><td class="num">${u.count}</td><td>${esc(fmtTime(u.last_ms))}</td><td class="mono">${esc(u.sample)}</td></tr>`).join('')}</tbody></table>`}`;
}

// ------------------------------------------------------------------ start
async function start() {
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#who').textContent = `${S.me.display_name} (${S.me.role})`;
  await loadSnapshot();
  renderBanner();
  connectEvents();
  render();
  updateSilence();
}

document.addEventListener('DOMContentLoaded', async () => {
  applyLang();
  $('#login-form').addEventListener('submit', doLogin);
  $('#logout').addEventListener('click', doLogout);
  document.querySelectorAll('.lang-btn').forEach((b) => b.addEventListener('click', toggleLang));
  $('#silence').addEventListener('click', () => {
    const btn = $('#silence');
    if (btn.dataset.muted === '1') { ensureAudio(); setTimeout(updateSilence, 200); return; }
    S.silenced = true;
    updateSilence();
  });
  $('#dlg-form').addEventListener('submit', submitDialog);
  $('#dlg-cancel').addEventListener('click', () => $('#dlg').close());
  $('#view').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-act]');
    if (b) openDialog(b.dataset.act, Number(b.dataset.id));
  });
  document.addEventListener('click', ensureAudio);
  window.addEventListener('hashchange', () => { if (S.me) render(); });
  try {
    S.me = await api('GET', '/api/v1/session');
    await start();
  } catch (_) {
    showLogin();
  }
});
