"""The console's stylesheet and script, served from the package (no build step, no CDN)."""

from __future__ import annotations

__all__ = ["ASSETS"]

CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f8f9fb; --accent:#3559e0; --bad:#c4320a; --ok:#067647; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; gap:20px; align-items:center; padding:10px 24px; background:#111827; color:#fff; }
header a { color:#d0d5dd; text-decoration:none; } header a:hover { color:#fff; }
header .brand { font-weight:700; color:#fff; letter-spacing:.5px; }
header .who { margin-left:auto; display:flex; gap:10px; align-items:center; color:#d0d5dd; }
main { max-width:1180px; margin:0 auto; padding:20px 24px 60px; }
h1 { font-size:22px; margin:6px 0 14px; } h2 { font-size:17px; margin:26px 0 10px; border-bottom:1px solid var(--line); padding-bottom:4px; }
h3 { font-size:14px; margin:18px 0 6px; color:var(--muted); text-transform:uppercase; letter-spacing:.4px; }
a { color:var(--accent); }
table { border-collapse:collapse; width:100%; background:#fff; border:1px solid var(--line); }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f2f4f7; font-weight:600; font-size:12px; color:var(--muted); text-transform:uppercase; }
code, pre { font:12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { background:#fff; border:1px solid var(--line); padding:10px; overflow:auto; max-height:480px; }
.muted { color:var(--muted); } .tag { display:inline-block; padding:0 6px; border-radius:8px; background:#eef4ff; color:#3538cd; font-size:12px; margin-right:4px; }
.ok { color:var(--ok); } .bad { color:var(--bad); }
.flash { padding:8px 12px; border-radius:6px; margin:10px 0; background:#ecfdf3; border:1px solid #abefc6; }
.error { padding:10px 14px; border-radius:6px; margin:10px 0; background:#fef3f2; border:1px solid #fecdca; color:#912018; }
form.inline { display:inline; } button, input, select { font:inherit; padding:4px 10px; border:1px solid #d0d5dd; border-radius:6px; background:#fff; }
button { cursor:pointer; background:var(--accent); color:#fff; border-color:var(--accent); } button.quiet { background:#fff; color:var(--fg); border-color:#d0d5dd; }
button.danger { background:#fff; color:var(--bad); border-color:#fda29b; }
nav.tabs a { margin-right:14px; }
.login { max-width:420px; margin:70px auto; background:#fff; border:1px solid var(--line); border-radius:10px; padding:28px; }
.login input { width:100%; margin:8px 0 14px; }
.diff .add { background:#ecfdf3; color:#067647; } .diff .del { background:#fef3f2; color:#b42318; } .diff .hunk { color:#6941c6; }
.log { background:#0c111d; color:#e4e7ec; min-height:120px; max-height:420px; }
.log .line { white-space:pre-wrap; }
.grid { display:grid; grid-template-columns:1fr 1fr; gap:18px; } .card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px; }
svg text { font:11px system-ui, sans-serif; fill:#344054; }
#cluster-facts { width:auto; min-width:480px; } #cluster-facts th { width:160px; }
.graph { background:#fff; border:1px solid var(--line); overflow:auto; } .graph svg { max-width:100%; height:auto; }
"""

JS = """
(function () {
  var tail = document.getElementById("log-tail");
  if (tail && window.EventSource) {
    var state = document.getElementById("log-state");
    var source = new EventSource(tail.dataset.src);
    source.addEventListener("line", function (e) {
      var div = document.createElement("div");
      div.className = "line";
      div.textContent = JSON.parse(e.data).text;
      tail.appendChild(div);
      tail.scrollTop = tail.scrollHeight;
    });
    source.addEventListener("state", function (e) { if (state) { state.textContent = JSON.parse(e.data).state; } });
    source.addEventListener("end", function (e) {
      if (state) { state.textContent = JSON.parse(e.data).state; }
      source.close();
    });
    source.onerror = function () { if (state && source.readyState === 2) { state.textContent += " (stream closed)"; } };
  }
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) { if (!window.confirm(form.dataset.confirm)) { e.preventDefault(); } });
  });
  var countdowns = document.querySelectorAll(".countdown[data-left]");
  if (countdowns.length) {
    var shown = Date.now();
    var tick = function () {
      countdowns.forEach(function (el) {
        var left = Math.max(0, Math.round(Number(el.dataset.left) - (Date.now() - shown) / 1000));
        el.textContent = left >= 3600 ? Math.floor(left / 3600) + "h " + Math.floor(left % 3600 / 60) + "m"
          : Math.floor(left / 60) + "m " + String(left % 60).padStart(2, "0") + "s";
      });
    };
    setInterval(tick, 1000);
  }
  var search = document.getElementById("search");
  if (search) {
    search.addEventListener("input", function () {
      var q = search.value.toLowerCase();
      document.querySelectorAll("tr[data-name]").forEach(function (row) {
        row.style.display = row.dataset.name.indexOf(q) >= 0 ? "" : "none";
      });
    });
  }
})();
"""

#: file name → (content type, body)
ASSETS: dict[str, tuple[str, str]] = {
    "console.css": ("text/css", CSS),
    "console.js": ("application/javascript", JS),
}
