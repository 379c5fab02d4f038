// ramsim console: plain JavaScript, no build step. Every call goes to the console's /api/, which
// signs OpenAPI calls to the gateway as the operator; the session is an HttpOnly cookie.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { page: 1, size: 20, pages: 1, selected: "", credential: null, syncedAt: 0, paused: false,
  messages: [], traces: new Set(), roles: [], policies: [] };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  return node;
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const answer = await fetch(path, init);
  const data = await answer.json().catch(() => ({ Code: "InvalidResponse", Message: answer.statusText }));
  if (answer.status === 401) { showLogin(); throw Object.assign(new Error("not signed in"), { data }); }
  if (!answer.ok) throw Object.assign(new Error(data.Code || answer.status), { data });
  return data;
}

function toast(text, bad = false) {
  const t = $("toast"); t.textContent = text; t.className = "show" + (bad ? " bad" : "");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.className = ""; }, bad ? 7000 : 2500);
}

function explainError(err) {  // RAM's explanation of a denial, when there is one (AccessDeniedDetail)
  const d = (err && err.data) || {};
  let text = `${d.Code || "Error"}: ${d.Message || err.message}`;
  if (d.Denied) text += `\nDecided by: ${d.Denied.DecidedBy || d.Denied.Reason}`;
  return text;
}

async function act(what, fn) {
  try { await fn(); toast(what); } catch (err) { if (err.message !== "not signed in") toast(explainError(err), true); }
  refreshAll(); refreshInstance().catch(() => {});
}

// -- sign-in ------------------------------------------------------------------------------------
function showLogin() { $("main").hidden = true; $("who").hidden = true; $("login").hidden = false; }
function showMain(me) {
  $("login").hidden = true; $("main").hidden = false; $("who").hidden = false;
  $("account").textContent = me.AccountId; $("region").textContent = me.RegionId; $("scale").textContent = me.TimeScale;
  state.timeScale = me.TimeScale; startFeed(); refreshAll();
}
$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault(); $("login-error").textContent = "";
  try { showMain(await api("POST", "/api/login", { AccessKeyId: $("login-id").value.trim(), AccessKeySecret: $("login-secret").value.trim() })); }
  catch (err) { $("login-error").textContent = explainError(err); }
});
$("logout").addEventListener("click", async () => { await api("POST", "/api/logout", {}).catch(() => {}); location.reload(); });

// -- health ---------------------------------------------------------------------------------------
async function refreshHealth() {
  const { Services } = await api("GET", "/api/health");
  $("health").replaceChildren(...Services.map((s) => el("span", { class: "chip " + s.Status, title: s.Detail, "data-service": s.Name },
    el("span", { class: "dot" }), s.Name, el("small", {}, s.Status !== "healthy" ? s.Status : s.Detail ? `${s.LatencyMs} ms` : s.Process))));
  const targets = ["*", ...Services.map((s) => s.Name)];
  fill($("fault-target"), targets.map((n) => [n, n === "*" ? "every node" : n]));
}

function fill(select, options) {  // keep the choice across refreshes
  const keep = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  if (options.some(([v]) => v === keep)) select.value = keep;
}

// -- instances ------------------------------------------------------------------------------------
async function refreshInstances() {
  const data = await api("GET", `/api/instances?page=${state.page}&size=${state.size}`);
  state.pages = data.Pages;
  $("instances-total").textContent = `${data.TotalCount} in all`;
  $("page").textContent = `page ${data.PageNumber} of ${data.Pages}`;
  $("prev").disabled = state.page <= 1; $("next").disabled = state.page >= state.pages;
  $("instances").tBodies[0].replaceChildren(...data.Instances.map((i) => {
    const row = el("tr", { "data-instance": i.InstanceId, class: i.InstanceId === state.selected ? "selected" : "" },
      el("td", {}, i.InstanceId), el("td", {}, i.Status), el("td", {}, i.HostId), el("td", {}, i.PrivateIp),
      el("td", { class: "role-cell" }, i.RamRoleName || "—"));
    row.addEventListener("click", () => { state.selected = i.InstanceId; refreshInstances(); refreshInstance(); });
    return row;
  }));
}
$("prev").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); refreshInstances(); });
$("next").addEventListener("click", () => { state.page = Math.min(state.pages, state.page + 1); refreshInstances(); });
$("size").addEventListener("change", () => { state.size = Number($("size").value); state.page = 1; refreshInstances(); });

