// enforcer analyst dashboard: vanilla JS, no dependencies, no network beyond this origin.
//
// Security: every value from the API is put into the page with textContent or setAttribute (never innerHTML), so a
// hostile name in an event (e.g. "<img src=x onerror=alert(1)>") shows as text. The token lives in sessionStorage
// and is sent as "Authorization: Bearer" on each API call; there are no cookies.
"use strict";

(function () {
  const TOKEN_KEY = "enforcer-analyst-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let drill = null; // {client, app, next}

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

  async function api(path, params) {
    const qs = params ? "?" + params.toString() : "";
    const headers = { "Accept": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    const resp = await fetch(path + qs, { headers, credentials: "omit", cache: "no-store" });
    if (resp.status === 401) throw new Unauthorized("unauthorized");
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return resp;
  }

  function filterParams() {
    const p = new URLSearchParams();
    for (const name of ["app", "category", "component", "since", "until"]) {
      const v = $("f-" + name).value.trim();
      if (v) p.set(name, v);
    }
    return p;
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

  function renderTotals(t) {
    const box = $("totals");
    box.replaceChildren();
    const cards = [
      ["Attempts", t.attempts, ""],
      ["Enforced attempts", t.enforced_attempts, t.enforced_attempts ? "bad" : ""],
      ["Clients", t.clients, ""],
      ["Non-compliant clients", t.noncompliant_clients, t.noncompliant_clients ? "bad" : ""],
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
    $("chart-bucket").textContent = series.bucket_seconds ? "(per " + humanBucket(series.bucket_seconds) + ", UTC)" : "";
    if (!apps.length || !buckets.length) {
      chart.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no events for these filters"));
      return;
    }
    let max = 1;
    for (const a of apps) for (const v of series.apps[a]) max = Math.max(max, v);
    const n = buckets.length;
    const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
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
    apps.forEach((app, k) => {
      const cls = "c" + (k % 6);
      const g = svg("g", { class: "series", "data-app": app });
      const pts = series.apps[app].map((v, i) => x(i).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
      g.appendChild(svg("polyline", { points: pts, class: cls }));
      series.apps[app].forEach((v, i) => {
        const c = svg("circle", { cx: x(i), cy: y(v), r: n > 40 ? 2 : 3, class: "point " + cls,
          "data-bucket": buckets[i], "data-count": v });
        c.appendChild(svg("title", {}, app + " · " + shortTs(buckets[i]) + " · " + v + " attempt(s)"));
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
    if (s % 86400 === 0) return s / 86400 === 1 ? "day" : s / 86400 + " days";
    if (s % 3600 === 0) return s / 3600 === 1 ? "hour" : s / 3600 + " hours";
    return s / 60 + " min";
  }

  function cell(tr, value, cls) { tr.appendChild(el("td", value === null || value === undefined || value === "" ? "-" : value, cls)); }

  function renderNoncompliant(rows, total) {
    const body = $("noncompliant").tBodies[0];
    body.replaceChildren();
    $("nc-count").textContent = "(" + total + (total > rows.length ? ", first " + rows.length + " shown" : "") + ")";
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "No non-compliant device for these filters.", "muted");
      td.colSpan = 9;
      tr.appendChild(td);
      body.appendChild(tr);
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

  function renderRules(rows) {
    const body = $("rules").tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = el("tr");
      cell(tr, r.rule, "wrap"); cell(tr, r.app); cell(tr, r.category);
      cell(tr, r.attempts, "num"); cell(tr, r.enforced_attempts, "num"); cell(tr, r.clients, "num");
      cell(tr, shortTs(r.last_seen));
      body.appendChild(tr);
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
    const name = (e.url && e.url.full) || (e.dns && e.dns.question && e.dns.question.name) ||
      (e.tls && e.tls.client && e.tls.client.server_name) || (e.destination && e.destination.ip) || "";
    cell(tr, shortTs(e["@timestamp"])); cell(tr, rule.ruleset); cell(tr, decision, decision);
    cell(tr, ev.action); cell(tr, obs.type); cell(tr, rule.id, "wrap"); cell(tr, rule.category); cell(tr, name, "wrap");
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

  function handleError(err) {
    if (err instanceof Unauthorized) {
      showLogin(token() ? "That token was not accepted." : "");
    } else {
      status("Error: " + err.message, true);
    }
  }

  async function load() {
    status("loading…");
    const data = await (await api("/api/dashboard", filterParams())).json();
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = !token();
    fillSelect("f-app", data.facets.app);
    fillSelect("f-category", data.facets.category);
    fillSelect("f-component", data.facets.component);
    renderTotals(data.totals);
    renderChart(data.series);
    renderNoncompliant(data.noncompliant, data.noncompliant_total);
    renderRules(data.top_rules);
    renderWindows(data.windows);
    if (drill) await loadDrill(false);
    status("updated " + shortTs(data.generated_at) + " · " + data.ingest.ingested + " events ingested");
    document.body.dataset.loaded = "1";
  }

  async function exportCsv() {
    const blob = await (await api("/api/report.csv", filterParams())).blob();
    const url = URL.createObjectURL(blob);
    const a = el("a");
    a.href = url;
    a.download = "enforcer-report.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  document.addEventListener("DOMContentLoaded", () => {
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
    $("export-csv").addEventListener("click", () => exportCsv().catch(handleError));
    $("drill-close").addEventListener("click", () => { $("drill").hidden = true; drill = null; });
    $("drill-more").addEventListener("click", () => loadDrill(true).catch(handleError));
    load().catch(handleError);
  });
})();
