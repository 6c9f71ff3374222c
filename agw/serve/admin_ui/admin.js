// agw's operator page: polls the JSON beside it every second and redraws; ends a session on request.
// No framework, no build step, nothing loaded from elsewhere. Every value is written as text (never as HTML):
// model names come from clients.
"use strict";

(() => {
  const POLL_MS = 1000;
  const $ = (id) => document.getElementById(id);
  const sessionRows = new Map(); // session id -> {tr, cells, button}: rows are updated in place, so a click is never lost

  function cell(tr, className, text) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text === undefined ? "" : text;
    tr.appendChild(td);
    return td;
  }

  function usd(value) {
    if (typeof value !== "number") return "–";
    return "$" + value.toFixed(value !== 0 && Math.abs(value) < 1 ? 6 : 2);
  }

  function amount(value, unit) {
    return unit === "USD" ? usd(value) : Math.round(value).toLocaleString();
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "–";
    seconds = Math.max(0, Math.floor(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m) return m + "m " + String(s).padStart(2, "0") + "s";
    return s + "s";
  }

  function consumerName(name) {
    return name === null || name === undefined || name === "" ? "(anonymous)" : name;
  }

  function routeName(entry) {
    return entry.route + " (" + entry.listener + ", bind " + entry.bind + ")";
  }

  async function getJSON(path) {
    const response = await fetch(path, {cache: "no-store", headers: {Accept: "application/json"}});
    if (!response.ok) throw new Error(path + " answered " + response.status);
    return response.json();
  }

  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  async function endSession(id, button) {
    button.disabled = true;
    button.textContent = "ending…";
    try {
      // JSON: a form on another site cannot send this content type (see docs/admin.md).
      const response = await fetch("api/sessions/" + encodeURIComponent(id) + "/close", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({reason: "closed by operator"}),
      });
      button.textContent = response.status === 202 ? "closing" : response.status === 404 ? "gone" : "failed (" + response.status + ")";
      if (response.status !== 202 && response.status !== 404) button.disabled = false;
    } catch (error) {
      button.textContent = "failed";
      button.disabled = false;
    }
  }

  function sessionRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.sessionId = id;
    const names = ["consumer", "model", "route", "transport", "worker", "age", "input", "output", "cost", "responses", "refused"];
    const numeric = new Set(["input", "output", "cost", "responses", "refused"]);
    const cells = {};
    for (const name of names) {
      cells[name] = cell(tr, name + (numeric.has(name) ? " num" : "") + (name === "worker" ? " worker-column" : ""));
    }
    const action = cell(tr, "action");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "end-session";
    button.textContent = "End session";
    button.title = "Close with 1000 \"closed by operator\"; responses in flight are still metered";
    button.addEventListener("click", () => endSession(id, button));
    action.appendChild(button);
    return {tr, cells, button};
  }

  function renderSessions(data) {
    const body = $("sessions-body");
    const seen = new Set();
    const pooled = Array.isArray(data.workers);
    for (const session of data.sessions) {
      seen.add(session.id);
      let row = sessionRows.get(session.id);
      if (!row) {
        row = sessionRow(session.id);
        sessionRows.set(session.id, row);
        body.appendChild(row.tr);
      }
      const c = row.cells;
      c.consumer.textContent = consumerName(session.consumer);
      c.model.textContent = session.model || "–";
      c.route.textContent = session.route;
      c.route.title = routeName(session);
      c.transport.textContent = session.transport;
      c.worker.textContent = session.worker === undefined ? "" : String(session.worker);
      c.worker.hidden = !pooled;
      c.age.textContent = duration(session.age_seconds);
      c.input.textContent = session.tokens.input.toLocaleString();
      c.output.textContent = session.tokens.output.toLocaleString();
      c.cost.textContent = usd(session.cost_usd);
      c.cost.dataset.usd = String(session.cost_usd);
      c.responses.textContent = session.responses + (session.responses_in_progress ? " (+" + session.responses_in_progress + ")" : "");
      c.refused.textContent = String(session.responses_refused);
      row.tr.dataset.state = session.state;
      if (session.state === "closing" && !row.button.disabled) {
        row.button.disabled = true;
        row.button.textContent = "closing";
      }
    }
    for (const [id, row] of sessionRows) {
      if (!seen.has(id)) {
        row.tr.remove();
        sessionRows.delete(id);
      }
    }
    for (const th of document.querySelectorAll("#sessions th.worker-column")) th.hidden = !pooled;
    $("sessions-count").textContent = String(sessionRows.size);
    $("sessions-empty").hidden = sessionRows.size > 0;
    const workers = $("workers");
    if (pooled) {
      const down = data.workers.filter((w) => !w.reachable).map((w) => w.index);
      workers.textContent = data.workers.length + " workers: sessions, rate limits and costs are gathered from each" +
        (down.length ? "; not answering: worker " + down.join(", ") : "");
      workers.hidden = false;
    } else {
      workers.hidden = true;
    }
  }

  function renderConsumers(data, sessions) {
    const live = new Map();
    for (const session of sessions.sessions) {
      const name = consumerName(session.consumer);
      live.set(name, (live.get(name) || 0) + 1);
    }
    const rows = [];
    for (const consumer of data.consumers) {
      const budgets = consumer.budgets.length ? consumer.budgets : [null];
      budgets.forEach((budget, index) => {
        const tr = document.createElement("tr");
        tr.dataset.consumer = consumer.name;
        cell(tr, "consumer", index === 0 ? consumer.name : "");
        cell(tr, "num", index === 0 ? String(live.get(consumer.name) || 0) : "");
        if (budget === null) {
          cell(tr, "budget none", "no budget");
          for (let i = 0; i < 5; i++) cell(tr, "");
        } else {
          const limit = budget.enforced_limit !== undefined ? budget.enforced_limit : budget.limit;
          cell(tr, "budget", budget.name + " (" + budget.unit + ", " + duration(budget.window_seconds) + ")");
          cell(tr, "num spent", amount(budget.spent, budget.unit));
          cell(tr, "num", amount(limit, budget.unit) + (budget.enforced_limit !== undefined ? " (this process's share)" : ""));
          const remaining = cell(tr, "num remaining", amount(budget.remaining, budget.unit));
          if (budget.spent >= limit) remaining.classList.add("spent");
          cell(tr, "", duration(budget.reset_seconds));
          cell(tr, "", budget.onBudgetExceeded === "Block" ? "block" : "audit only");
        }
        rows.push(tr);
      });
    }
    $("consumers-body").replaceChildren(...rows);
    $("consumers-empty").hidden = rows.length > 0;
    const ledger = $("ledger");
    ledger.hidden = !(data.ledger && data.ledger.up === false);
    ledger.textContent = data.ledger && data.ledger.up === false
      ? "The budget ledger is not answering: each process enforces its share; " + data.ledger.unwritten + " charges wait to be written."
      : "";
    const limits = [];
    for (const route of data.rate_limits) {
      for (const bucket of route.buckets) {
        const tr = document.createElement("tr");
        cell(tr, "", routeName(route));
        cell(tr, "", bucket.kind);
        cell(tr, "num", bucket.remaining.toLocaleString());
        cell(tr, "num", bucket.limit.toLocaleString());
        cell(tr, "", duration(bucket.reset_seconds));
        limits.push(tr);
      }
    }
    $("limits-body").replaceChildren(...limits);
    $("limits-empty").hidden = limits.length > 0;
  }

  function renderCosts(data) {
    const rows = data.costs.map((entry) => {
      const tr = document.createElement("tr");
      cell(tr, "consumer", consumerName(entry.consumer));
      cell(tr, "model", entry.model);
      cell(tr, "num cost", usd(entry.cost_usd));
      cell(tr, "num", entry.tokens.toLocaleString());
      cell(tr, "num", entry.records.toLocaleString());
      return tr;
    });
    $("costs-body").replaceChildren(...rows);
    $("costs-empty").hidden = rows.length > 0;
    $("costs-total").textContent = usd(data.total_usd);
    $("costs-window").textContent = data.window_seconds ? "(last " + duration(data.window_seconds) + ")" : "";
  }

  async function poll() {
    try {
      const [sessions, consumers, costs] = await Promise.all([getJSON("api/sessions"), getJSON("api/consumers"), getJSON("api/costs")]);
      renderSessions(sessions);
      renderConsumers(consumers, sessions);
      renderCosts(costs);
      setStatus("live", "live · updated " + new Date().toLocaleTimeString());
    } catch (error) {
      setStatus("stale", "cannot reach agw (" + error.message + "); retrying");
    } finally {
      setTimeout(poll, POLL_MS); // after the answer: a slow gateway is never asked twice at once
    }
  }

  poll();
})();