async function refreshInstance() {
  if (!state.selected) return;
  const d = await api("GET", `/api/instances/${encodeURIComponent(state.selected)}`);
  if (d.InstanceId !== state.selected) return;
  $("instance-detail").hidden = false; $("sel-id").textContent = d.InstanceId; $("sel-role").textContent = d.RamRoleName || "none";
  const shown = d.CredentialPath || d.Listing || { Path: "", Status: "" };
  $("md-path").textContent = shown.Path; $("md-status").textContent = shown.Status;
  $("md-body").textContent = d.Listing && d.Listing.Status !== 200 ? d.Listing.Body : "";
  state.credential = d.Credential; state.syncedAt = performance.now(); tick();
  $("cred").hidden = !d.Credential;
  if (d.Credential) {
    $("cred-key").textContent = d.Credential.AccessKeyId; $("cred-exp").textContent = d.Credential.Expiration;
    $("cred-upd").textContent = d.Credential.LastUpdated;
  }
  $("history").tBodies[0].replaceChildren(...d.History.slice().reverse().map((h) =>
    el("tr", {}, el("td", {}, h.AccessKeyId), el("td", {}, h.RoleName), el("td", {}, h.Expiration), el("td", {}, h.SeenAt || h.Source))));
}

function tick() {  // the expiry countdown, in simulated time, between two reads of the metadata view
  const c = state.credential, out = $("cred-left");
  if (!c) { out.textContent = ""; return; }
  const realLeft = c.RealSecondsLeft - (performance.now() - state.syncedAt) / 1000;
  const simLeft = Math.max(0, realLeft * (state.timeScale || 1));
  const h = Math.floor(simLeft / 3600), m = Math.floor((simLeft % 3600) / 60), s = Math.floor(simLeft % 60);
  out.textContent = simLeft > 0 ? `expires in ${h}h ${String(m).padStart(2, "0")}m ${String(s).padStart(2, "0")}s` : "expired";
  out.className = "countdown" + (simLeft <= 0 ? " gone" : simLeft < 600 ? " soon" : "");
}
setInterval(tick, 250);

$("attach-btn").addEventListener("click", () => act(`attached ${$("attach-role").value} to ${state.selected}`,
  () => api("POST", `/api/instances/${encodeURIComponent(state.selected)}/role`, { RoleName: $("attach-role").value })));
$("detach-btn").addEventListener("click", () => act(`detached the role of ${state.selected}`,
  () => api("DELETE", `/api/instances/${encodeURIComponent(state.selected)}/role`, {})));

// -- roles and policies ---------------------------------------------------------------------------
async function refreshRoles() {
  const [{ Roles }, { Policies }] = await Promise.all([api("GET", "/api/roles"), state.policies.length ? { Policies: state.policies } : api("GET", "/api/policies")]);
  state.roles = Roles; state.policies = Policies;
  $("roles").tBodies[0].replaceChildren(...Roles.map((r) => el("tr", { "data-role": r.RoleName }, el("td", {}, r.RoleName),
    el("td", {}, r.Policies.map((p) => `${p.PolicyType}:${p.PolicyName}`).join(", ") || "—"))));
  const roleOptions = Roles.map((r) => [r.RoleName, r.RoleName]);
  fill($("attach-role"), roleOptions); fill($("policy-role"), roleOptions);
  fill($("policy-name"), Policies.map((p) => [`${p.PolicyType}:${p.PolicyName}`, `${p.PolicyType}:${p.PolicyName}`]));
}
function chosenPolicy() { const [PolicyType, PolicyName] = $("policy-name").value.split(":"); return { PolicyType, PolicyName }; }
$("policy-attach").addEventListener("click", () => act(`attached ${$("policy-name").value} to ${$("policy-role").value}`,
  () => api("POST", `/api/roles/${encodeURIComponent($("policy-role").value)}/policies`, chosenPolicy())));
