"""The dashboard page in a real browser: Playwright for Python driving Debian's chromium against a real
`gmpo dashboard` server (two synthetic runs, one without ratio/log_hist, and a request-log fixture).

Screenshots of each view are written under the pytest tmp directory (``dashboard_screens*``); the path is
printed (pytest -s shows it)."""
import json
import subprocess
import time
from pathlib import Path

import pytest

from gmpo.dashboard.synthetic import alert_record, write_run
from gmpo.report.html import find_chromium
from test_dashboard_serving import make_request_log
from test_dashboard_server import DashboardServer

pytest.importorskip("fastapi")
ROOT = Path(__file__).resolve().parents[1]
XSS = "<img src=x onerror=\"window.__pwned=1\"> <script>window.__pwned=2</script>"


def _chromium() -> str:
    exe = find_chromium()
    if exe is None:  # try the project's installer once (needs root and apt-get)
        subprocess.run(["bash", str(ROOT / "scripts" / "system-packages.sh")], capture_output=True, timeout=900)
        exe = find_chromium()
    if exe is None:
        pytest.skip("Debian's chromium is not installed and scripts/system-packages.sh could not install it "
                    "(needs root and apt-get): the dashboard's browser tests cannot run here")
    return exe


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash_browser")
    a = write_run(root / "gmpo-s0", 60, alerts={25: "warn", 40: "rollback"}, samples_per_step=2)
    with open(a / "samples.jsonl", "a") as f:
        f.write(json.dumps({"step": 60, "prompt": "xss probe", "answer": "1", "completion": XSS, "reward": 0.0,
                            "advantage": -1.0, "length": 9, "truncated": False}) + "\n")
    b = write_run(root / "grpo-s0", 45, algo="grpo", seed=3, hist=False)
    db = make_request_log(root / "requests.db")
    return a, b, db


