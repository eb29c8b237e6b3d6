// The tidings dashboard: polls /stats once a second, draws rates on <canvas>, tails a channel
// over Server-Sent Events. No library, no build step. Event data is only ever set as text.
"use strict";

(() => {
  const POLL_MS = 1000;
  const POINTS = 120; // two minutes of history in the charts
  const TAIL_MAX = 50;
  const EVENT_TYPES = ["insert", "update", "delete", "ddl", "notify", "gap", "message"];

  // ?token=... in the page's own URL is sent on to the API (admin endpoints may need it)
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat("en");

  const series = { events: [], deliveries: [] };
  let previous = null; // the last /stats reading, for rates
  let previousBusiest = new Map();

  function setText(id, text) {
    $(id).textContent = text;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
  }

  function duration(s) {
    if (s < 60) return `${Math.floor(s)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function rate(now, before, dt) {
    return dt > 0 ? Math.max(0, (now - before) / dt) : 0;
  }

  function sum(values) {
    return Object.values(values).reduce((a, b) => a + b, 0);
  }

  function push(list, value) {
    list.push(value);
    if (list.length > POINTS) list.shift();
  }

  // one moving line chart: the last POINTS values, scaled to the largest
  function draw(canvas, values) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth * ratio;
    const height = canvas.clientHeight * ratio;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    const top = Math.max(1, ...values) * 1.15;
    ctx.strokeStyle = "#2a323e";
    ctx.lineWidth = ratio;
    for (let i = 1; i < 4; i += 1) {
      const y = Math.round((height * i) / 4) + 0.5;
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(width, y); ctx.stroke();
    }
    ctx.fillStyle = "#8391a5";
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.fillText(number.format(Math.round(top)), 4 * ratio, 12 * ratio);
    if (values.length < 2) return;
    const step = width / (POINTS - 1);
    const x0 = width - (values.length - 1) * step;
    const y = (v) => height - (v / top) * (height - 2 * ratio) - ratio;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x0 + i * step, y(v)) : ctx.moveTo(x0, y(v))));
    ctx.strokeStyle = canvas.dataset.color;
    ctx.lineWidth = 2 * ratio;
    ctx.stroke();
    ctx.lineTo(x0 + (values.length - 1) * step, height);
    ctx.lineTo(x0, height);
    ctx.closePath();
    ctx.globalAlpha = 0.15;
    ctx.fillStyle = canvas.dataset.color;
    ctx.fill();
    ctx.globalAlpha = 1;
  }

  function row(cells, classes = []) {
    const tr = document.createElement("tr");
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (classes[i]) td.className = classes[i];
      tr.append(td);
    });
    return tr;
  }

  function renderConnections(s) {
    const body = $("connections").tBodies[0];
    const protocols = [...new Set([...Object.keys(s.connections), ...Object.keys(s.connections_opened)])];
    body.replaceChildren(...protocols.map((p) => {
      const tr = row([p, number.format(s.connections[p] ?? 0), number.format(s.connections_opened[p] ?? 0)]);
      tr.dataset.protocol = p;
      tr.dataset.open = s.connections[p] ?? 0;
      return tr;
    }));
  }

  function renderBinlog(b) {
    const state = $("binlog-state");
    if (!b) {
      state.textContent = "none (pub/sub only)";
      state.className = "";
      return;
    }
    state.textContent = b.connected ? "connected" : `disconnected${b.last_error ? `: ${b.last_error}` : ""}`;
    state.className = b.connected ? "ok" : "bad";
    setText("binlog-position", b.file ? `${b.file}:${b.pos}` : "–");
    setText("binlog-gtid", b.gtid || "–");
    setText("binlog-lag", b.lag_seconds === null ? "–" : `${b.lag_seconds.toFixed(1)} s`);
    setText("binlog-transactions", number.format(b.transactions));
  }

  function renderBusiest(s, dt) {
    const now = new Map(s.busiest.map((c) => [c.channel, c.events]));
    $("busiest").tBodies[0].replaceChildren(...s.busiest.map((c) => {
      const before = previousBusiest.get(c.channel);
      const perSecond = before === undefined ? "–" : rate(c.events, before, dt).toFixed(1);
      const tr = row([c.channel, perSecond, number.format(c.events), number.format(c.subscribers)],
        ["channel"]);
      tr.dataset.channel = c.channel;
      return tr;
    }));
    previousBusiest = now;
    // channel names for the live tail's input
    const list = $("channel-list");
    const names = s.busiest.map((c) => c.channel);
    if (list.dataset.names !== names.join("\n")) {
      list.dataset.names = names.join("\n");
      list.replaceChildren(...names.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        return option;
      }));
    }
  }

  function render(s) {
    const dt = previous ? s.uptime_seconds - previous.uptime_seconds : 0;
    if (previous) {
      const eventsRate = rate(s.events, previous.events, dt);
      const deliveriesRate = rate(s.deliveries, previous.deliveries, dt);
      push(series.events, eventsRate);
      push(series.deliveries, deliveriesRate);
      setText("events-rate", number.format(Math.round(eventsRate)));
      setText("deliveries-rate", number.format(Math.round(deliveriesRate)));
      setText("bytes-rate", `${bytes(rate(sum(s.bytes_out), sum(previous.bytes_out), dt))}/s`);
      setText("events-peak", `peak ${number.format(Math.round(Math.max(...series.events)))}`);
      setText("deliveries-peak", `peak ${number.format(Math.round(Math.max(...series.deliveries)))}`);
    }
    setText("uptime", duration(s.uptime_seconds));
    setText("events-total", number.format(s.events));
    setText("deliveries-total", number.format(s.deliveries));
    setText("subscriptions", number.format(s.subscriptions));
    setText("channels", number.format(s.channels));
    setText("patterns", number.format(s.patterns));
    setText("slow-cut", number.format(sum(s.slow_consumers_cut)));
    setText("loop-lag", `${(s.event_loop_lag_seconds * 1000).toFixed(1)} ms`);
    renderConnections(s);
    renderBinlog(s.binlog);
    renderBusiest(s, dt);
    draw($("chart-events"), series.events);
    draw($("chart-deliveries"), series.deliveries);
    previous = s;
  }

  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  async function poll() {
    try {
      const response = await fetch("stats", { headers, cache: "no-store" });
      if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
      render(await response.json());
      setStatus("live", "live");
    } catch (error) {
      setStatus("down", `no answer from the daemon (${error.message})`);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // -- live tail ------------------------------------------------------------------------------
  let source = null;

  function describe(type, data) {
    try {
      const event = JSON.parse(data);
      if (event && typeof event === "object" && "data" in event && event.type !== "notify") {
        const old = event.old ? `  ← ${JSON.stringify(event.old)}` : "";
        return `${event.channel}  ${JSON.stringify(event.data)}${old}`;
      }
      return JSON.stringify(event);
    } catch {
      return data; // a published payload that is not JSON
    }
  }

  function addTail(type, id, data) {
    const li = document.createElement("li");
    li.dataset.eventId = id;
    li.dataset.type = type;
    const cells = [["id", id], [`type type-${type}`, type], ["data", describe(type, data)]];
    for (const [className, text] of cells) {
      const span = document.createElement("span");
      span.className = className;
      span.textContent = text;
      li.append(span);
    }
    const log = $("tail-log");
    log.prepend(li);
    while (log.children.length > TAIL_MAX) log.lastElementChild.remove();
  }

  function stopTail() {
    if (source) source.close();
    source = null;
    $("tail-stop").disabled = true;
    setText("tail-state", "");
  }

  function startTail(channel) {
    stopTail();
    $("tail-log").replaceChildren();
    let url = `sse?channel=${encodeURIComponent(channel)}`;
    if (token) url += `&token=${encodeURIComponent(token)}`;
    source = new EventSource(url);
    $("tail-stop").disabled = false;
    setText("tail-state", `connecting to ${channel}…`);
    source.onopen = () => setText("tail-state", `streaming ${channel}`);
    source.onerror = () => setText("tail-state", `${channel}: reconnecting…`);
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (e) => addTail(type, e.lastEventId, e.data));
    }
  }

  $("tail-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const channel = $("tail-channel").value.trim();
    if (channel) startTail(channel);
  });
  $("tail-stop").addEventListener("click", stopTail);
  if (params.get("channel")) { // /?channel=shop.orders opens the tail at once
    $("tail-channel").value = params.get("channel");
    startTail(params.get("channel"));
  }
  poll();
})();
