/* adpulse dashboard: filters in the URL, numbers from /api/v1, live via the SSE stream. */
"use strict";
(function () {
  const API = "/api/v1";
  const FILTERS = ["campaign", "ad", "platform", "location", "gender", "age_band", "interest"];
  const RANGES = { "15m": 15, "1h": 60, "24h": 1440, "7d": 10080 };
  const MIN_REFRESH_MS = 3000; // at most one refetch of the charts per 3 s
  const TILES = [
    ["impressions", "Impressions", "int"],
    ["clicks", "Clicks", "int"],
    ["conversions", "Conversions (all)", "int"],
    ["revenue", "Revenue", "money"],
    ["ctr", "CTR", "pct"],
    ["conversion_rate", "Conversion rate", "pct"],
    ["revenue_per_conversion", "Revenue / conversion", "money"],
    ["latency_p50", "Latency p50", "sec"],
    ["latency_p90", "Latency p90", "sec"],
  ];
  const BREAKDOWNS = ["platform", "location", "gender", "age_band", "interest"];
  // "vs previous" compares only when the previous period holds at least this share of the
  // current one's impressions (and MIN_PREVIOUS of them): a thin period (a backfill of
  // another rate, the pipeline's first minutes) says "new" rather than +80,000 %.
  const MIN_PREVIOUS_SHARE = 0.1;
  const MIN_PREVIOUS = 100;
  const MAX_BARS = 12; // values per breakdown chart
  const HAS_CHARTS = typeof window.Chart === "function";
  const charts = {};
  const form = document.getElementById("filters");
  let dims = null;
  let lastSignal = null;
  let lastFetch = 0;
  let pending = null;
  let inflight = false;
  let source = null;

  // --- formatting ------------------------------------------------------------------------
  const nf0 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const nf2 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  function fmt(value, kind) {
    if (value === null || value === undefined) return "—";
    if (kind === "int") return nf0.format(value);
    if (kind === "money") return nf2.format(value);
    if (kind === "pct") return (value * 100).toFixed(2) + "%";
    if (kind === "pp") return (value >= 0 ? "+" : "") + (value * 100).toFixed(2) + " pp";
    if (kind === "sec") return nf0.format(value) + " s";
    return String(value);
  }
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  // "YYYY-MM-DDTHH:MM" in UTC (datetime-local inputs and the API's naive form are UTC here)
  function isoMinute(date) { return date.toISOString().slice(0, 16); }
  function parseUtc(text) { return text ? new Date(text.endsWith("Z") ? text : text + "Z") : null; }

  // --- state <-> URL -----------------------------------------------------------------------
  function readState() {
    const q = new URLSearchParams(location.search);
    const state = { range: q.get("range") || (q.get("from") ? "custom" : "15m") };
    if (!(state.range in RANGES) && state.range !== "custom") state.range = "15m";
    for (const k of FILTERS.concat(["from", "to"])) if (q.get(k)) state[k] = q.get(k);
    return state;
  }
  function writeState(state) {
    const q = new URLSearchParams();
    q.set("range", state.range);
    for (const k of FILTERS) if (state[k]) q.set(k, state[k]);
    if (state.range === "custom") { if (state.from) q.set("from", state.from); if (state.to) q.set("to", state.to); }
    history.replaceState(null, "", "?" + q.toString());
  }
  function formState() {
    const state = { range: form.range.value };
    for (const k of FILTERS) if (form[k].value) state[k] = form[k].value;
    if (state.range === "custom") { state.from = form.from.value; state.to = form.to.value; }
    return state;
  }

  // The time window of a state: quick ranges end at the newest data when that is older than
  // now (a replayed data set opens on its data, not on an empty page).
  function windowOf(state) {
    if (state.range === "custom") {
      const start = parseUtc(state.from), end = parseUtc(state.to);
      return { start, end, minutes: start && end ? (end - start) / 60000 : null };
    }
    const minutes = RANGES[state.range];
    let end = new Date(Math.floor(Date.now() / 60000) * 60000 + 60000);
    const last = dims && dims.data_range && parseUtc(dims.data_range.last_minute);
    if (last) {
      const afterLast = new Date(last.getTime() + 60000);
      if (afterLast < end) end = afterLast;
    }
    return { start: new Date(end.getTime() - minutes * 60000), end, minutes };
  }
  function params(state, win, extra) {
    const q = new URLSearchParams();
    for (const k of FILTERS) if (state[k]) q.set(k, state[k]);
    if (win.start) q.set("from", isoMinute(win.start));
    if (win.end) q.set("to", isoMinute(win.end));
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }
  async function get(path, query) {
    for (;;) {
      const response = await fetch(API + path + (query ? "?" + query : ""), { credentials: "same-origin" });
      // 401: this server requires a read key; ask once (every request waits for the same answer)
      if (response.status === 401) { await askForKey(); continue; }
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || body.error || response.statusText);
      return body;
    }
  }

  // --- the read key ----------------------------------------------------------------------------
  // The key goes to the server once, which keeps it in an HttpOnly, SameSite=Strict cookie:
  // scripts (this one included) never read it back, and the live stream sends it too.
  let asking = null;
  function askForKey() {
    if (asking) return asking;
    const keyForm = document.getElementById("key-form");
    const message = document.getElementById("key-error");
    keyForm.hidden = false;
    keyForm.key.focus();
    asking = new Promise((resolve) => {
      keyForm.onsubmit = async (event) => {
        event.preventDefault();
        message.textContent = "";
        const response = await fetch(API + "/session", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ key: keyForm.key.value.trim() }),
        });
        if (response.ok) {
          keyForm.reset();
          keyForm.hidden = true;
          asking = null;
          resolve();
          return;
        }
        let detail = response.statusText;
        try { const body = await response.json(); detail = body.detail || body.error || detail; } catch (_) { /* keep the status */ }
        message.textContent = detail;
      };
    });
    return asking;
  }

  // --- pickers -----------------------------------------------------------------------------
  // The picker shows the stored spelling of a value the URL gives in another case
  // (?platform=mobile picks "Mobile", as the API matches it); returns what it picked.
  function fill(select, values, chosen) {
    const keep = select.options[0];
    select.replaceChildren(keep);
    for (const v of values) select.append(el("option", { value: String(v) }, String(v)));
    if (chosen) {
      const stored = values.map(String).find((v) => v.toLowerCase() === chosen.toLowerCase());
      if (stored !== undefined) chosen = stored;
      else select.append(el("option", { value: chosen }, chosen));
    }
    select.value = chosen || "";
    return chosen;
  }
  async function loadDimensions(state) {
    dims = await get("/dimensions");
    const lists = {
      campaign: dims.campaigns, ad: dims.ad_ids, platform: dims.platforms, location: dims.locations,
      gender: dims.genders, age_band: dims.age_bands, interest: dims.interests,
    };
    for (const k of FILTERS) {
      const picked = fill(form[k], lists[k] || [], state[k]);
      if (picked) state[k] = picked;
    }
  }
  function showState(state) {
    form.range.value = state.range;
    form.classList.toggle("is-custom", state.range === "custom");
    if (state.range === "custom") {
      form.from.value = state.from || "";
      form.to.value = state.to || "";
    }
  }

  // --- rendering ---------------------------------------------------------------------------
  function comparable(now, before) {
    if (!before) return false;
    return before.impressions >= MIN_PREVIOUS && before.impressions >= MIN_PREVIOUS_SHARE * now.impressions;
  }
  // The demo's backfill (health.live.history) runs at the live rate only from dense_from
  // on: a previous period reaching into the thinner history before is not compared.
  function thinnedBefore(win, history) {
    if (!history || !history.dense_from || !win.start || !win.end) return null;
    const denseFrom = parseUtc(history.dense_from), first = parseUtc(history.start);
    const prevStart = new Date(win.start - (win.end - win.start));
    return denseFrom > first && prevStart < denseFrom && win.start > first ? denseFrom : null;
  }
  function renderThinned(win, history) {
    const note = document.getElementById("thinned");
    const inWindow = history && history.dense_from && win.start && parseUtc(history.dense_from) > win.start;
    note.hidden = !inWindow;
    note.textContent = inWindow ? "History before " + history.dense_from.slice(0, 16).replace("T", " ") + " UTC is the demo's thinned backfill (down to " + nf2.format(history.thinnest_rate) + " events/s against " + fmt(history.live_rate, "int") + "/s live): lower there is not a drop in traffic." : "";
  }
  function renderTiles(now, before, win, history) {
    const box = document.getElementById("tiles");
    box.replaceChildren();
    const thinned = thinnedBefore(win, history);
    const compare = comparable(now, before) && !thinned;
    for (const [key, label, kind] of TILES) {
      const value = now[key], prev = before ? before[key] : null;
      const tile = el("div", { class: "tile", "data-key": key });
      tile.append(el("span", { class: "label" }, label));
      const v = el("span", { class: "value", "data-value": value === null ? "" : String(value) }, fmt(value, kind));
      tile.append(v);
      if (key === "conversions") {
        tile.append(el("span", { class: "sub", title: "the conversion rate and latency count attributed conversions only" }, "attributed: " + fmt(now.attributed_conversions, "int")));
      }
      let delta = "no previous data", cls = "delta";
      if (value !== null && prev !== null && prev !== undefined) {
        if (thinned) delta = "previous: thinned backfill";
        else if (!compare) delta = before.impressions === 0 ? "no previous data" : "new vs previous";
        else if (prev === 0) delta = value === 0 ? "±0 vs previous" : "new vs previous";
        else {
          const change = (value - prev) / Math.abs(prev) * 100;
          delta = (change >= 0 ? "▲ +" : "▼ ") + change.toFixed(1) + "% vs previous";
          cls += change >= 0 ? " up" : " down";
        }
      }
      const why = thinned ? " (reaches into the demo's backfill before " + isoMinute(thinned).replace("T", " ") + " UTC, generated thinner than live: not compared)"
        : compare ? "" : " (too few impressions before to compare: " + fmt(before ? before.impressions : null, "int") + ")";
      tile.append(el("span", { class: cls, title: "previous " + (win.minutes || "") + " min: " + fmt(prev, kind) + why }, delta));
      box.append(tile);
    }
  }
  // A table wider than its card scrolls sideways; say so under it, and shade the cut edge.
  function markCut() {
    for (const box of document.querySelectorAll(".scroll")) {
      let hint = box.nextElementSibling;
      if (!hint || !hint.classList.contains("scroll-hint")) {
        hint = el("p", { class: "scroll-hint" }, "scroll sideways for more →");
        box.after(hint);
      }
      box.classList.toggle("cut", box.scrollWidth > box.clientWidth + 1);
    }
  }
  function table(id, columns, rows) { // columns: [key, label, kind]; no kind: text that may wrap
    const t = document.getElementById(id);
    t.replaceChildren();
    const head = el("tr");
    for (const [, label, kind] of columns) head.append(el("th", kind ? {} : { class: "text" }, label));
    t.append(head);
    if (!rows.length) { const tr = el("tr"); tr.append(el("td", { colspan: columns.length }, "no data")); t.append(tr); }
    for (const row of rows) {
      const tr = el("tr");
      for (const [key, , kind] of columns) tr.append(el("td", kind ? {} : { class: "text" }, fmt(row[key], kind)));
      t.append(tr);
    }
  }
  const X_TICKS = { ticks: { maxTicksLimit: 8, maxRotation: 0, font: { size: 10 } } };
  const EVERY_LABEL = { ticks: { autoSkip: false, font: { size: 10 } } };
  const COLORS = ["#3559e0", "#e07a35", "#0a9d58", "#b42318", "#7a35e0", "#35b9e0", "#e0c235", "#667085"];
  function chart(id, type, labels, datasets, options) {
    const canvas = document.getElementById(id);
    if (!HAS_CHARTS) {
      const box = canvas.parentElement;
      let fb = box.querySelector(".fallback");
      if (!fb) { fb = el("div", { class: "fallback" }); box.append(fb); canvas.hidden = true; }
      fb.textContent = datasets.map((d) => d.label + ": " + d.data.length + " points").join(" · ") + " (chart library not installed)";
      return;
    }
    datasets.forEach((d, i) => { d.borderColor = d.borderColor || COLORS[i % COLORS.length]; d.backgroundColor = d.backgroundColor || COLORS[i % COLORS.length]; });
    if (charts[id]) {
      charts[id].data.labels = labels;
      charts[id].data.datasets = datasets;
      charts[id].update("none");
      return;
    }
    charts[id] = new window.Chart(canvas, {
      type, data: { labels, datasets },
      options: Object.assign({
        responsive: true, maintainAspectRatio: false, animation: false,
        elements: { point: { radius: 0 }, line: { borderWidth: 1.5 } },
        plugins: { legend: { labels: { boxWidth: 10, font: { size: 11 } } } },
        scales: { x: { ticks: { maxTicksLimit: 8, font: { size: 10 } } }, y: { ticks: { font: { size: 10 } } } },
      }, options || {}),
    });
  }
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  // "Nov 28 05:00" per hour, "05:17" per minute (UTC)
  function bucketLabel(text, bucket) {
    const t = parseUtc(text.replace(/Z$/, ""));
    const hm = text.slice(11, 16);
    return bucket === "hour" ? MONTHS[t.getUTCMonth()] + " " + t.getUTCDate() + " " + hm : hm;
  }
  // The last bucket is partial when it ends after the window or after now (still filling):
  // drawn dashed (lines) or pale (bars), its label marked, and said above the charts.
  function partialLast(rows, bucket, win) {
    if (!rows.length) return false;
    const ends = parseUtc(rows[rows.length - 1].bucket.replace(/Z$/, "")).getTime() + (bucket === "hour" ? 3600000 : 60000);
    return ends > Date.now() || (win.end !== null && ends > win.end.getTime());
  }
  function renderSeries(rows, bucket, win) {
    const partial = partialLast(rows, bucket, win);
    const labels = rows.map((r) => bucketLabel(r.bucket, bucket));
    if (partial) labels[labels.length - 1] += " (partial)";
    const note = document.getElementById("partial");
    note.hidden = !partial;
    note.textContent = partial ? "The last " + bucket + " (" + labels[labels.length - 1].replace(" (partial)", "") + ") is not complete yet: drawn dashed or pale, it is not a drop in traffic." : "";
    const last = rows.length - 1;
    const dashed = { borderDash: (ctx) => partial && ctx.p1DataIndex === last ? [4, 4] : undefined };
    const col = (k, scale) => rows.map((r) => r[k] === null ? null : r[k] * (scale || 1));
    const line = (d) => Object.assign(d, { segment: dashed });
    chart("c-volume", "line", labels, [
      line({ label: "impressions", data: col("impressions"), yAxisID: "y" }),
      line({ label: "clicks", data: col("clicks"), yAxisID: "y1" }),
      line({ label: "conversions", data: col("conversions"), yAxisID: "y1" }),
    ], { scales: { x: X_TICKS, y: { position: "left" }, y1: { position: "right", grid: { drawOnChartArea: false } } } });
    const pale = rows.map((_, i) => partial && i === last ? "#b8c4f0" : COLORS[0]);
    chart("c-revenue", "bar", labels, [{ label: "revenue", data: col("revenue"), backgroundColor: pale, borderColor: pale }], { scales: { x: X_TICKS } });
    chart("c-rates", "line", labels, [
      line({ label: "CTR %", data: col("ctr", 100) }),
      line({ label: "conversion rate %", data: col("conversion_rate", 100) }),
    ], { scales: { x: X_TICKS } });
    chart("c-latency", "line", labels, [
      line({ label: "p50", data: col("latency_p50") }), line({ label: "p90", data: col("latency_p90") }),
    ], { scales: { x: X_TICKS } });
  }
  function renderHistogram(rows) {
    const span = (s) => s >= 3600 ? s / 3600 + " h" : s >= 60 ? s / 60 + " min" : s + " s";
    const labels = rows.map((r) => r.high_seconds === null ? "≥ " + span(r.low_seconds) : span(r.low_seconds) + "–" + span(r.high_seconds));
    chart("c-histogram", "bar", labels, [{ label: "attributed conversions", data: rows.map((r) => r.conversions) }],
      { scales: { x: { ticks: { autoSkip: false, maxRotation: 90, minRotation: 45, font: { size: 10 } } } } });
  }
  function renderBreakdowns(results) {
    const box = document.getElementById("breakdowns");
    BREAKDOWNS.forEach((dim, i) => {
      let card = document.getElementById("b-" + dim);
      if (!card) {
        card = el("figure", { class: "card", id: "b-" + dim });
        card.append(el("figcaption", { id: "cap-" + dim }, "By " + dim.replace("_", " ")));
        const wrap = el("div", { class: "chart" });
        wrap.append(el("canvas", { id: "c-b-" + dim }));
        card.append(wrap);
        box.append(card);
      }
      // at most MAX_BARS values: those with the most clicks, in the API's order
      const all = results[i].rows;
      const kept = new Set([...all].sort((a, b) => b.clicks - a.clicks).slice(0, MAX_BARS));
      const rows = all.filter((r) => kept.has(r));
      document.getElementById("cap-" + dim).textContent = "By " + dim.replace("_", " ") + (all.length > MAX_BARS ? " (the " + MAX_BARS + " with most clicks of " + all.length + ")" : "");
      // room for every bar's label: 14 px a bar pair at least
      card.querySelector(".chart").style.height = Math.max(200, 60 + 14 * rows.length * 1.5) + "px";
      chart("c-b-" + dim, "bar", rows.map((r) => r.value === null ? "(unknown)" : String(r.value)), [
        { label: "clicks", data: rows.map((r) => r.clicks) },
        { label: "conversions", data: rows.map((r) => r.conversions) },
      ], { indexAxis: "y", scales: { x: { ticks: { font: { size: 10 } } }, y: EVERY_LABEL } });
    });
  }
  function renderHealth(h) {
    const box = document.getElementById("health");
    box.replaceChildren();
    const live = h.live || {};
    const eps = live.events_per_second || {};
    const t = el("table");
    const head = el("tr");
    for (const c of ["stream", "events/s", "received", "dead letters", "duplicates", "late", "watermark"]) head.append(el("th", {}, c));
    t.append(head);
    for (const s of h.streams || []) {
      const tr = el("tr");
      const wm = (h.watermarks || []).filter((w) => w.stream === s.stream).map((w) => w.watermark).sort()[0];
      for (const v of [s.stream, eps[s.stream] === undefined ? "—" : fmt(eps[s.stream], "int"), fmt(s.received, "int"), fmt(s.rejected, "int"), fmt(s.duplicates, "int"), fmt(s.late, "int"), (wm || s.max_event_time || "—").toString().slice(0, 19)]) tr.append(el("td", {}, v));
      t.append(tr);
    }
    const scroll = el("div", { class: "scroll" });
    scroll.append(t);
    box.append(scroll);
    const dead = (h.dead_letters || []).map((d) => d.stream + " · " + d.reason + ": " + fmt(d.records, "int")).join(", ");
    const lines = [
      "last commit: " + (h.last_commit || "—"),
      "data: " + ((h.data_range || {}).first_minute || "—") + " → " + ((h.data_range || {}).last_minute || "—"),
      "dead letters by reason: " + (dead || "none"),
    ];
    if (live.lag_bytes !== undefined) lines.push("lag: " + (live.lag_bytes / 1e6).toFixed(1) + " MB not yet processed");
    for (const line of lines) box.append(el("p", { class: "small" }, line));
  }

  // --- loading -----------------------------------------------------------------------------
  async function refresh() {
    if (inflight) { pending = pending || setTimeout(() => { pending = null; refresh(); }, MIN_REFRESH_MS); return; }
    inflight = true;
    lastFetch = Date.now();
    const state = readState();
    const win = windowOf(state);
    const errorBox = document.getElementById("error");
    try {
      const q = params(state, win);
      document.body.dataset.from = win.start ? isoMinute(win.start) : "";
      document.body.dataset.to = win.end ? isoMinute(win.end) : "";
      document.getElementById("window").textContent = (win.start ? isoMinute(win.start).replace("T", " ") : "…") + " → " + (win.end ? isoMinute(win.end).replace("T", " ") : "…") + " UTC";
      let prevQuery = null;
      if (win.start && win.end) {
        const span = win.end - win.start;
        prevQuery = params(state, { start: new Date(win.start - span), end: win.start });
      }
      const bucket = win.minutes !== null && win.minutes <= 360 ? "minute" : "hour";
      const [now, before, series, trending, top, hist, health, ...breakdowns] = await Promise.all([
        get("/summary", q),
        prevQuery ? get("/summary", prevQuery) : Promise.resolve(null),
        get("/timeseries", params(state, win, { bucket })),
        get("/trending", q),
        get("/top-ads", q),
        get("/latency-histogram", q),
        get("/health"),
        ...BREAKDOWNS.map((d) => get("/breakdown/" + d, q)),
      ]);
      const history = (health.live || {}).history || null;
      renderTiles(now.summary, before && before.summary, win, history);
      renderThinned(win, history);
      renderSeries(series.rows, bucket, win);
      table("trending", [["campaign", "campaign"], ["previous_rate", "conv. rate before", "pct"], ["latest_rate", "conv. rate latest", "pct"], ["change", "change", "pp"], ["latest_clicks", "clicks", "int"]], trending.rows);
      const w = trending.window_minutes;
      document.getElementById("trending-note").textContent = "conversion rate = attributed conversions per click, in the latest " + w + " min vs the " + w + " min before; change in percentage points (pp); campaigns with at least " + trending.min_clicks + " clicks in both windows";
      table("top-ads", [["ad_id", "ad"], ["campaign", "campaign"], ["clicks", "clicks", "int"], ["conversions", "conv.", "int"], ["revenue", "revenue", "money"], ["conversion_rate", "conv. rate", "pct"]], top.rows);
      renderHistogram(hist.rows);
      renderBreakdowns(breakdowns);
      renderHealth(health);
      markCut();
      errorBox.hidden = true;
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
    } catch (err) {
      errorBox.textContent = "Could not load: " + err.message;
      errorBox.hidden = false;
    } finally {
      inflight = false;
    }
  }
  // The stream signals new data; refetch at most every MIN_REFRESH_MS.
  function onSignal(health) {
    const signal = JSON.stringify([health.data_range, health.last_commit]);
    if (signal === lastSignal) return;
    const first = lastSignal === null;
    lastSignal = signal;
    if (first) return;
    if (dims && health.data_range) dims.data_range = health.data_range;
    const wait = Math.max(0, lastFetch + MIN_REFRESH_MS - Date.now());
    if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, wait);
  }
  function connect() {
    if (!window.EventSource) return;
    if (source) source.close();
    const badge = document.getElementById("live");
    // no filters: every tab shares the server's one refresh of the same payload
    source = new EventSource(API + "/stream");
    source.addEventListener("open", () => { badge.textContent = "live"; badge.className = "live on"; });
    source.addEventListener("error", () => {
      badge.textContent = "reconnecting…"; badge.className = "live off";
      // refused (a key revoked meanwhile, or the server away): the browser gives up, we retry
      if (source.readyState === EventSource.CLOSED) setTimeout(async () => { try { await get("/health"); } catch (_) { /* shown by refresh */ } connect(); }, 5000);
    });
    source.addEventListener("update", (e) => {
      badge.textContent = "live"; badge.className = "live on";
      try { onSignal(JSON.parse(e.data).health || {}); } catch (_) { /* ignore a bad event */ }
    });
  }

  function apply() {
    const state = formState();
    if (state.range === "custom" && !state.from && !state.to) {
      const win = windowOf({ range: "1h" });
      state.from = isoMinute(win.start); state.to = isoMinute(win.end);
    }
    writeState(state);
    showState(state);
    refresh();
  }

  async function start() {
    if (!HAS_CHARTS) {
      const note = document.getElementById("note");
      note.textContent = "The chart library is not installed (run `npm ci` in src/adpulse/serving/web, which ./run does): numbers and tables only.";
      note.hidden = false;
    }
    const state = readState();
    showState(state);
    try { await loadDimensions(state); } catch (err) {
      const e = document.getElementById("error"); e.textContent = "Could not load filters: " + err.message; e.hidden = false;
    }
    writeState(state);
    form.addEventListener("change", apply);
    document.getElementById("reset").addEventListener("click", () => { history.replaceState(null, "", "?"); form.reset(); apply(); });
    window.addEventListener("popstate", () => { showState(readState()); refresh(); });
    window.addEventListener("resize", markCut);
    await refresh();
    connect();
  }
  start();
})();