@pytest.fixture(scope="module")
def server(fixture_runs):
    a, b, db = fixture_runs
    srv = DashboardServer(a, b, "--serve-db", db, poll=0.3)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = tmp_path_factory.mktemp("dashboard_screens")
    print(f"\ndashboard screenshots: {d}")
    return d


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(server, browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    external, errors = [], []

    def route(r):
        if r.request.url.startswith(server.base + "/"):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    ctx.route("**/*", route)
    pg = ctx.new_page()
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}") if r.url.startswith(server.base) else None)
    t = time.time()
    pg.goto(server.base + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    pg.load_s = time.time() - t
    # element screenshots scroll the page: keep the sticky header out of them (CSSOM, allowed by the CSP)
    pg.evaluate("document.querySelector('header.top').style.position = 'static'")
    pg.errors, pg.external = errors, external
    yield pg
    ctx.close()


def _wait(page, js: str, timeout: float = 10.0) -> float:
    """Poll `js` (an expression) until it is truthy; seconds waited. (page.wait_for_function evaluates its
    predicate with eval, which the page's Content-Security-Policy forbids; page.evaluate is not affected.)"""
    t = time.time()
    while not page.evaluate(js):
        if time.time() - t > timeout:
            raise AssertionError(f"not true within {timeout} s: {js}")
        time.sleep(0.1)
    return time.time() - t


def _points(page) -> dict:
    return page.evaluate("Object.fromEntries(Object.entries(window.__dash.charts).map(([k, c]) => [k, c.points()]))")


def test_page_loads_clean_and_offline(page, fixture_runs, shots):
    assert page.errors == [] and page.external == []
    evals = [json.loads(x)["eval/accuracy"] for x in open(fixture_runs[0] / "metrics.jsonl") if "eval/accuracy" in x]
    card = page.locator("#card-accuracy")
    assert card.locator(".value").inner_text() == f"{evals[-1] * 100:.1f}%"
    assert f"+{(evals[-1] - evals[-2]) * 100:.1f} pts since step 50" in card.locator(".sub").inner_text()
    assert "Wilson" in card.get_attribute("title")
    assert page.locator("#card-stability .value").inner_text() == "97"  # 2 guard events in 60 steps -> 58/60
    assert page.locator("#card-latency .value").inner_text().endswith(" ms")
    for card_id in ("card-accuracy", "card-latency", "card-stability", "card-throughput"):
        assert len(page.locator(f"#{card_id}").get_attribute("title")) > 60  # each number defined in a tooltip
    page.screenshot(path=str(shots / "full.png"), full_page=True)
    page.locator("#headline").screenshot(path=str(shots / "headline.png"))


def test_each_chart_has_the_runs_points(page, shots):
    pts = _points(page)
    assert pts.pop("accuracy") == 7  # eval at steps 0, 10, ..., 60
    assert pts == {k: 60 for k in pts} and len(pts) == 14  # steps 1..60 (run 2 has 1..45 on the same x)
    series = page.evaluate("window.__dash.charts.token_ratio.u.series.length - 1")
    assert series == 8  # 4 ratio statistics x 2 runs
    acc_series = page.evaluate("window.__dash.charts.accuracy.u.series.map(s => s.label)")
    assert sum("95%" in s for s in acc_series) == 4  # Wilson low/high per run
    assert page.locator('.heat[data-run="0"]').get_attribute("data-cols") == "60"
    assert "No ratio/log_hist" in page.locator('.heat[data-run="1"] .missing').inner_text()
    assert page.locator('.heat[data-run="0"] .hint').inner_text().startswith("gmpo: |log-ratio| clip [-0.4, 0.4]")
    page.locator("#training").screenshot(path=str(shots / "training.png"))
    page.locator("#heatmap").screenshot(path=str(shots / "heatmap.png"))


def test_guard_events_annotate_every_chart(page):
    for cid in page.evaluate("Object.keys(window.__dash.charts)"):
        marks = page.locator(f'#charts [data-chart="{cid}"] .guard-mark')
        assert marks.count() == 2, cid
        assert sorted(marks.evaluate_all("ms => ms.map(m => m.dataset.action)")) == ["rollback", "warn"]
    text = page.locator('[data-chart="loss"] .guard-mark.rollback').get_attribute("data-text")
    assert text == "gmpo-s0 · step 40 · grad_spike → rollback: grad/norm z-score 9.5 > 6 at step 40"
    assert page.locator('.heat[data-run="0"] .guard-mark').count() == 2
    assert page.locator("#guard-list [data-action]").count() == 2


def test_appended_step_and_alert_show_live_without_reload(page, fixture_runs, server):
    run = fixture_runs[0]
    page.evaluate("window.__noReload = 1")
    refreshes = page.evaluate("window.__dash.refreshes")
    t = time.time()
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 61, "reward/mean": 0.99, "loss/value": 0.0, "ratio/log_hist": [0] * 21 + [50] + [0] * 20}) + "\n")
    with open(run / "alerts.jsonl", "a") as f:
        f.write(json.dumps(alert_record(61, "stop", detector="nonfinite")) + "\n")
    _wait(page, "window.__dash.charts.reward.points() === 61 && "
                           "document.querySelectorAll('[data-chart=\"reward\"] .guard-mark.stop').length === 1",
                           timeout=10)
    elapsed = time.time() - t
    assert elapsed < 5.0, f"the new step took {elapsed:.1f} s to show"
    _wait(page, f"window.__dash.refreshes > {refreshes}")  # the rest of that refresh (samples, serving) finished
    assert page.evaluate("window.__noReload") == 1
    assert page.locator('.heat[data-run="0"]').get_attribute("data-cols") == "61"
    assert "step 61" in page.locator("#live").inner_text()
    assert _points(page)["entropy"] == 60  # step 61 logged no entropy: that chart keeps its 60 points
    assert page.errors == []


def test_sample_browser_filters(page, fixture_runs, shots):
    rows_all = [json.loads(x) for x in open(fixture_runs[0] / "samples.jsonl")]
    form = page.locator("#sample-filter")
    form.locator('[name="step_min"]').fill("10")
    form.locator('[name="step_max"]').fill("12")
    form.locator('[name="reward_min"]').fill("1")
    form.locator('button[type="submit"]').click()
    want = [r for r in rows_all if 10 <= r["step"] <= 12 and r["reward"] >= 1]
    _wait(page, f"document.getElementById('sample-count').dataset.total === '{len(want)}'", timeout=10)
    rows = page.locator("#sample-table tr.sample")
    assert rows.count() == len(want) > 0
    steps = rows.evaluate_all("rs => rs.map(r => [Number(r.dataset.step), Number(r.dataset.reward)])")
    assert all(10 <= s <= 12 and r == 1.0 for s, r in steps) and steps[0][0] == max(r["step"] for r in want)
    page.locator("#samples").screenshot(path=str(shots / "samples.png"))
    page.locator("#sample-clear").click()
    form.locator('[name="text"]').fill("onerror")
    form.locator('button[type="submit"]').click()
    _wait(page, "document.getElementById('sample-count').dataset.total === '1'", timeout=10)
    cell = page.locator("#sample-table tr.sample td pre").nth(1)
    assert cell.inner_text() == XSS  # shown as text: no element was created from it
    assert page.locator("#sample-table img, #sample-table script").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.locator("#sample-clear").click()
    _wait(page, f"document.getElementById('sample-count').dataset.total === '{len(rows_all)}'", timeout=10)