$("policy-detach").addEventListener("click", () => act(`detached ${$("policy-name").value} from ${$("policy-role").value}`,
  () => api("DELETE", `/api/roles/${encodeURIComponent($("policy-role").value)}/policies`, chosenPolicy())));

// -- faults ---------------------------------------------------------------------------------------
async function refreshFaults() {
  const { Active } = await api("GET", "/api/faults").catch(() => ({ Active: [] }));
  $("faults").replaceChildren(...Active.map((f) => {
    const heal = el("button", { class: "secondary" }, "heal");
    heal.addEventListener("click", () => act(`healed ${f.Id}`, () => api("DELETE", `/api/faults/${f.Id}`, {})));
    return el("li", { "data-fault": f.Id }, el("b", {}, f.Id), `${f.Kind} ${f.Target} ${(f.Types || []).join(",")}`, heal);
  }));
}
$("fault-inject").addEventListener("click", () => {
  const kind = $("fault-kind").value, amount = Number($("fault-amount").value);
  act(`injected ${kind} on ${$("fault-target").value}`, () => api("POST", "/api/faults", { Kind: kind, Target: $("fault-target").value,
    Types: $("fault-types").value, Probability: kind === "drop" ? amount : 1, Delay: kind === "delay" ? amount : 0 }));
});

// -- explain --------------------------------------------------------------------------------------
$("ex-go").addEventListener("click", async () => {
  try {
    const d = await api("POST", "/api/explain", { PrincipalType: $("ex-type").value, PrincipalName: $("ex-name").value.trim(),
      ActionName: $("ex-action").value.trim(), ResourceName: $("ex-resource").value.trim() });
    $("explain").replaceChildren(el("div", { class: "verdict " + (d.Allowed ? "allow" : "deny") }, `${d.Decision}: ${d.Reason}`),
      ...d.Matches.map((m) => el("div", { class: "mono small" }, `${m.Effect} by ${m.Policy} v${m.Version} statement ${m.Statement}${m.Sid ? " (" + m.Sid + ")" : ""}`)),
      ...(d.Matches.length ? [] : [el("div", { class: "small hint" }, "no statement matched: an implicit deny")]));
  } catch (err) { $("explain").replaceChildren(el("div", { class: "denied" }, explainError(err))); }
});

// -- the live feed: a sequence diagram of the messages on the bus ---------------------------------
const ORDER = ["console", "gateway", "ram", "sts", "ecs", "oss", "operator", "app"];
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function lifelines(messages) {
  const seen = new Set();
  for (const m of messages) { seen.add(m.Src); if (m.Dest) seen.add(m.Dest); }
  const rank = (n) => { const i = ORDER.indexOf(n); return i >= 0 ? i : n.startsWith("metadata") ? 50 : n === "events" ? 99 : 60; };
  return [...seen].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}
