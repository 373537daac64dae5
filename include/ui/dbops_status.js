// The DB Ops page: everything shown comes from the JSON API beside the page
// (api/recovery, api/overview, api/offsite, api/table-sizes, api/pitr). No library, no network beyond the API.
"use strict";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "-";
  let n = Math.abs(bytes);
  const sign = bytes < 0 ? "-" : "";
  for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
    if (n < 1024 || unit === "TiB") return unit === "B" ? `${sign}${Math.round(n)} B` : `${sign}${n.toFixed(1)} ${unit}`;
    n /= 1024;
  }
}

function age(seconds) {
  if (seconds < 0) return "in the future";
  const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600), m = Math.floor((seconds % 3600) / 60);
  return d > 0 ? `${d}d ${h}h` : h > 0 ? `${h}h ${m}m` : `${m}m`;
}

function rate(value) {
  return value === null || value === undefined ? "-" : `${value > 0 ? "+" : ""}${size(value)}/day`;
}

function flag(ok, yes, no) {
  return el("span", { class: ok ? "ok" : "bad" }, ok ? yes : no);
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${await response.text()}`);
  return response.json();
}

function errorBox(message) {
  return el("p", { class: "error" }, message);
}

// ------------------------------------------------------------------ backups

function drillText(drill) {
  if (!drill) return el("span", { class: "empty" }, "never drilled");
  const text = drill.ok ? `passed ${drill.at || ""}` : `FAILED ${drill.at || ""}: ${drill.differences.length} difference(s)`;
  return el("span", { class: drill.ok ? "ok" : "bad", title: (drill.differences || []).join("\n") }, text);
}

function backupRow(series, b) {
  return el("tr", { "data-backup-id": b.backup_id },
    el("td", { class: "backup-id" }, b.backup_id),
    el("td", { class: "finished" }, b.finished_at),
    el("td", { class: "age num" }, age(b.age_seconds)),
    el("td", { class: "size num" }, size(b.data_bytes)),
    el("td", { class: "bytes num" }, String(b.data_bytes)),
    el("td", { class: "sidecars num", title: "manifest.json, source description, verify/drill/pin/offsite results" },
      size(b.sidecar_bytes)),
    el("td", { class: "verified" }, flag(b.verified, "yes", "no")),
    el("td", { class: "drill" }, drillText(b.drill)),
    el("td", { class: "offsite", "data-key": `${series.series}/${b.backup_id}` }, el("span", { class: "empty" }, "…")),
    el("td", { class: "retention", title: b.retention.reason },
      b.retention.keep ? el("span", { class: "ok" }, "keep") : el("span", { class: "warn" }, "would delete"),
      b.pinned ? [" ", el("span", { class: "pinned", title: b.pin_reason }, "pinned")] : null),
  );
}

function seriesBlock(series) {
  const good = series.last_good;
  const summary = el("div", { class: "summary" },
    el("span", {}, "backups: ", el("b", { class: "count" }, String(series.count))),
    el("span", {}, "verified: ", el("b", { class: "verified-count" }, String(series.verified_count))),
    el("span", {}, "data: ", el("b", { class: "total-size" }, size(series.data_bytes)),
      " + sidecar files: ", el("span", { class: "sidecar-size" }, size(series.sidecar_bytes))),
    good
      ? el("span", {}, "last good: ", el("b", { class: "last-good-id" }, good.backup_id),
          ` (${age(good.age_seconds)} ago, ${size(good.data_bytes)}, verified, offsite: `,
          el("span", { class: "offsite last-good-offsite", "data-key": `${series.series}/${good.backup_id}` }, "…"), ")")
      : el("span", { class: "bad last-good-id" }, "no verified backup"),
    el("span", {}, "last drill: ", series.last_drill
      ? el("span", { class: "last-drill" }, `${series.last_drill.backup_id} `, drillText(series.last_drill))
      : el("span", { class: "last-drill empty" }, "never drilled")),
    el("span", { class: "retention-state" }, "retention now: ",
      el("b", {}, `${series.retention.keep} kept`), ", ",
      el("b", { class: series.retention.would_delete.length ? "warn" : "" }, `${series.retention.would_delete.length} would be deleted`)),
  );
  const table = el("table", { class: "backups" },
    el("thead", {}, el("tr", {}, ["backup id", "finished (UTC)", "age", "size", "bytes", "sidecars", "verified", "drill", "offsite", "retention"]
      .map((h) => el("th", { class: ["age", "size", "bytes", "sidecars"].includes(h) ? "num" : null }, h)))),
    el("tbody", {}, series.backups.map((b) => backupRow(series, b))),
  );
  return el("div", { class: "series", "data-series": series.series },
    series.subject ? el("h3", {}, series.series) : null, summary, table);
}

function storeBlock(store) {
  const body = store.error
    ? errorBox(store.error)
    : store.series.length === 0
      ? el("p", { class: "empty no-backup" }, store.status)
      : store.series.map(seriesBlock);
  return el("div", { class: "store", "data-store": store.store }, el("h3", {}, store.store), body);
}

function maintenanceBlock(data) {
  if (data.maintenance_error) return errorBox(data.maintenance_error);
  const m = data.maintenance;
  if (!m) return el("p", { class: "empty" }, "no maintenance run recorded yet");
  const counts = Object.entries(m.counts).map(([kind, actions]) =>
    `${kind}: ${Object.entries(actions).map(([a, n]) => `${n} ${a}`).join(", ")}`);
  return el("div", { "data-run-id": m.run_id },
    el("p", {}, "run ", el("b", { class: "run-id" }, m.run_id), ` started ${m.started_at}, `,
      m.finished_at ? `finished ${m.finished_at}` : el("span", { class: "warn" }, `${m.unfinished} action(s) never finished`)),
    el("p", { class: "counts" }, counts.join("; ") || "nothing to do"),
    el("table", {},
      el("thead", {}, el("tr", {}, ["kind", "target", "action", "before", "after", "ms", "note"].map((h) => el("th", {}, h)))),
      el("tbody", {}, m.rows.map((r) => el("tr", {},
        el("td", {}, r.kind), el("td", {}, r.target), el("td", {}, r.action),
        el("td", { class: "num" }, size(r.before_bytes)), el("td", { class: "num" }, size(r.after_bytes)),
        el("td", { class: "num" }, r.duration_ms ?? "-"), el("td", {}, r.note))))));
}

// ------------------------------------------------------------------ point-in-time recovery

function seconds(value) {
  return value === null || value === undefined ? "-" : `${value < 10 ? value.toFixed(1) : Math.round(value)} s`;
}

function windowBlock(data) {
  const w = data.window, check = data.last_check;
  if (!w.earliest || !w.latest) {
    return el("p", { class: "window bad", "data-proven": "false" },
      "no recovery window: ", el("span", { class: "window-none" },
        check.status === "never checked" ? "the WAL check has never run" : "the last WAL check found none"));
  }
  return el("p", { class: "window", "data-proven": String(w.proven) },
    "recoverable from ", el("b", { class: "window-earliest" }, w.earliest),
    " to ", el("b", { class: "window-latest" }, w.latest), " (UTC) ",
    w.proven
      ? el("span", { class: "ok" }, `proven by the WAL check ${age(check.age_s)} ago`)
      : el("span", { class: "warn" }, `not proven: the last WAL check is ${check.status}`));
}

function receiverBlock(r) {
  const good = r.state === "streaming";
  const label = el("b", { class: `receiver-state ${good ? "ok" : r.state === "starting" ? "warn" : "bad"}` }, r.state);
  return el("div", { class: "summary receiver" },
    el("span", {}, "WAL receiver: ", label,
      r.heartbeat_age_s === null ? "" : ` (heartbeat ${seconds(r.heartbeat_age_s)} ago)`,
      r.error ? el("span", { class: "bad receiver-error" }, ` ${r.error}`) : ""),
    el("span", {}, "lag: ", r.lag_s === null
      ? el("span", { class: "receiver-lag empty" }, "not measured")
      : el("b", { class: `receiver-lag ${r.lag_over_limit ? "bad" : ""}` }, `${seconds(r.lag_s)} (${size(r.lag_bytes)})`),
      r.lag_as_of ? ` at the last check` : ""),
    r.timeline === null ? null : el("span", {}, "timeline: ", el("b", {}, String(r.timeline))),
    r.last_sealed ? el("span", {}, "last sealed: ", el("b", { class: "last-sealed" }, String(r.last_sealed))) : null);
}

function checkBlock(check) {
  if (check.status === "never checked") {
    return el("div", { class: "check", "data-status": check.status },
      el("p", { class: "empty" }, "WAL check: never checked (dbops_wal_check has not run yet)"));
  }
  const verdict = check.ok ? el("span", { class: "ok" }, "passed") : el("span", { class: "bad" }, `FAILED: ${check.problems.length} problem(s)`);
  return el("div", { class: `check${check.stale ? " stale" : ""}`, "data-status": check.status },
    el("p", {}, "last WAL check: ", el("b", { class: "check-at" }, check.at || "-"),
      check.age_s === null ? "" : ` (${age(check.age_s)} ago${check.stale ? ", stale" : ""}) `, verdict,
      check.segments === null ? "" : `; ${check.segments} sealed segment(s), ${check.base_backups} base backup(s)`),
    check.ok ? null : el("ul", { class: "problems bad" }, check.problems.map((p) => el("li", {}, p))));
}

function baseBackupTable(data) {
  if (data.base_backups_error) return errorBox(data.base_backups_error);
  if (data.base_backups.length === 0) return el("p", { class: "empty no-base-backup" }, data.base_backups_status);
  return el("table", { class: "base-backups" },
    el("thead", {}, el("tr", {}, ["base backup", "finished (UTC)", "age", "size", "sidecars", "verified", "timeline", "start LSN",
      "stop LSN", "consistent at", "compression", "pinned", "drill"]
      .map((h) => el("th", { class: ["age", "size", "sidecars"].includes(h) ? "num" : null }, h)))),
    el("tbody", {}, data.base_backups.map((b) => el("tr", { "data-backup-id": b.backup_id },
      el("td", { class: "backup-id" }, b.backup_id),
      el("td", {}, b.finished_at),
      el("td", { class: "num" }, age(b.age_seconds)),
      el("td", { class: "size num" }, size(b.data_bytes)),
      el("td", { class: "sidecars num" }, size(b.sidecar_bytes)),
      el("td", { class: "verified" }, flag(b.verified, "yes", "no")),
      el("td", {}, b.details.timeline ?? "-"),
      el("td", {}, b.details.start_lsn ?? "-"),
      el("td", {}, b.details.stop_lsn ?? "-"),
      el("td", {}, b.details.consistent_at ?? "-"),
      el("td", {}, b.details.compression ?? "-"),
      el("td", { class: "pinned", title: b.pin_reason }, b.pinned ? "pinned" : ""),
      el("td", { class: "drill" }, drillText(b.drill))))));
}

function pitrBlock(data) {
  if (data.error) return [errorBox(data.error)];
  if (!data.enabled) return [el("p", { class: "empty pitr-off" }, data.message)];
  return [windowBlock(data), receiverBlock(data.receiver), checkBlock(data.last_check),
    el("h3", {}, "Base backups"), baseBackupTable(data)];
}

// ------------------------------------------------------------------ recovery points

const STATUS_TEXT = { green: "green", late: "late", failed: "FAILED", off: "off" };

function recoveryStore(store) {
  return el("div", { class: "recovery-store", "data-store": store.store, "data-status": store.status },
    el("b", { class: "store-name" }, store.store),
    el("span", { class: `badge ${store.status}` }, STATUS_TEXT[store.status] || store.status),
    store.reasons.length ? el("ul", { class: "reasons" }, store.reasons.map((r) => el("li", { class: "reason" }, r))) : null);
}

function recoveryBlock(data) {
  if (data.error && !data.stores.length) return [errorBox(data.error)];
  const dag = data.dag || {};
  const judged = dag.at
    ? el("span", { class: `dag-result${dag.stale ? " warn" : ""}` },
        `dbops_recovery_check last judged ${age(dag.age_s)} ago: ${dag.status}${dag.stale ? " (stale: is the DAG paused?)" : ""}`)
    : el("span", { class: "dag-result warn" }, dag.error || "dbops_recovery_check has not run yet");
  const l = data.limits || {};
  return [
    el("div", { class: "recovery-stores" }, data.stores.map(recoveryStore)),
    el("p", { class: "meta" }, `Checked now (${data.generated_at || "-"} UTC): newest verified backup under ${l.max_backup_age_hours} h, ` +
      `offsite copy under ${l.max_offsite_age_hours} h, passed drill under ${l.max_drill_age_days} days, nightly run, staging, disk. `, judged),
  ];
}

// ------------------------------------------------------------------ table sizes

function sizeChart(data) {
  const W = 760, H = 280, L = 70, R = 10, T = 10, B = 30;
  const times = data.captures.map((t) => Date.parse(t));
  const values = data.tables.flatMap((t) => t.points.map((p) => p[1]));
  if (times.length === 0 || values.length === 0) return el("p", { class: "empty" }, "no table sizes recorded yet");
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const vmax = Math.max(...values) * 1.05 || 1;
  const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - v / vmax) * (H - T - B);
  const chart = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "table sizes over time" });
  for (let i = 0; i <= 4; i++) {
    const v = (vmax * i) / 4;
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eef2f6" }));
    chart.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, size(v)));
  }
  for (const t of [t0, t1].filter((v, i, a) => a.indexOf(v) === i)) {
    chart.append(svg("text", { x: x(t), y: H - 10, "text-anchor": t === t0 && t1 !== t0 ? "start" : "end" },
      new Date(t).toISOString().slice(0, 16).replace("T", " ")));
  }
  data.tables.forEach((table, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = table.points.map((p) => `${x(Date.parse(p[0])).toFixed(1)},${y(p[1]).toFixed(1)}`);
    chart.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2, "data-table": table.table }));
    for (const p of table.points) chart.append(svg("circle", { cx: x(Date.parse(p[0])), cy: y(p[1]), r: 3, fill: color }));
  });
  const legend = el("div", { class: "legend" }, data.tables.map((t, i) =>
    el("span", {}, el("span", { class: "swatch", style: `background:${COLORS[i % COLORS.length]}` }), t.table)));
  return el("div", {}, chart, legend);
}

function growthTable(data) {
  if (data.tables.length === 0) return null;
  return el("table", { class: "growth" },
    el("thead", {}, el("tr", {}, ["table", "size", "captures", "growth 1d", "growth 7d", "growth 30d", "days to limit"]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, data.tables.map((t) => el("tr", { "data-table": t.table },
      el("td", {}, t.table), el("td", { class: "num total" }, size(t.total_bytes)),
      el("td", { class: "num captures" }, String(t.points.length)),
      el("td", { class: "num growth-1d" }, rate(t.growth_1d)), el("td", { class: "num growth-7d" }, rate(t.growth_7d)),
      el("td", { class: "num growth-30d" }, rate(t.growth_30d)),
      el("td", { class: "num" }, t.days_to_limit ?? "-")))));
}

// ------------------------------------------------------------------ loading

async function loadOverview() {
  const stores = document.getElementById("stores");
  const report = document.getElementById("maintenance-report");
  try {
    const data = await getJSON("api/overview");
    document.getElementById("generated").textContent = `As of ${data.generated_at || "-"} UTC, backup root ${data.backup_root}.`;
    const p = data.retention_policy;
    document.getElementById("policy").textContent =
      `Retention: keep ${p.retention_days} days, the newest of each of the last ${p.keep_weekly || 0} weeks and ${p.keep_monthly || 0} months, pinned backups, and at least ${p.min_keep} verified backups per series (evaluated now, nothing is deleted here).`;
    stores.replaceChildren(...(data.backup_error ? [errorBox(data.backup_error)] : data.stores.map(storeBlock)));
    report.replaceChildren(maintenanceBlock(data));
    document.body.dataset.overview = "loaded";
  } catch (err) {
    stores.replaceChildren(errorBox(String(err)));
    report.replaceChildren(errorBox(String(err)));
  }
}

async function loadOffsite() {
  try {
    const data = await getJSON("api/offsite");
    for (const cell of document.querySelectorAll(".offsite[data-key]")) {
      const targets = data.copies[cell.dataset.key] || [];
      cell.replaceChildren(targets.length ? el("span", { class: "ok" }, targets.join(", ")) : el("span", { class: "warn" }, "none"));
    }
    const problems = Object.entries(data.targets).filter(([, t]) => t.error).map(([name, t]) => `offsite ${name}: ${t.error}`);
    if (problems.length) document.getElementById("stores").prepend(...problems.map(errorBox));
  } catch (err) {
    document.getElementById("stores").prepend(errorBox(String(err)));
  }
  document.body.dataset.offsite = "loaded";
}

async function loadRecovery() {
  const body = document.getElementById("recovery-body");
  try {
    body.replaceChildren(...recoveryBlock(await getJSON("api/recovery")));
  } catch (err) {
    body.replaceChildren(errorBox(String(err)));
  }
  document.body.dataset.recovery = "loaded";
}

async function loadPitr() {
  const body = document.getElementById("pitr-body");
  try {
    body.replaceChildren(...pitrBlock(await getJSON("api/pitr")));
  } catch (err) {
    body.replaceChildren(errorBox(String(err)));
  }
  document.body.dataset.pitr = "loaded";
}

async function loadSizes() {
  const chart = document.getElementById("size-chart");
  try {
    const data = await getJSON("api/table-sizes");
    if (data.error) chart.replaceChildren(errorBox(data.error));
    else {
      chart.replaceChildren(sizeChart(data));
      const table = growthTable(data);
      if (table) document.getElementById("size-table").replaceChildren(table);
    }
  } catch (err) {
    chart.replaceChildren(errorBox(String(err)));
  }
  document.body.dataset.sizes = "loaded";
}

loadRecovery();
loadOverview().then(loadOffsite);
loadPitr();
loadSizes();
