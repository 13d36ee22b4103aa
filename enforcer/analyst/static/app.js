// enforcer analyst dashboard: vanilla JS, no dependencies, no network beyond this origin.
//
// Security: every value from the API is put into the page with textContent or setAttribute (never innerHTML), so a
// hostile name in an event (e.g. "<img src=x onerror=alert(1)>") shows as text. The token lives in sessionStorage
// and is sent as "Authorization: Bearer" on each API call; there are no cookies.
"use strict";

(function () {
  const TOKEN_KEY = "enforcer-analyst-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 30000; // the page reloads its data this often while it is visible (one request at a time)
  const PALETTE = 12; // colour classes c0..c11: an app's colour comes from its name, not from its position
  const $ = (id) => document.getElementById(id);
  let drill = null; // {client, app, next}
  let loading = false;
  let again = false;
  let lastKey = null; // what the page shows, to skip a self-refresh that would change nothing
  let T = {};
  const LANG = document.documentElement.lang || "en";

  // The page's texts in its language (a JSON data block the server fills; never executed).
  function t(key, vars) {
    let s = T[key] || key;
    for (const [k, v] of Object.entries(vars || {})) s = s.split("{" + k + "}").join(String(v));
    return s;
  }

  // Which source named a device (identity: client-id, lease, proxy-user, cidr, address, legacy), in the page's
  // language; the API keeps the source's own name.
  function identityText(source) {
    return T["ident_" + source] ? t("ident_" + source) : source;
  }

  // FNV-1a of the app name: the same app gets the same colour in every run and whatever other apps exist.
  function colourClass(app) {
    let h = 0x811c9dc5;
    for (let i = 0; i < app.length; i++) { h ^= app.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
    return "c" + (h % PALETTE);
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function shortTs(ts) { return ts ? String(ts).replace("T", " ").replace(/\.\d+Z$/, "Z") : "-"; }

  class Unauthorized extends Error {}

  async function api(path, params, body) {
    const qs = params ? "?" + params.toString() : "";
    const headers = { "Accept": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    const init = { headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path + qs, init);
    if (resp.status === 401) throw new Unauthorized("unauthorized");
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return resp;
  }

  const FILTERS = ["app", "category", "component", "since", "until", "q"];

  function filterParams() {
    const p = new URLSearchParams();
    for (const name of FILTERS) {
      const v = $("f-" + name).value.trim();
      if (v) p.set(name, v);
    }
    p.set("lang", LANG);
    return p;
  }

  // The filters live in the page's address too: a filtered view can be bookmarked or shared, and the language
  // switch keeps it (it links to the same filters in the other language).
  function filtersFromAddress() {
    const p = new URLSearchParams(location.search);
    for (const name of FILTERS) {
      const v = (p.get(name) || "").trim();
      if (!v) continue;
      const input = $("f-" + name);
      if (input.tagName === "SELECT" && ![...input.options].some((o) => o.value === v)) {
        const o = el("option", v);  // until the facets arrive (fillSelect keeps it when they name it)
        o.value = v;
        input.appendChild(o);
      }
      input.value = v;
    }
  }

  function filtersToAddress() {
    const p = filterParams();
    history.replaceState(null, "", "?" + p.toString());
    const sw = $("lang-switch");
    p.set("lang", sw.getAttribute("hreflang"));
    sw.href = "?" + p.toString();
  }

  function status(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!isError);
  }

  function showLogin(message) {
    $("main").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    const err = $("login-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("token").focus();
  }

  function fillSelect(id, values) {
    const sel = $(id);
    const current = sel.value;
    while (sel.options.length > 1) sel.remove(1);
    for (const v of values || []) {
      const o = el("option", v);
      o.value = v;
      sel.appendChild(o);
    }
    sel.value = (values || []).includes(current) ? current : "";
  }

  function renderTotals(tot) {
    const box = $("totals");
    box.replaceChildren();
    const cards = [
      [t("cards_attempts"), tot.attempts, ""],
      [t("cards_enforced"), tot.enforced_attempts, tot.enforced_attempts ? "bad" : ""],
      [t("cards_clients"), tot.clients, ""],
      [t("cards_noncompliant"), tot.noncompliant_clients, tot.noncompliant_clients ? "bad" : ""],
    ];
    for (const [k, v, cls] of cards) {
      const c = el("div", undefined, "card " + cls);
      c.appendChild(el("div", v, "v"));
      c.appendChild(el("div", k, "k"));
      box.appendChild(c);
    }
  }

  function renderChart(series) {
    const chart = $("chart");
    chart.replaceChildren();
    $("legend").replaceChildren();
    const apps = Object.keys(series.apps || {});
    const buckets = series.buckets || [];
    const W = 960, H = 280, L = 56, R = 16, T = 14, B = 40;
    $("chart-bucket").textContent = series.bucket_seconds ? "(" + t("per") + " " + humanBucket(series.bucket_seconds) + ", UTC)" : "";
    if (!apps.length || !buckets.length) {
      chart.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, t("no_events")));
      return;
    }
    let max = 1;
    for (const a of apps) for (const v of series.apps[a]) max = Math.max(max, v);
    const n = buckets.length;
    const x = (i) => n <= 3 ? L + ((W - L - R) / n) * (i + 0.5) : L + (i * (W - L - R)) / (n - 1);
    const y = (v) => T + (H - T - B) * (1 - v / max);
    for (const frac of [0, 0.5, 1]) {
      const v = Math.round(max * frac);
      chart.appendChild(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
      chart.appendChild(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v));
    }
    chart.appendChild(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    chart.appendChild(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    const ticks = n <= 6 ? [...Array(n).keys()] : [0, Math.floor(n / 4), Math.floor(n / 2), Math.floor((3 * n) / 4), n - 1];
    for (const i of ticks) {
      const anchor = n > 1 && i === 0 ? "start" : n > 1 && i === n - 1 ? "end" : "middle";
      chart.appendChild(svg("text", { x: x(i), y: H - B + 16, "text-anchor": anchor }, shortTs(buckets[i]).slice(0, 16)));
    }
    // Few buckets (one day of data in day buckets, a single hour...): bars side by side, readable where a line
    // of one or two points would be a dot.
    const bars = n <= 3;
    const slot = (W - L - R) / Math.max(n, 1);
    const barW = Math.min(60, (slot * 0.8) / apps.length);
    apps.forEach((app, k) => {
      const cls = colourClass(app);
      const g = svg("g", { class: "series", "data-app": app, "data-colour": cls });
      if (!bars) {
        const pts = series.apps[app].map((v, i) => x(i).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
        g.appendChild(svg("polyline", { points: pts, class: cls }));
      }
      series.apps[app].forEach((v, i) => {
        const label = app + " · " + shortTs(buckets[i]) + " · " + t("attempts_n", { n: v });
        let c;
        if (bars) {
          const bx = L + slot * i + slot / 2 - (barW * apps.length) / 2 + barW * k;
          c = svg("rect", { x: bx.toFixed(1), y: y(v).toFixed(1), width: barW.toFixed(1),
            height: Math.max(0, H - B - y(v)).toFixed(1), class: "point bar " + cls,
            "data-bucket": buckets[i], "data-count": v });
        } else {
          c = svg("circle", { cx: x(i), cy: y(v), r: n > 40 ? 2 : 3, class: "point " + cls,
            "data-bucket": buckets[i], "data-count": v });
        }
        c.appendChild(svg("title", {}, label));
        g.appendChild(c);
      });
      chart.appendChild(g);
      const item = el("span");
      item.appendChild(el("span", undefined, "sw " + cls));
      item.appendChild(document.createTextNode(app));
      $("legend").appendChild(item);
    });
  }

  function humanBucket(s) {
    if (s % 86400 === 0) return s / 86400 === 1 ? t("day") : t("days", { n: s / 86400 });
    if (s % 3600 === 0) return s / 3600 === 1 ? t("hour") : t("hours", { n: s / 3600 });
    return t("minute", { n: s / 60 });
  }

  function cell(tr, value, cls) { tr.appendChild(el("td", value === null || value === undefined || value === "" ? "-" : value, cls)); }

  // The one muted row of an empty table, across all its columns.
  function emptyRow(body, key, span) {
    const tr = el("tr");
    const td = el("td", t(key), "muted");
    td.colSpan = span;
    tr.appendChild(td);
    body.appendChild(tr);
  }

  // "(total)", or "(total, first N shown)" when the API sent fewer rows than there are.
  function shownCount(total, n) { return "(" + total + (total > n ? ", " + t("first_shown", { n: n }) : "") + ")"; }

  function renderNoncompliant(rows, total) {
    const body = $("noncompliant").tBodies[0];
    body.replaceChildren();
    $("nc-count").textContent = shownCount(total, rows.length);
    if (!rows.length) {
      emptyRow(body, "no_noncompliant", 9);
      return;
    }
    for (const r of rows) {
      const tr = el("tr");
      tr.dataset.client = r.client;
      tr.dataset.app = r.app;
      tr.tabIndex = 0;
      cell(tr, r.device); cell(tr, r.owner); cell(tr, r.unit); cell(tr, r.client); cell(tr, r.app);
      cell(tr, shortTs(r.first_seen)); cell(tr, shortTs(r.last_seen));
      cell(tr, r.attempts, "num"); cell(tr, r.enforced_attempts, "num");
      const open = () => openDrill(r.client, r.app, tr);
      tr.addEventListener("click", open);
      tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
      body.appendChild(tr);
    }
  }

  // Bypass attempts (control apps): apart from the ban, never in the totals or the non-compliant table.
  function renderBypass(rows, total) {
    const body = $("bypass").tBodies[0];
    body.replaceChildren();
    $("bypass-count").textContent = shownCount(total, rows.length);
    if (!rows.length) {
      emptyRow(body, "no_bypass", 10);
      return;
    }
    for (const r of rows) {
      const tr = el("tr");
      tr.dataset.client = r.client;
      tr.dataset.app = r.app;
      cell(tr, r.device); cell(tr, r.owner); cell(tr, r.unit); cell(tr, r.client); cell(tr, identityText(r.identity));
      cell(tr, r.app); cell(tr, shortTs(r.first_seen)); cell(tr, shortTs(r.last_seen));
      cell(tr, r.attempts, "num"); cell(tr, r.hits, "num");
      body.appendChild(tr);
    }
  }

  function renderRules(rows) {
    const body = $("rules").tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      emptyRow(body, "no_rules", 7);
      return;
    }
    for (const r of rows) {
      const tr = el("tr");
      cell(tr, r.rule, "wrap"); cell(tr, r.app); cell(tr, r.category);
      cell(tr, r.hits, "num"); cell(tr, r.enforced_hits, "num"); cell(tr, r.clients, "num");
      cell(tr, shortTs(r.last_seen));
      body.appendChild(tr);
    }
  }

  // Discovery's proposals (GET /api/candidates): the rule to review, its evidence in the tooltip. No action here.
  function renderCandidates(data) {
    const body = $("candidates").tBodies[0];
    body.replaceChildren();
    const rows = data.candidates || [];
    $("cand-count").textContent = rows.length ? "(" + data.total + ")" : "";
    // Co-occurrence (names asked around blocked queries) runs only with the resolver's query log.
    $("cand-cooc").textContent = data.co_occurrence ? t("cooc_on", { n: data.query_logs }) : t("cooc_off");
    for (const c of rows) {
      const tr = el("tr");
      tr.dataset.name = c.name;
      tr.dataset.signals = c.signals.join(" ");
      cell(tr, c.kind + ": " + c.name, "wrap");
      tr.lastChild.title = c.rule.source;  // the evidence, as the source: line the rule would carry
      cell(tr, c.app); cell(tr, c.confidence); cell(tr, c.signals.join(", "), "wrap");
      for (const line of (c.detail || []).slice(0, 2)) tr.lastChild.appendChild(el("div", line, "muted"));
      cell(tr, c.count, "num"); cell(tr, c.clients, "num"); cell(tr, shortTs(c.last_seen));
      body.appendChild(tr);
    }
    if (!rows.length) {
      emptyRow(body, "no_candidates", 7);
    }
  }

  function renderWindows(rows) {
    const by = {};
    for (const r of rows) (by[r.app] = by[r.app] || {})[r.window] = r.clients;
    const body = $("windows").tBodies[0];
    body.replaceChildren();
    for (const app of Object.keys(by).sort()) {
      const tr = el("tr");
      cell(tr, app);
      for (const w of ["1h", "24h", "7d"]) cell(tr, by[app][w] || 0, "num");
      body.appendChild(tr);
    }
  }

  function renderEvent(body, e) {
    const ev = e.event || {}, rule = e.rule || {}, obs = e.observer || {};
    const tr = el("tr");
    const decision = (ev.type || []).includes("denied") ? "denied" : "allowed";
    cell(tr, shortTs(e["@timestamp"])); cell(tr, rule.ruleset); cell(tr, t(decision), decision);
    cell(tr, ev.action); cell(tr, obs.type); cell(tr, rule.id, "wrap"); cell(tr, rule.category);
    cell(tr, eventName(e), "wrap");
    body.appendChild(tr);
  }

  async function loadDrill(more) {
    const p = filterParams();
    p.set("client", drill.client);
    p.set("limit", "50");
    if (more && drill.next) p.set("cursor", drill.next);
    const data = await (await api("/api/events", p)).json();
    const body = $("drill-events").tBodies[0];
    if (!more) body.replaceChildren();
    for (const e of data.events) renderEvent(body, e);
    drill.next = data.next;
    $("drill-more").hidden = !data.next;
  }

  function openDrill(client, app, tr) {
    for (const r of $("noncompliant").tBodies[0].rows) r.classList.remove("sel");
    if (tr) tr.classList.add("sel");
    drill = { client, app, next: null };
    $("drill-client").textContent = client;
    $("drill").hidden = false;
    loadDrill(false).then(() => $("drill").scrollIntoView({ block: "nearest" })).catch(handleError);
  }

  // What the drill-down shows as the name: the URL, the DNS name, the SNI, the CONNECT target (url.domain with the
  // destination port: a CONNECT to a host name has no destination.ip), else the address.
  function eventName(e) {
    const url = e.url || {}, dest = e.destination || {};
    const sni = e.tls && e.tls.client && e.tls.client.server_name;
    const qname = e.dns && e.dns.question && e.dns.question.name;
    if (url.full) return url.full;
    if (qname) return qname;
    if (sni) return sni;
    if (url.domain) return dest.port ? url.domain + ":" + dest.port : url.domain;
    return dest.ip || "";
  }

  function renderRetention(seconds) {
    if (seconds === null || seconds === undefined) {
      $("retention").textContent = t("retention_all");
      return;
    }
    const period = seconds % 86400 === 0 ? t("days", { n: seconds / 86400 }) : t("hours", { n: Math.round(seconds / 3600) });
    $("retention").textContent = t("retention", { period });
  }

  function renderPolicy(apps) {
    const dl = $("policy");
    dl.replaceChildren();
    for (const a of apps) {
      if (!a.notice && !a.reference) continue;
      dl.appendChild(el("dt", a.app));
      const dd = el("dd", a.notice);
      if (a.reference) dd.appendChild(el("div", a.reference, "muted"));
      dl.appendChild(dd);
    }
    $("policy-panel").hidden = !dl.children.length;
  }

  function caseReason(c) {
    const h = c.reopened_by;
    if (!h) return "";
    return t("reopened", { client: h.client, app: h.app, name: h.name, rule: h.rule, ts: shortTs(h.ts) });
  }

  // state null: a progress note, the case stays where it is
  async function changeCase(device, state, note) {
    await api("/api/cases/" + encodeURIComponent(device), null, state ? { state, note } : { note });
    await load();
  }

  function renderCases(cases, counts, total) {
    const body = $("cases").tBodies[0];
    body.replaceChildren();
    const q = $("f-q").value.trim().toLowerCase();
    const shown = q ? cases.filter((c) => [c.device, c.owner, c.unit, ...c.clients].some((v) => (v || "").toLowerCase().includes(q))) : cases;
    const open = counts.open + counts.acknowledged;
    $("cases-count").textContent = "(" + open + " / " + total + ")";
    if (!shown.length) {
      emptyRow(body, "no_cases", 10);
      return;
    }
    for (const c of shown.slice(0, 500)) {
      const tr = el("tr", undefined, "case-" + c.state);
      tr.dataset.device = c.device;
      tr.dataset.state = c.state;
      cell(tr, c.device); cell(tr, identityText(c.identity), "identity"); cell(tr, t("state_" + c.state), "state");
      cell(tr, c.clients.join(" "), "addrs"); cell(tr, c.apps.join(" "));
      cell(tr, shortTs(c.updated_at)); cell(tr, c.updated_by); cell(tr, c.note, "wrap note-text");
      cell(tr, caseReason(c), "wrap reason");
      const td = el("td", undefined, "actions");
      if (c.state !== "remediated") {
        const note = el("input", undefined, "note");
        note.type = "text";
        note.maxLength = 2000;
        note.placeholder = t("note_prompt");
        note.setAttribute("aria-label", t("note_prompt"));
        td.appendChild(note);
        const targets = c.state === "open" ? ["acknowledged", "remediated"] : ["remediated"];
        for (const target of targets) {
          const b = el("button", target === "acknowledged" ? t("acknowledge") : t("remediate"));
          b.type = "button";
          b.dataset.target = target;
          b.addEventListener("click", () => changeCase(c.device, target, note.value.trim()).catch(handleError));
          td.appendChild(b);
        }
        const add = el("button", t("add_note"));
        add.type = "button";
        add.dataset.target = "note";
        add.addEventListener("click", () => changeCase(c.device, null, note.value.trim()).catch(handleError));
        td.appendChild(add);
      }
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function handleError(err) {
    if (err instanceof Unauthorized) {
      showLogin(token() ? t("bad_token") : "");
    } else {
      status(t("error", { msg: err.message }), true);
    }
  }

  // auto: a self-refresh. It leaves the page as it is when nothing changed (rows, open drill-down, a half-typed
  // note keep their place) and waits while the analyst is typing in the page.
  async function load(auto) {
    if (loading) {
      if (!auto) again = true; // an analyst's action while a refresh runs: load once more after it
      return;
    }
    const focus = document.activeElement;
    if (auto && focus && focus.tagName === "INPUT" && $("main").contains(focus)) return;
    loading = true;
    try { await loadNow(auto); } finally { loading = false; }
    if (again) {
      again = false;
      await load(false);
    }
  }

  async function loadNow(auto) {
    if (!auto) status(t("loading"));
    const data = await (await api("/api/dashboard", filterParams())).json();
    if (!auto) filtersToAddress();
    const casesDoc = await (await api("/api/cases")).json();
    const cases = casesDoc.cases;
    const key = JSON.stringify([{ ...data, generated_at: null }, cases]);
    if (auto && key === lastKey) {
      status(t("updated", { ts: shortTs(data.generated_at), n: data.ingest.stored }));
      return;
    }
    lastKey = key;
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = !token();
    fillSelect("f-app", data.facets.app);
    fillSelect("f-category", data.facets.category);
    fillSelect("f-component", data.facets.component);
    renderTotals(data.totals);
    renderChart(data.series);
    renderNoncompliant(data.noncompliant, data.noncompliant_total);
    renderBypass(data.bypass || [], data.bypass_total || 0);
    renderRules(data.top_rules);
    renderWindows(data.windows);
    renderRetention(data.retention_seconds);
    renderPolicy(data.policy || []);
    renderCases(cases, casesDoc.counts, casesDoc.total);
    try {
      renderCandidates(await (await api("/api/candidates")).json());
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
      $("cand-count").textContent = "(" + e.message + ")";  // the rest of the dashboard still shows
    }
    if (drill) await loadDrill(false);
    status(t("updated", { ts: shortTs(data.generated_at), n: data.ingest.stored }));
    document.body.dataset.loaded = "1";
  }

  async function exportCsv(path, filename, params) {
    const blob = await (await api(path, params)).blob();
    const url = URL.createObjectURL(blob);
    const a = el("a");
    a.href = url;
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    try { T = JSON.parse($("i18n").textContent || "{}"); } catch (e) { T = {}; }
    filtersFromAddress();
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      load().catch(handleError);
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("");
    });
    $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); load().catch(handleError); });
    for (const b of document.querySelectorAll("[data-range]")) {
      b.addEventListener("click", () => {
        $("f-since").value = b.dataset.range;
        $("f-until").value = "";
        load().catch(handleError);
      });
    }
    $("export-csv").addEventListener("click", () =>
      exportCsv("/api/report.csv", "enforcer-report.csv", filterParams()).catch(handleError));
    $("export-cases").addEventListener("click", () =>
      exportCsv("/api/cases.csv", "enforcer-cases.csv").catch(handleError));
    $("drill-close").addEventListener("click", () => { $("drill").hidden = true; drill = null; });
    $("drill-more").addEventListener("click", () => loadDrill(true).catch(handleError));
    // Self-refresh while open: one request at a time, none while the tab is hidden or the login form shows.
    setInterval(() => {
      if (!document.hidden && !$("main").hidden) load(true).catch(handleError);
    }, REFRESH_MS);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !$("main").hidden) load(true).catch(handleError);
    });
    load().catch(handleError);
  });
})();
