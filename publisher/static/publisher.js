// Live status, copy buttons and an in-place "check now". The page works without this script.
"use strict";

function copyButtons() {
  for (const button of document.querySelectorAll("button.copy")) {
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

function show(domain) {
  const status = document.getElementById("status");
  status.textContent = domain.status.replace("_", " ");
  status.className = "status status-" + domain.status;
  const active = domain.status === "active";
  document.getElementById("active-note").hidden = !active;
  document.getElementById("awaiting-note").hidden = domain.status !== "awaiting_traffic";
  document.getElementById("cert-expiry").textContent = domain.certificate_expires || "";
  document.getElementById("next-check").hidden = active || !domain.next_check;
  document.getElementById("next-check-at").textContent = domain.next_check || "";
  const errors = document.getElementById("errors");
  errors.replaceChildren(...(domain.validation_errors || []).map((problem) => {
    const item = document.createElement("li");
    item.textContent = problem.message;
    return item;
  }));
  const seen = document.getElementById("dns-seen");
  const entries = Object.entries(domain.dns_seen || {});
  if (entries.length) {
    seen.replaceChildren(...entries.flatMap(([server, answers]) => {
      const term = document.createElement("dt");
      term.textContent = server;
      const detail = document.createElement("dd");
      detail.textContent = Object.entries(answers)
        .map(([name, values]) => name + ": " + (values.join(", ") || "nothing")).join("; ");
      return [term, detail];
    }));
  }
}

function live() {
  const section = document.getElementById("live");
  if (!section) return;
  const poll = async () => {
    try {
      const response = await fetch(section.dataset.statusUrl, {headers: {Accept: "application/json"}});
      if (response.ok) show(await response.json());
    } catch (error) { /* offline for a moment: the next poll tries again */ }
  };
  setInterval(poll, 2000);
  document.getElementById("check-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch(section.dataset.checkUrl, {
      method: "POST",
      headers: {Accept: "application/json", "X-CSRF-Token": section.dataset.csrf},
    });
    if (response.ok) show(await response.json());
  });
}

copyButtons();
live();
