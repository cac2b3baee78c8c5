// Clipper dashboard: polls /dashboard/api/summary once a second, draws uPlot charts.
// The server keeps the per-second samples (a ring buffer); the page asks only for
// those newer than the last one it has (?since=t), so each poll is small.
(function () {
  "use strict";

  const SUMMARY = "/dashboard/api/summary";
  const PALETTE = ["#2f6fde", "#e8833a", "#1f9d55", "#9b59b6", "#d64545", "#17a2b8",
    "#c98a00", "#5d6d7e", "#e84393", "#00b894"];
  const state = {
    samples: [],      // [{t, apps, models, cache_hit_ratio, weights}], oldest first
    history: 300,
    summary: null,
    charts: {},       // id -> {plot, key}
    polls: 0,
    failures: 0,
  };
  window.clipperDashboard = state;  // for tests and curious operators

  // -- small DOM helpers (text only: names never go through innerHTML) -------------
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const child of children || []) node.append(child);
    return node;
  }
  function fmt(v, digits) {
    return v == null || Number.isNaN(v) ? "–" : Number(v).toFixed(digits);
  }
  function pct(v) { return v == null ? "–" : (100 * v).toFixed(1) + " %"; }
  function duration(s) {
    if (s == null) return "–";
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, sec = Math.floor(s % 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + sec + "s";
  }
  function latest(path) {
    for (let i = state.samples.length - 1; i >= 0; i--) {
      const v = path(state.samples[i]);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  // -- tables -----------------------------------------------------------------------
  function renderApps(apps) {
    const body = document.querySelector("#apps tbody");
    const rows = apps.map((a) => {
      const now = latest((s) => s.apps[a.name]) || {};
      const p99 = now.p99_ms;
      return el("tr", { "data-app": a.name }, [
        el("td", { text: a.name }),
        el("td", { text: fmt(a.slo_ms, a.slo_ms < 10 ? 1 : 0) + " ms" }),
        el("td", { text: a.policy }),
        el("td", {}, a.models.length ? a.models.map((m) => el("span", { class: "tag", text: m }))
          : [el("span", { class: "dead", text: "none linked" })]),
        el("td", { class: "num", text: fmt(now.qps, 1) }),
        el("td", { class: "num" + (p99 > a.slo_ms ? " over" : ""), text: p99 == null ? "–" : fmt(p99, 1) + " ms" }),
        el("td", { class: "num", text: pct(now.default_ratio) }),
        el("td", { class: "num" + (now.shed_qps > 0 ? " over" : ""), text: fmt(now.shed_qps, 1) }),
      ]);
    });
    body.replaceChildren(...(rows.length ? rows
      : [el("tr", {}, [el("td", { colspan: "8", class: "empty", text: "No applications yet." })])]));
  }

  function renderModels(models) {
    const body = document.querySelector("#models tbody");
    const rows = models.map((m) => el("tr", { "data-model": m.model + ":" + m.version }, [
      el("td", { text: m.model }),
      el("td", {}, [el("span", { class: "tag" + (m.current ? " current" : ""),
        text: m.version + (m.current ? " (current)" : "") })]),
      el("td", {}, [el("span", { class: "live", text: m.live + " live" }),
        document.createTextNode(" · "),
        el("span", { class: m.dead ? "dead" : "", text: m.dead + " dead" })]),
      el("td", {}, (m.devices || []).map((d) => el("span", { class: "tag", text: d }))),
      el("td", { class: "num", text: String(m.restarts) }),
      el("td", { class: "num", text: m.max_batch_size == null ? "–" : String(m.max_batch_size) }),
      el("td", { class: "num", text: m.queue_depth == null ? "–" : String(m.queue_depth) }),
    ]));
    body.replaceChildren(...(rows.length ? rows
      : [el("tr", {}, [el("td", { colspan: "7", class: "empty", text: "No models yet." })])]));
  }

  // Shown only while a rollout runs: its two versions side by side, per poll.
  function renderRollouts(rollouts) {
    const card = document.getElementById("rollouts-card");
    card.hidden = !rollouts || !rollouts.length;
    if (card.hidden) return;
    const rows = [];
    for (const r of rollouts) {
      let comparison = "P(new better) " + fmt(r.p_new_better, 3);
      if (r.shadow) {
        comparison = "agreement " + pct(r.shadow.agreement) + ", dropped " + r.shadow.dropped;
      }
      for (const role of ["base", "new"]) {
        const v = r[role];
        rows.push(el("tr", { "data-model": r.model, "data-role": role }, [
          el("td", { text: role === "base" ? r.model : "" }),
          el("td", { text: role === "base" ? r.mode : "" }),
          el("td", { text: v.version + " (" + role + ")" }),
          el("td", { class: "num", text: role === "new" ? pct(r.new_share) : "" }),
          el("td", { class: "num", text: String(v.queries) }),
          el("td", { class: "num", text: pct(v.error_rate) }),
          el("td", { class: "num", text: pct(v.slo_miss_rate) }),
          el("td", { class: "num", text: fmt(v.latency_p50_ms, 2) + " ms" }),
          el("td", { class: "num", text: fmt(v.latency_p99_ms, 2) + " ms" }),
          el("td", { class: "num", text: pct(v.accuracy) }),
          el("td", { class: "num", text: String(v.feedback) }),
          el("td", { text: role === "new" ? comparison : "" }),
        ]));
      }
    }
    document.querySelector("#rollouts tbody").replaceChildren(...rows);
  }

  // Shown only where the server has GPUs (the summary then has ``gpus``).
  function renderGpus(gpus) {
    const card = document.getElementById("gpus-card");
    card.hidden = !gpus || !gpus.length;
    if (card.hidden) return;
    const gib = (b) => fmt(b / 1073741824, 1);
    document.querySelector("#gpus tbody").replaceChildren(...gpus.map((g) => el("tr", {}, [
      el("td", { text: String(g.index) }),
      el("td", { text: g.name }),
      el("td", { class: "num", text: pct(g.utilization) }),
      el("td", { class: "num", text: gib(g.memory_used_bytes) + " / " + gib(g.memory_total_bytes) + " GiB" }),
    ])));
  }

  // -- charts -------------------------------------------------------------------------
  function chartCard(id, title, hint) {
    let card = document.getElementById("card-" + id);
    if (!card) {
      card = el("div", { class: "card", id: "card-" + id }, [
        el("h2", { text: title }, hint ? [el("span", { class: "hint", text: hint })] : []),
        el("div", { class: "plot" }),
      ]);
      document.getElementById("charts").append(card);
    } else {
      card.querySelector("h2").firstChild.textContent = title;
    }
    return card;
  }

  // Counts and latencies read best from zero up, with a little headroom.
  function fromZero(u, lo, hi) {
    return [0, hi == null || !(hi > 0) ? 1 : hi * 1.1];
  }

  function lastValue(values) {
    for (let i = (values || []).length - 1; i >= 0; i--) {
      if (values[i] != null) return values[i];
    }
    return null;
  }

  function plotWidth(card) { return Math.max(300, card.clientWidth - 28); }

  // series: [{label, color, dash?, digits?}]; columns: [xs, ys...] aligned with series.
  function draw(id, title, hint, series, columns, yRange) {
    const card = chartCard(id, title, hint);
    const key = JSON.stringify(series.map((s) => s.label));
    let chart = state.charts[id];
    if (chart && chart.key !== key) { chart.plot.destroy(); chart = null; }
    if (!chart) {
      const holder = card.querySelector(".plot");
      holder.replaceChildren();
      const opts = {
        width: plotWidth(card),
        height: 200,
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: yRange || fromZero } },
        axes: [{ stroke: "#66758a", grid: { stroke: "#eef1f5" } },
          { stroke: "#66758a", grid: { stroke: "#eef1f5" }, size: 52 }],
        series: [{
          value: (u, v, si, idx) => {
            const t = idx == null ? lastValue(u.data[0]) : v;
            return t == null ? "–" : new Date(t * 1000).toLocaleTimeString();
          },
        }].concat(series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.width || 1.5,
          dash: s.dash,
          spanGaps: false,
          points: { show: false },
          // Off the plot, the legend shows the newest value instead of a dash.
          value: (u, v, si, idx) => fmt(idx == null ? lastValue(u.data[si]) : v,
            s.digits == null ? 2 : s.digits),
        }))),
      };
      chart = { plot: new uPlot(opts, columns, holder), key: key, card: card };
      state.charts[id] = chart;
    } else {
      chart.plot.setData(columns);
    }
  }

  function column(fn) { return state.samples.map(fn); }

  function renderCharts(summary) {
    const xs = column((s) => s.t);
    const apps = summary.apps;
    const wanted = new Set();
    const color = (i) => PALETTE[i % PALETTE.length];
    const use = (id) => { wanted.add(id); return id; };

    draw(use("throughput"), "Throughput", "queries/s per app",
      apps.map((a, i) => ({ label: a.name, color: color(i), digits: 1 })),
      [xs].concat(apps.map((a) => column((s) => (s.apps[a.name] ? s.apps[a.name].qps : null)))));

    draw(use("defaults"), "Default outputs", "share of queries answered with the default",
      apps.map((a, i) => ({ label: a.name, color: color(i), digits: 3 })),
      [xs].concat(apps.map((a) => column((s) => (s.apps[a.name] ? s.apps[a.name].default_ratio : null)))),
      [0, 1]);

    draw(use("shed"), "Shed load", "queries/s answered at arrival or refused with 503 (overloaded)",
      apps.map((a, i) => ({ label: a.name, color: color(i), digits: 1 })),
      [xs].concat(apps.map((a) => column((s) => (s.apps[a.name] ? s.apps[a.name].shed_qps : null)))));

    apps.forEach((a) => {
      draw(use("latency-" + a.name), "Latency: " + a.name,
        "p50 and p99 (ms) against the SLO; p99 of default answers apart", [
        { label: "p50", color: "#2f6fde", digits: 1 },
        { label: "p99", color: "#e8833a", digits: 1 },
        { label: "p99 defaults", color: "#8a8f98", dash: [2, 3], digits: 1 },
        { label: "SLO", color: "#d64545", dash: [6, 4], width: 1.5, digits: 0 },
      ], [xs,
        column((s) => (s.apps[a.name] ? s.apps[a.name].p50_ms : null)),
        column((s) => (s.apps[a.name] ? s.apps[a.name].p99_ms : null)),
        column((s) => (s.apps[a.name] ? s.apps[a.name].default_p99_ms : null)),
        column(() => a.slo_ms)]);
    });

    const modelKeys = summary.models.map((m) => m.model + ":" + m.version)
      .filter((k) => state.samples.some((s) => s.models[k]));
    draw(use("batch"), "Batch size", "mean batch size per second, per model version",
      modelKeys.map((k, i) => ({ label: k, color: color(i), digits: 1 })),
      [xs].concat(modelKeys.map((k) => column((s) => (s.models[k] ? s.models[k].batch_size : null)))));

    draw(use("cache"), "Cache hit ratio", "all models", [
      { label: "hit ratio", color: "#17a2b8", digits: 3 },
    ], [xs, column((s) => s.cache_hit_ratio)], [0, 1]);

    apps.filter((a) => a.models.length > 1 || a.policy !== "single").forEach((a) => {
      draw(use("weights-" + a.name), "Selection weights: " + a.name, a.policy,
        a.models.map((m, i) => ({ label: m, color: color(i), digits: 3 })),
        [xs].concat(a.models.map((m) => column((s) => {
          const w = s.weights[a.name];
          return w && w[m] != null ? w[m] : null;
        }))));
    });

    for (const id of Object.keys(state.charts)) {  // apps deleted since
      if (!wanted.has(id)) {
        state.charts[id].plot.destroy();
        state.charts[id].card.remove();
        delete state.charts[id];
      }
    }
  }

  function renderHeader(summary) {
    document.getElementById("uptime").textContent = "uptime " + duration(summary.uptime_s);
    const live = summary.models.reduce((n, m) => n + m.live, 0);
    const dead = summary.models.reduce((n, m) => n + m.dead, 0);
    document.getElementById("replicas").textContent =
      "replicas " + live + " live" + (dead ? ", " + dead + " dead" : "");
    const c = summary.cache;
    document.getElementById("cache").textContent = c
      ? "cache " + c.entries + " entries, " + (c.bytes / 1048576).toFixed(1) + " MiB"
      : "cache off";
  }

  function setConnection(ok) {
    const pill = document.getElementById("conn");
    pill.className = "pill " + (ok ? "ok" : "bad");
    pill.textContent = ok ? "live" : "disconnected";
  }

  // -- polling ------------------------------------------------------------------------
  async function poll() {
    const last = state.samples.length ? state.samples[state.samples.length - 1].t : null;
    try {
      const response = await fetch(SUMMARY + (last == null ? "" : "?since=" + last),
        { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const summary = await response.json();
      state.history = summary.history || state.history;
      state.samples.push(...summary.samples);
      if (state.samples.length > state.history) {
        state.samples.splice(0, state.samples.length - state.history);
      }
      state.summary = summary;
      state.polls += 1;
      renderHeader(summary);
      renderApps(summary.apps);
      renderModels(summary.models);
      renderGpus(summary.gpus);
      renderRollouts(summary.rollouts);
      renderCharts(summary);
      setConnection(true);
    } catch (err) {
      state.failures += 1;
      setConnection(false);
    }
    setTimeout(poll, 1000);
  }

  window.addEventListener("resize", () => {
    for (const chart of Object.values(state.charts)) {
      chart.plot.setSize({ width: plotWidth(chart.card), height: 200 });
    }
  });
  poll();
})();