function drawDiagram() {
  const filter = $("trace-filter").value;
  const messages = state.messages.filter((m) => !filter || m.TraceId === filter).slice(-40);
  const names = lifelines(messages), width = Math.max(560, names.length * 110), top = 18, step = 24;
  const height = top + messages.length * step + 16, x = (n) => 55 + names.indexOf(n) * ((width - 110) / Math.max(1, names.length - 1));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "sequence diagram of the live messages" });
  const defs = svg("defs", {}), marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#56607a" })); defs.append(marker); root.append(defs);
  const head = svg("svg", { viewBox: `0 0 ${width} 22`, "aria-hidden": "true" });  // the lifelines' names stay in view
  for (const n of names) {
    root.append(svg("line", { x1: x(n), y1: 0, x2: x(n), y2: height, stroke: "#d5d9e2", "stroke-dasharray": "3 3" }));
    head.append(svg("text", { x: x(n), y: 15, "text-anchor": "middle", "font-size": 12, "font-weight": 600, fill: "#232b3a" }, n));
  }
  $("diagram-head").replaceChildren(head);
  messages.forEach((m, i) => {
    const y = top + i * step, a = x(m.Src), b = x(m.Dest || m.Src), color = m.Error ? "#d64545" : m.Event ? "#1f9d55" : "#2f6fde";
    const fields = Object.entries(m.Fields || {}).map(([k, v]) => `${k}=${v}`).join("\n");
    const title = svg("title", {}, `${m.Src} → ${m.Dest}: ${m.Type} (trace ${m.TraceId})\n${fields}`);
    if (a === b) root.append(svg("circle", { cx: a, cy: y, r: 3, fill: color }));
    else root.append(svg("line", { x1: a, y1: y, x2: b + (b > a ? -2 : 2), y2: y, stroke: color, "stroke-width": 1.4, "marker-end": "url(#arrow)" }));
    const label = svg("text", { x: (a + b) / 2, y: y - 4, "text-anchor": "middle", "font-size": 11, fill: color }, m.Type + (m.Summary ? " " + m.Summary : ""));
    label.append(title); root.append(label);
  });
  if (!messages.length) root.append(svg("text", { x: width / 2, y: 40, "text-anchor": "middle", fill: "#6a7385", "font-size": 12 }, "waiting for messages…"));
  const box = $("diagram"), atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 30;
  box.replaceChildren(root);
  if (atEnd) box.scrollTop = box.scrollHeight;  // follow the newest, unless the reader scrolled back
}
function onItem(item) {
  if (item.Kind === "message") {
    state.messages = state.messages.concat([item]).slice(-400);
    if (item.TraceId && !state.traces.has(item.TraceId)) {
      state.traces.add(item.TraceId);
      $("trace-filter").append(el("option", { value: item.TraceId }, `${item.TraceId.slice(0, 12)} ${item.Type}`));
      while ($("trace-filter").options.length > 60) $("trace-filter").options[1].remove();  // the oldest traces go
    }
    if (!state.paused) drawDiagram();
    if (item.Denied) {  // RAM's explanation of a denial seen on the bus: which statement (or none) decided
      const d = item.Denied;
      addNote("denied", `${item.Src} → ${item.Dest}: ${d.Code}. Decided by: ${d.DecidedBy || d.Reason}`);
    }
  } else {
    addNote(item.Kind, item.Text, item.At);
  }
}
function addNote(kind, text, at) {
  const when = new Date((at || Date.now() / 1000) * 1000).toLocaleTimeString();
  $("notes").prepend(el("li", { class: kind }, `${when} ${text}`));
  while ($("notes").children.length > 50) $("notes").lastChild.remove();
}
function startFeed() {
  if (state.feed) return;
  state.feed = new EventSource("/api/feed");
  state.feed.onopen = () => { $("feed-state").textContent = "live"; };
  state.feed.onerror = () => { $("feed-state").textContent = "reconnecting…"; };
  state.feed.onmessage = (e) => { try { onItem(JSON.parse(e.data)); } catch (err) { /* a bad line is skipped */ } };
  drawDiagram();
}
$("trace-filter").addEventListener("change", drawDiagram);
$("feed-pause").addEventListener("click", () => { state.paused = !state.paused; $("feed-pause").textContent = state.paused ? "resume" : "pause"; drawDiagram(); });

// -- refresh loop ---------------------------------------------------------------------------------
async function refreshAll() {
  await Promise.allSettled([refreshHealth(), refreshInstances(), refreshRoles(), refreshFaults()]);
}
setInterval(() => { if (!$("main").hidden) refreshAll(); }, 2000);
setInterval(() => { if (!$("main").hidden) refreshInstance().catch(() => {}); }, 1000);  // the selected instance, as it sees itself
api("GET", "/api/whoami").then(showMain).catch(() => showLogin());
