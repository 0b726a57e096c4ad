"""The report page's own CSS and JavaScript (sortable tables, Plotly figures from inlined JSON)."""

from __future__ import annotations

import json
import math

CSS = """
:root{--ink:#1d1f24;--muted:#5c6370;--line:#dfe2e8;--bg:#f6f7f9;--accent:#1f4e9c}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
.page{display:grid;grid-template-columns:minmax(0,1fr) 320px;gap:24px;max-width:1640px;margin:0 auto;padding:24px}
header,section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin-bottom:18px}
h1{margin:0 0 4px;font-size:26px}h2{margin:0 0 10px;font-size:19px}h3{font-size:15px;margin:16px 0 6px}
.lede{font-size:18px;margin:0 0 10px;color:var(--accent)}
dl.facts{display:grid;grid-template-columns:150px 1fr;gap:2px 14px;margin:0;font-size:13.5px}
dl.facts dt{color:var(--muted);font-weight:600}dl.facts dd{margin:0;overflow-wrap:anywhere}
.ship p{font-size:16px;margin:6px 0}.ship strong{color:var(--accent)}
.note{color:var(--muted);font-size:13px;margin:4px 0 8px}
.tablewrap{max-height:520px;overflow:auto;border:1px solid var(--line);border-radius:6px;margin:8px 0 4px}
table{border-collapse:collapse;font-size:12.5px;width:100%;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:6px 8px;caption-side:top}
.hint{font-weight:400;color:var(--muted)}
th{position:sticky;top:0;background:#eef1f6;cursor:pointer;user-select:none;text-align:left;padding:6px 8px;white-space:nowrap;border-bottom:1px solid var(--line)}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td{padding:4px 8px;border-bottom:1px solid #f0f1f4;white-space:nowrap}tbody tr:hover{background:#f3f6fb}
aside.glossary{position:sticky;top:16px;align-self:start;max-height:calc(100vh - 32px);overflow:auto;background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 18px;font-size:13px}
aside.glossary dt{font-weight:700;margin-top:8px}aside.glossary dd{margin:2px 0 0;color:#333}
nav{font-size:13.5px;margin:8px 0 0}nav a{margin-right:14px;color:var(--accent)}
.fig{width:100%}
@media (max-width:1100px){.page{grid-template-columns:1fr}aside.glossary{position:static;max-height:none}}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (row) { var c = row.cells[col]; return c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent; };
      var numeric = rows.every(function (r) { var k = key(r); return k === '' || !isNaN(Number(k)); });
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === '' || y === '') { return (x === '') - (y === ''); }
        var d = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

PLOT_JS = """
(function () {
  var figures = JSON.parse(document.getElementById('figures').textContent);
  Object.keys(figures).forEach(function (id) {
    var f = figures[id];
    f.layout.font = {family: 'system-ui, -apple-system, Segoe UI, Roboto, sans-serif', size: 12};
    f.layout.paper_bgcolor = '#fff'; f.layout.plot_bgcolor = '#fff';
    Plotly.newPlot(id, f.data, f.layout, {responsive: true, displaylogo: false});
  });
})();
"""


def json_for_script(obj) -> str:
    """JSON safe inside a <script> element (no '</script>' can close it early), NaN/inf as null."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    text = json.dumps(clean(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
