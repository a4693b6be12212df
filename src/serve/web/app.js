// The Backups page's one script: the environment selector switches on change, and a running
// job's page shows its progress live, reloading when the job ends. Without it every page
// still works (the selector's Show button, reloading a job's page by hand).
"use strict";

document.querySelectorAll("form[data-autosubmit] select").forEach((select) => {
  select.addEventListener("change", () => select.form.submit());
});

// An upload larger than the service takes is stopped before it is sent.
document.querySelectorAll("input[type=file][data-max-bytes]").forEach((input) => {
  input.form.addEventListener("submit", (event) => {
    const max = Number(input.getAttribute("data-max-bytes"));
    const file = input.files[0];
    const problem = document.getElementById("file-problem");
    if (file && file.size > max) {
      event.preventDefault();
      problem.textContent = `The file is ${file.size} bytes; this service takes at most ${max}. Nothing was sent.`;
      problem.hidden = false;
    }
  });
});

const box = document.querySelector("[data-job-status]");
if (box) {
  const bar = document.getElementById("job-bar");
  const stage = document.getElementById("job-stage");
  const url = box.getAttribute("data-job-status");
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const human = (n) => {
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  };
  const poll = async () => {
    let s;
    try {
      const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) { stage.textContent = `Cannot follow the job (HTTP ${r.status}); reload the page.`; return; }
      s = await r.json();
    } catch (e) {
      setTimeout(poll, 2000);
      return;
    }
    if (s.state === "completed" || s.state === "failed") {
      location.reload();
      return;
    }
    if (s.bytes_total) {
      bar.max = s.bytes_total;
      bar.value = Math.min(s.bytes_done, s.bytes_total);
      const pct = Math.floor((100 * bar.value) / s.bytes_total);
      stage.textContent = `${s.stage || "starting"}: ${human(bar.value)} of ${human(s.bytes_total)} (${pct}%)`;
    } else {
      bar.removeAttribute("value");
      stage.textContent = s.bytes_done ? `${s.stage}: ${human(s.bytes_done)}` : (s.stage || s.message || "queued");
    }
    setTimeout(poll, 700);
  };
  poll();
}
