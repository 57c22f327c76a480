"""The report's index.html (self-contained: inline CSS, images as base64, no JavaScript, no CDN) and a
headless-Chromium screenshot of it."""
from __future__ import annotations

import base64
import html
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gmpo.report.table import COLUMNS, Run, Table

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1220px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid #d9dde5;padding-bottom:4px}
p.meta{color:#5a6272;margin:0 0 12px;font-size:14px}
table{border-collapse:collapse;background:#fff;font-size:13.5px;width:100%;box-shadow:0 1px 2px rgba(0,0,0,.06)}
th,td{border:1px solid #d9dde5;padding:7px 9px;text-align:right;vertical-align:top}
th{background:#eef1f6;font-weight:600;text-align:center}td:first-child,th:first-child{text-align:left;font-weight:600}
.figs{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:14px}
figure{margin:0;background:#fff;padding:8px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
figure img{width:100%;height:auto;display:block}
.note{font-size:13px;color:#5a6272;margin-top:8px}
ul.runs{font-size:13px;columns:2}code{font-size:12.5px;background:#eef1f6;padding:1px 4px;border-radius:3px}
"""


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(table: Table, figures: list[tuple[str, Path]], runs: list[Run], title: str,
                out_dir: Path, notes: list[str] | None = None) -> str:
    """The HTML text of the report page."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in COLUMNS)
    rows = "".join(
        f"<tr><td>{esc(a)}</td><td>{len(table.seeds[a])}</td>"
        + "".join(f"<td>{esc(table.cells[a][k])}</td>" for k, _, _ in COLUMNS) + "</tr>"
        for a in table.algos)
    figs = "".join(f"<figure>{_img_tag(p, t)}</figure>" for t, p in figures)
    run_items = []
    for r in sorted(runs, key=lambda r: (r.algo, r.seed)):
        try:
            rel = os.path.relpath(r.path, out_dir)
        except ValueError:  # another drive (Windows)
            rel = str(r.path)
        steps = r.records[-1]["step"] if r.records else 0
        acts = ", ".join(f"{n} {a}" for a, n in sorted(r.alerts_by_action.items())) or "none"
        run_items.append(f"<li><code>{esc(rel)}</code>: {esc(r.algo)}, seed {r.seed}, {steps} steps, "
                         f"guard events: {esc(acts)}</li>")
    smooth = f" ({table.smooth}-step trailing mean)" if table.smooth > 1 else ""
    note_html = "".join(f"<p class='note'>{esc(n)}</p>" for n in notes or [])
    algos = ", ".join(table.algos)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{esc(title)}</h1>
<p class="meta">{esc(algos)} &middot; {len(runs)} runs &middot; target reward {table.target:g}{esc(smooth)}</p>
<h2>Stability summary</h2>
<table><thead><tr><th>algorithm</th><th>seeds</th>{head}</tr></thead><tbody>{rows}</tbody></table>
<p class="note">Each cell: mean &plusmn; sample std over seeds. Loss variance, grad-norm std and token-ratio range
(max ratio / min ratio) are taken over all steps of a run. Steps to target: first step whose reward/mean{esc(smooth)}
reaches {table.target:g}; runs that never reach it are counted, not hidden. Guard events: lines in alerts.jsonl,
warnings included; skips/rollbacks/stops: the events that changed training.</p>
{note_html}
<h2>Figures</h2>
<div class="figs">{figs}</div>
<p class="note">Lines: mean over seeds; shaded band: min to max over seeds. Ratio figure: solid = per-step max token
ratio, dashed = per-step min, dotted = the most extreme seed.</p>
<h2>Runs</h2>
<ul class="runs">{''.join(run_items)}</ul>
</main></body></html>
"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def screenshot(html_path: str | Path, png_path: str | Path | None = None, width: int = 1280, height: int = 2400,
               timeout: float = 120.0) -> Path | None:
    """Render `html_path` in headless Chromium and save a PNG (default: screenshot.png beside it).

    Returns the PNG path, or None (with a message on stdout) when Chromium is missing or fails.
    """
    html_path = Path(html_path).resolve()
    png = Path(png_path) if png_path else html_path.parent / "screenshot.png"
    exe = find_chromium()
    if exe is None:
        print("screenshot skipped: Chromium is not installed (e.g. `apt-get install -y chromium`)")
        return None
    with tempfile.TemporaryDirectory(prefix="gmpo-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
               f"--window-size={width},{height}", html_path.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"screenshot failed: Chromium did not finish within {timeout:g} s")
            return None
    if proc.returncode != 0 or not png.is_file():
        print(f"screenshot failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return None
    return png
