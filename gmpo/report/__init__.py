"""Comparison reports: from run directories (algorithm x seed) to report.md, PNG figures and index.html.

    from gmpo.report import write_report
    paths = write_report(["runs/gmpo-s0", "runs/grpo-s0"], "report", target_reward=0.5)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gmpo.report.table import Run, Table, build_table, load_run, to_markdown


@dataclass
class ReportPaths:
    """What :func:`write_report` wrote."""

    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path]
    table: Table
    screenshot: Path | None = None


def write_report(run_dirs: list[str | Path], out_dir: str | Path, *, target_reward: float = 0.5, smooth: int = 1,
                 title: str = "GMPO vs GRPO: stability comparison", screenshot: bool = False,
                 notes: list[str] | None = None) -> ReportPaths:
    """Read the runs, write ``report.md``, ``figures/*.png`` and ``index.html`` into `out_dir`.

    `target_reward` / `smooth`: the "steps to target" column (first step whose `smooth`-step trailing mean
    of reward/mean reaches the target). `screenshot`: also render index.html to ``screenshot.png`` with
    headless Chromium (skipped with a message when it is not installed).
    """
    from gmpo.report.figures import write_figures
    from gmpo.report.html import render_html
    from gmpo.report.html import screenshot as take_screenshot

    if not run_dirs:
        raise ValueError("write_report: no run directories given")
    runs: list[Run] = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(runs, target_reward, smooth)
    figs = write_figures(runs, out / "figures")
    md = [f"# {title}\n", to_markdown(table)]
    for n in notes or []:
        md.append(n + "\n")
    md.append("## Figures\n")
    md.extend(f"![{t}](figures/{p.name})\n" for t, p in figs)
    md.append("\n## Runs\n")
    md.extend(f"- `{r.path}`: {r.algo}, seed {r.seed}, {r.records[-1]['step'] if r.records else 0} steps, "
              f"{r.n_alerts} guard events\n" for r in sorted(runs, key=lambda r: (r.algo, r.seed)))
    (out / "report.md").write_text("\n".join(md))
    (out / "index.html").write_text(render_html(table, figs, runs, title, out.resolve(), notes), encoding="utf-8")
    paths = ReportPaths(out, out / "report.md", out / "index.html", [p for _, p in figs], table)
    if screenshot:
        paths.screenshot = take_screenshot(out / "index.html")
    return paths


__all__ = ["ReportPaths", "Run", "Table", "build_table", "load_run", "write_report"]
