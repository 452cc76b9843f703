// Firebreak's pages work without this; it adds live refresh, live preview
// with the blameless check, who else is editing, and line jumps. It builds
// text with textContent, and inserts as HTML only what the server rendered
// and escaped (table rows, the sanitized preview).
(function () {
  "use strict";
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const post = (url, body) =>
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body || {}),
    });

  // The incident list refreshes itself.
  const rows = document.getElementById("incident-rows");
  if (rows) {
    const every = parseInt(rows.dataset.refresh || "10000", 10);
    const status = document.getElementById("refresh-status");
    setInterval(async () => {
      if (document.hidden) return;
      const u = new URL(window.location.href);
      u.searchParams.set("partial", "rows");
      try {
        const r = await fetch(u, { credentials: "same-origin" });
        if (r.ok) {
          rows.innerHTML = await r.text();
          if (status) status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
        }
      } catch (e) { /* offline: try again next time */ }
    }, every);
  }

  // The incident page keeps up: every few seconds it reads the page again
  // and swaps in the parts marked .live (facts, the approval banner, alerts,
  // actions) from what the server rendered and escaped. It waits while a
  // person is working in one of them (focus inside, or a box ticked).
  const facts = document.getElementById("facts");
  if (facts && facts.dataset.live) {
    const every = parseInt(facts.dataset.live, 10) || 5000;
    setInterval(async () => {
      if (document.hidden) return;
      const live = Array.from(document.querySelectorAll(".live[id]"));
      const busy = live.some(
        (el) => el.contains(document.activeElement) || el.querySelector("input[type=checkbox]:checked")
      );
      if (busy) return;
      const u = new URL(window.location.href);
      u.searchParams.delete("done");
      u.hash = "";
      try {
        const r = await fetch(u, { credentials: "same-origin" });
        if (!r.ok) return;
        const fresh = new DOMParser().parseFromString(await r.text(), "text/html");
        for (const el of live) {
          const next = fresh.getElementById(el.id);
          if (next && next.innerHTML !== el.innerHTML) el.innerHTML = next.innerHTML;
        }
      } catch (e) { /* offline: try again next time */ }
    }, every);
  }

  // The editor: live preview, findings, presence, unsaved-change warning.
  const form = document.getElementById("editor-form");
  const area = document.getElementById("markdown");
  const jump = (line) => {
    if (!area) return;
    const lines = area.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    area.focus();
    area.setSelectionRange(start, start + (lines[line - 1] || "").length);
  };
  document.addEventListener("click", (e) => {
    const a = e.target.closest && e.target.closest("a[data-line]");
    if (a) { e.preventDefault(); jump(parseInt(a.dataset.line, 10)); }
  });
  // The resolve page: the cursor starts at the first marked clash.
  if (area && area.dataset.clash) {
    const at = area.value.indexOf(area.dataset.clash);
    if (at >= 0) {
      area.focus();
      area.setSelectionRange(at, at + area.dataset.clash.length);
      const line = area.value.slice(0, at).split("\n").length;
      area.scrollTop = Math.max(0, (line - 3) * (area.scrollHeight / area.value.split("\n").length));
    }
  }
  if (form && area) {
    const incident = parseInt(form.dataset.incident, 10);
    const preview = document.getElementById("preview");
    const findings = document.getElementById("findings");
    let timer = null;
    let dirty = false;
    const render = (list, total) => {
      if (!findings) return;
      findings.replaceChildren();
      if (!list.length) {
        const li = document.createElement("li");
        li.className = "none";
        li.textContent = "No findings: the draft examines the system, not people.";
        findings.append(li);
        return;
      }
      for (const f of list) {
        const li = document.createElement("li");
        li.className = "finding";
        const a = document.createElement("a");
        a.href = "#markdown";
        a.dataset.line = String(f.line);
        a.textContent = "Line " + f.line;
        const em = document.createElement("em");
        em.textContent = "Try: " + f.suggestion;
        li.append(a, document.createTextNode(": \u201c" + f.text + "\u201d \u2014 " + f.message + " "), em);
        findings.append(li);
      }
      if (total > list.length) {
        const li = document.createElement("li");
        li.className = "none";
        li.textContent = "\u2026 and " + (total - list.length) + " more (the first " + list.length + " are listed).";
        findings.append(li);
      }
    };
    area.addEventListener("input", () => {
      dirty = true;
      clearTimeout(timer);
      timer = setTimeout(async () => {
        try {
          const r = await post("/api/v1/postmortems/preview", { markdown: area.value, incident_id: incident });
          if (!r.ok) return;
          const body = await r.json();
          if (preview) preview.innerHTML = body.html;
          render(body.findings || [], body.findings_total || 0);
        } catch (e) { /* the server-side preview stays */ }
      }, 350);
    });
    form.addEventListener("submit", () => { dirty = false; });
    window.addEventListener("beforeunload", (e) => { if (dirty) { e.preventDefault(); e.returnValue = ""; } });
    const who = document.getElementById("presence");
    const beat = async () => {
      try {
        const r = await post("/api/v1/incidents/" + incident + "/postmortem/presence", {});
        if (!r.ok || !who) return;
        const body = await r.json();
        who.textContent = body.others.length ? "Also here: " + body.others.join(", ") : "Nobody else has it open.";
      } catch (e) { /* try again */ }
    };
    beat();
    setInterval(beat, 5000);
  }
})();