def test_serving_panel_renders(page, server, shots):
    summary = server.json("/api/serve")
    charts = page.evaluate("Object.fromEntries(Object.entries(window.__dash.serveCharts).map(([k, c]) => [k, c.points()]))")
    n = len(summary["timeline"]["x"])
    assert n == 120 and charts == {"serve_rps": n, "serve_quality": n, "serve_fallback": n, "serve_latency": 30,
                                   "serve_ttft": 30}
    marks = page.locator('[data-chart="serve_quality"] .guard-mark')
    assert sorted(marks.evaluate_all("ms => ms.map(m => m.dataset.action)")) == ["breaker_close", "breaker_open"]
    region = page.locator('[data-chart="serve_quality"] .region.open')  # open from T0+300 to T0+420 of ~600 s
    assert region.count() == 1 and region.get_attribute("title") == "b: breaker open"
    plot_w = page.locator('[data-chart="serve_quality"] .u-over').bounding_box()["width"]
    assert region.bounding_box()["width"] == pytest.approx(plot_w * 120 / (summary["timeline"]["x"][-1] - summary["timeline"]["x"][0]), rel=0.05)
    arms = page.locator("#serve-arms tr")
    assert arms.count() == 3 and "closed" in arms.nth(2).inner_text()
    assert "breaker_open" in page.locator("#serve-events").inner_text()
    assert "<b>prompt" in page.locator("#serve-recent").inner_text()  # HTML in a prompt stays text
    page.locator("#serving").screenshot(path=str(shots / "serving.png"))
    page.locator("#compare").screenshot(path=str(shots / "compare.png"))
    assert page.locator("#compare-table tr[data-algo]").count() == 2
    assert page.errors == [] and page.external == []


def test_zoom_fetches_the_window_and_resets(page):
    over = page.locator('[data-chart="reward"] .u-over')
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    _wait(page, "document.getElementById('window-label').textContent.startsWith('steps ')", timeout=10)
    a, b = (int(v) for v in page.locator("#window-label").inner_text()[6:].split("–"))
    _wait(page, f"window.__dash.charts.reward.points() === {b - a + 1}", timeout=10)
    assert 8 < b - a < 30 and _points(page)["loss"] == b - a + 1  # every chart follows the window
    page.locator("#reset-zoom").click()
    _wait(page, "window.__dash.charts.reward.points() === 61", timeout=10)
    assert page.errors == []


def test_token_protected_page_works_live(browser, tmp_path):
    run = write_run(tmp_path / "gmpo-s0", 20)
    srv = DashboardServer(run, token="tok-123", poll=0.3)
    try:
        ctx = browser.new_context()
        pg = ctx.new_page()
        errors = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        assert ctx.request.get(srv.base + "/").status == 401  # no token, no page
        pg.goto(srv.base + "/?token=tok-123")
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert _points(pg)["reward"] == 20
        with open(run / "metrics.jsonl", "a") as f:  # the event stream and the fetches carry the cookie
            f.write(json.dumps({"step": 21, "reward/mean": 0.5}) + "\n")
        assert _wait(pg, "window.__dash.charts.reward.points() === 21") < 5.0
        assert errors == []
        ctx.close()
    finally:
        srv.close()


def test_serving_only_dashboard(browser, tmp_path):
    srv = DashboardServer("--serve-db", make_request_log(tmp_path / "requests.db"))
    try:
        pg = browser.new_page()
        errors = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.goto(srv.base + "/")
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert pg.locator("#training").is_hidden() and pg.locator("#runs-bar").is_hidden()
        assert pg.locator("#serving").is_visible() and pg.locator("#card-latency .value").inner_text().endswith(" ms")
        assert pg.evaluate("window.__dash.serveCharts.serve_rps.points()") == 120 and errors == []
        pg.close()
    finally:
        srv.close()
