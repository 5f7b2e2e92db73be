// Live status, copy buttons, relative times, the www choice and an in-place "check now".
// The page works without this script; with it, the domain card is redrawn from one JSON (the
// /status answer), so no part of the page can contradict another.
"use strict";

function copyButtons(root) {
  for (const button of root.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(button.dataset.copy);
        button.textContent = "Copied";
      } catch (error) {
        button.textContent = "Select and copy";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
}

// The same words as domains/words.py `ago`.
function ago(seconds) {
  const size = Math.abs(seconds);
  if (size < 5) return seconds >= 0 ? "just now" : "in a moment";
  const units = [["day", 86400], ["h", 3600], ["min", 60], ["s", 1]];
  for (const [unit, length] of units) {
    if (size >= length) {
      const count = Math.floor(size / length);
      const text = unit === "day" ? count + (count === 1 ? " day" : " days") : count + " " + unit;
      return seconds > 0 ? text + " ago" : "in " + text;
    }
  }
  return "just now";
}

function exact(date) {
  return date.toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

function setTime(element, iso) {
  if (!element) return;
  if (!iso) { element.removeAttribute("datetime"); element.textContent = ""; return; }
  const date = new Date(iso);
  element.setAttribute("datetime", iso);
  element.title = exact(date);
  element.dataset.relative = "";
  element.textContent = ago((Date.now() - date.getTime()) / 1000);
}

function tickTimes() {
  for (const element of document.querySelectorAll("time[data-relative]")) {
    const iso = element.getAttribute("datetime");
    if (iso) element.textContent = ago((Date.now() - new Date(iso).getTime()) / 1000);
  }
}

function timeTag(iso, id) {
  const element = document.createElement("time");
  if (id) element.id = id;
  setTime(element, iso);
  return element;
}

function make(tag, text, className) {
  const element = document.createElement(tag);
  if (text !== undefined) element.textContent = text;
  if (className) element.className = className;
  return element;
}

function recordCode(text) { return make("code", text, "record"); }

function renderReport(report) {
  const box = document.getElementById("report");
  if (!box) return;
  if (!report) { box.replaceChildren(make("p", "Not checked yet.")); return; }
  const summary = make("p");
  summary.append("At our last check (", timeTag(report.checked_at), "): ",
    report.misconfigured ? make("strong", "not configured yet", "error") : make("strong", "configured"),
    report.configured_by ? "; your " + report.configured_by + " record sends visitors to us." : ".");
  const parts = [summary];
  if (report.conflicts.length) {
    const table = make("table");
    table.id = "conflicts";
    const head = make("thead");
    const row = make("tr");
    for (const name of ["Type", "Name", "Value", "What to do"]) {
      const cell = make("th", name);
      cell.scope = "col";
      row.append(cell);
    }
    head.append(row);
    const body = make("tbody");
    for (const c of report.conflicts) {
      const line = make("tr");
      const cells = [make("td", c.type), make("td"), make("td"), make("td", c.message)];
      cells[1].append(recordCode(c.name));
      cells[2].append(recordCode(c.value));
      line.append(...cells);
      body.append(line);
    }
    table.append(head, body);
    parts.push(make("h3", "Records in the way"), table);
  }
  if (report.missing.length) {
    const list = make("ul");
    list.id = "missing";
    for (const r of report.missing) {
      const item = make("li");
      item.append(r.type + " ", recordCode(r.name), " → ", recordCode(r.value));
      list.append(item);
    }
    parts.push(make("h3", "Records still missing"), list);
  }
  box.replaceChildren(...parts);
}

function renderSeen(seenByServer) {
  const seen = document.getElementById("dns-seen");
  const entries = Object.entries(seenByServer || {});
  if (!seen || !entries.length) return;
  seen.replaceChildren(...entries.flatMap(([server, answers]) => {
    const detail = make("dd");
    for (const [name, values] of Object.entries(answers)) {
      detail.append(recordCode(name), ": ", make("span", values.join(", ") || "nothing", "record"),
        make("br"));
    }
    return [make("dt", server), detail];
  }));
}

function show(domain) {
  const card = document.getElementById("live");
  const live = domain.state === "live";
  card.className = "card state-" + domain.state;
  card.dataset.state = domain.state;
  const status = document.getElementById("status");
  status.textContent = domain.status_text;
  status.className = "status status-" + domain.status;
  document.getElementById("status-detail").textContent = domain.status_detail;
  document.getElementById("active-note").hidden = !live;
  document.getElementById("awaiting-note").hidden = domain.status !== "awaiting_traffic";
  for (const expiry of document.querySelectorAll("#cert-expiry")) {
    expiry.textContent = domain.certificate_expires || "";
  }
  document.getElementById("checked").hidden = !domain.checked_at;
  setTime(document.getElementById("checked-at"), domain.checked_at);
  document.getElementById("next-check").hidden = live || !domain.next_check;
  setTime(document.getElementById("next-check-at"), domain.next_check);
  const errors = document.getElementById("errors");
  errors.hidden = live;
  errors.replaceChildren(...(domain.validation_errors || []).map((p) => make("li", p.message)));
  const setup = document.getElementById("setup");
  if (setup.dataset.state !== domain.state) {  // fold the set-up away once, when it goes live
    setup.open = !live;
    setup.dataset.state = domain.state;
  }
  document.getElementById("setup-summary").textContent =
    live ? "DNS set-up (done: nothing more to do)" : "DNS set-up";
  renderReport(domain.report);
  renderSeen(domain.dns_seen);
  const pair = document.getElementById("pair-status");
  if (pair && domain.pair) {
    pair.textContent = domain.pair.status_text || pair.textContent;
    pair.className = "status status-" + domain.pair.status;
  }
}

function checkMessage(domain) {
  if (domain.state === "live") return "Checked: your domain is live.";
  if (domain.check_ok) return "Checked: your records are in place.";
  const count = (domain.validation_errors || []).length;
  return "Checked: " + (count === 1 ? "1 thing" : count + " things") + " still to fix (above).";
}

function live() {
  const section = document.getElementById("live");
  if (!section) return;
  document.getElementById("setup").dataset.state = section.dataset.state;
  const poll = async () => {
    try {
      const response = await fetch(section.dataset.statusUrl, {headers: {Accept: "application/json"}});
      if (response.ok) show(await response.json());
    } catch (error) { /* offline for a moment: the next poll tries again */ }
  };
  setInterval(poll, 2000);
  const form = document.getElementById("check-form");
  const button = document.getElementById("check-button");
  const result = document.getElementById("check-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    button.textContent = "Checking…";
    form.setAttribute("aria-busy", "true");
    result.textContent = "Checking your DNS now…";
    try {
      const response = await fetch(section.dataset.checkUrl, {
        method: "POST",
        headers: {Accept: "application/json", "X-CSRF-Token": section.dataset.csrf},
      });
      if (!response.ok) throw new Error(String(response.status));
      const domain = await response.json();
      show(domain);
      result.textContent = checkMessage(domain);
    } catch (error) {
      result.textContent = "The check did not go through; please try again.";
    } finally {
      button.disabled = false;
      button.textContent = "Check now";
      form.removeAttribute("aria-busy");
    }
  });
}

// The www choice is about an apex (example.com) and its www name only. The server decides
// with the public suffix list (and ignores the choice for any other name); this guess only
// hides the question where it cannot apply.
const SECOND_LEVEL = new Set(["co", "com", "org", "net", "ac", "gov", "edu", "or", "ne", "go"]);

function wwwApplies(typed) {
  let name = typed.trim().toLowerCase().replace(/^[a-z][a-z0-9+.-]*:\/\//, "");
  name = name.split(/[/?#]/)[0].replace(/^.*@/, "").replace(/:\d*$/, "").replace(/[.。．｡]$/, "");
  if (!name) return null;
  const labels = name.split(/[.。．｡]/);
  if (labels[0] === "www") labels.shift();
  if (labels.length === 2) return true;
  return labels.length === 3 && SECOND_LEVEL.has(labels[1]) && labels[2].length === 2;
}

function wwwChoice() {
  const input = document.getElementById("hostname");
  const choice = document.getElementById("with-www");
  if (!input || !choice) return;
  const update = () => {
    const applies = wwwApplies(input.value);
    choice.hidden = applies !== true;
    choice.disabled = applies !== true;
  };
  input.addEventListener("input", update);
  update();
}

copyButtons(document);
live();
wwwChoice();
setInterval(tickTimes, 1000);
