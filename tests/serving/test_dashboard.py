"""The dashboard page: its routes, and end-to-end in real headless Chromium (Debian's
``chromium`` driven by Playwright; nothing is downloaded at run time) over the demo
pipeline running in this process (producer, processor and API threads)."""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from adpulse.config import Settings
from adpulse.serving import api
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

#: One xdist worker runs this module: its module-scoped fixtures are built once, not
#: once on each worker.
pytestmark = pytest.mark.xdist_group("dashboard")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
#: Where the browser test saves its screenshots: a scratch folder, unless
#: ADPULSE_UPDATE_SCREENSHOTS=1 asks to refresh the README's (docs/dashboard*.png).
SCREENSHOT = (
    Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
    if os.environ.get("ADPULSE_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "adpulse-screenshots" / "dashboard.png"
)
TILE_KEYS = (
    "impressions",
    "clicks",
    "conversions",
    "revenue",
    "ctr",
    "conversion_rate",
    "revenue_per_conversion",
    "latency_p50",
    "latency_p90",
)


# --- routes (no browser) ------------------------------------------------------------------
@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        with TestClient(api.create_app(wh, Settings(home=tmp_path))) as c:
            yield c


def test_page_and_static_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for src in ('src="/vendor/chart.js"', 'src="/static/app.js"', 'href="/static/app.css"'):
        assert src in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")
    for bad in ("/static/index.html", "/static/..%2Fapi.py", "/static/package.json"):
        response = client.get(bad)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_vendor_chart_library_from_npm(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = (api.WEB_DIR / "node_modules" / api.VENDOR_FILES["chart.js"]).is_file()
    if installed:
        response = client.get("/vendor/chart.js")
        assert response.status_code == 200
        assert "Chart" in response.text[:2000]
    elif os.environ.get("CI"):
        pytest.fail("chart.js is not installed: the install step runs `npm ci` (./run)")
    monkeypatch.setitem(api.VENDOR_FILES, "chart.js", "missing/chart.umd.min.js")
    missing = client.get("/vendor/chart.js")
    assert missing.status_code == 404
    assert "npm ci" in missing.json()["detail"]
    other = client.get("/vendor/other.js")
    assert other.status_code == 404
    for answer in (missing, other):  # no server file paths for anyone who asks
        assert str(api.WEB_DIR.parent) not in answer.text
        assert str(Path.home()) not in answer.text


# --- in the browser -----------------------------------------------------------------------
def _need_browser() -> Any:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (dev extra)")
        pytest.skip("playwright is not installed")
    return sync_playwright


@contextmanager
def _demo(
    home: Path, *, rate: float, history_days: float, ready: Callable[[str], bool]
) -> Iterator[str]:
    """The demo (generator -> log -> processor -> warehouse, and the API) in threads of
    this process; yields the dashboard URL once ``ready(url)`` holds."""
    from adpulse.operations.demo import run_demo

    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_demo(
                Settings(home=home, partitions=2),
                console,
                rate=rate,
                seed=11,
                history_days=history_days,
                duration=None,
                refresh=0.5,
                serve_at=("127.0.0.1", 0),
                stop=stop,
            )
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, name="demo", daemon=True)
    thread.start()
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline and not errors:
        found = re.search(r"dashboard at (http://\S+/)", out.getvalue())
        url = found.group(1) if found else None
        time.sleep(0.1)
    assert url is not None, f"demo did not start: {errors} {out.getvalue()[-2000:]}"
    while time.monotonic() < deadline and not ready(url):
        time.sleep(0.5)
    try:
        yield url
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not errors, errors


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo with a few minutes of history; yields the dashboard URL."""

    def ready(url: str) -> bool:  # the backfilled history is in the warehouse
        body = httpx.get(url + "api/v1/summary").json()
        return bool(body["summary"]["impressions"] and body["summary"]["conversions"])

    home = tmp_path_factory.mktemp("demo")
    with _demo(home, rate=300, history_days=5 / 1440, ready=ready) as url:
        yield url


#: ``demo --days 1`` backfills up to 3 M events (2,000/s: the last 20 min at the live
#: rate); the test runs the same plan at 100/s under a cap of 225,000, so that the last
#: 30 min run at the live rate and 45,000 events thin out over the rest of the day.
DAYS1_RATE, DAYS1_CAP = 100, 225_000


@pytest.fixture(scope="module")
def days1_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo after a day of backfill (``--days 1``, a smaller cap: see above)."""
    from adpulse.operations import demo

    def ready(url: str) -> bool:  # the processor is through the backfill
        body = httpx.get(url + "api/v1/summary").json()["summary"]
        return bool(body["impressions"] and body["impressions"] >= 0.95 * DAYS1_CAP / 1.03)

    home = tmp_path_factory.mktemp("days1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "MAX_HISTORY_EVENTS", DAYS1_CAP)
        with _demo(home, rate=DAYS1_RATE, history_days=1, ready=ready) as url:
            yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _need_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _tiles(page: Any) -> dict[str, str]:
    return dict(
        page.eval_on_selector_all(
            ".tile", "ts => ts.map(t => [t.dataset.key, t.querySelector('.value').dataset.value])"
        )
    )


def _same(shown: str, expected: Any) -> bool:
    if expected is None:
        return shown == ""
    if shown == "":
        return False
    return abs(float(shown) - float(expected)) <= 1e-9 * max(1.0, abs(float(expected)))


def _loads(page: Any) -> int:
    return int(page.evaluate("Number(document.body.dataset.loaded || 0)"))


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: {last!r} {_MISMATCH}")


def _matches_api(page: Any, base: str, extra: dict[str, str]) -> Any:
    """Tiles equal the API's summary for the window and filters the page shows."""
    window = page.evaluate("[document.body.dataset.from, document.body.dataset.to]")
    shown = _tiles(page)
    params = {"from": window[0], "to": window[1], **extra}
    summary = httpx.get(base + "api/v1/summary", params=params).json()["summary"]
    bad = {
        k: (shown.get(k), summary[k]) for k in TILE_KEYS if not _same(shown.get(k, ""), summary[k])
    }
    _MISMATCH[:] = [params, bad]
    return summary if not bad else None


_MISMATCH: list[Any] = []
GROWING = ("impressions", "clicks", "conversions", "revenue")


def _window(page: Any) -> list[str]:
    return list(page.evaluate("[document.body.dataset.from, document.body.dataset.to]"))


def _bracketed(page: Any, base: str) -> Any:
    window = _window(page)
    params = {"from": window[0], "to": window[1]}
    before = httpx.get(base + "api/v1/summary", params=params).json()["summary"]
    loads = _loads(page)
    # refreshes run one at a time: the second one from now started after `before`
    _until(lambda: _loads(page) >= loads + 2, 30, "two refreshes")
    shown = _tiles(page)
    after = httpx.get(base + "api/v1/summary", params=params).json()["summary"]
    if _window(page) != window:
        return None
    bad = {
        k: (before[k], shown[k], after[k])
        for k in GROWING
        if not float(before[k]) - 1e-6 <= float(shown[k]) <= float(after[k]) + 1e-6
    }
    _MISMATCH[:] = [params, bad]
    return after if not bad else None


@pytest.mark.browser
def test_dashboard_live_in_chromium(browser: Any, demo_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(demo_url)
    page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1", timeout=30_000)
    assert "range=15m" in page.url
    assert page.is_hidden("#note"), "the chart library should be installed"
    assert page.eval_on_selector_all("canvas", "cs => cs.length") >= 10

    # while data flows into the window, the tiles lie between the API's numbers just
    # before and just after the page's fetch (counts only grow)
    summary = _until(lambda: _bracketed(page, demo_url), 40, "API before <= tiles <= API after")
    assert summary["impressions"] > 0

    # live: the numbers change while data flows (the SSE stream triggers refetches)
    before = _tiles(page)["impressions"]
    loads = _loads(page)
    _until(lambda: _tiles(page)["impressions"] != before, 30, "tiles to change")
    assert _loads(page) > loads
    assert page.inner_text("#live") == "live"

    # the phone width: no horizontal scrolling of the page
    page.set_viewport_size({"width": 390, "height": 844})
    _until(
        lambda: page.evaluate("document.documentElement.scrollWidth") <= 391,
        5,
        "no horizontal scrolling at phone width",
    )
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-phone.png")), full_page=False)
    page.set_viewport_size({"width": 1280, "height": 900})

    # a shared URL with a custom, closed window: numbers settle and equal the API's
    now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    start, end = now - timedelta(minutes=6), now - timedelta(minutes=2)
    shared = f"{demo_url}?range=custom&from={start:%Y-%m-%dT%H:%M}&to={end:%Y-%m-%dT%H:%M}"
    page.goto(shared)
    page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1", timeout=30_000)
    assert page.input_value("input[name=from]") == f"{start:%Y-%m-%dT%H:%M}"
    everything = _until(lambda: _matches_api(page, demo_url, {}), 20, "custom window == API")
    text = page.inner_text(".tile[data-key=impressions] .value")
    assert text == f"{everything['impressions']:,}"

    # a filter: the URL carries it and the numbers follow the API's filtered numbers
    loads = _loads(page)
    page.select_option("select[name=platform]", "Mobile")
    _until(lambda: _loads(page) > loads, 20, "the filtered view to load")
    assert "platform=Mobile" in page.url
    mobile = _until(
        lambda: _matches_api(page, demo_url, {"platform": "Mobile"}), 20, "filtered == API"
    )
    assert 0 < mobile["impressions"] < everything["impressions"]
    assert _tiles(page)["impressions"] != str(everything["impressions"])

    # the live view, for the README
    page.goto(demo_url + "?range=15m")
    page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 2", timeout=30_000)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert not errors, errors
    page.close()


def _chart(page: Any, canvas: str) -> Any:
    """What a chart draws: its labels, and the tick labels of each axis."""
    return page.evaluate(
        """id => { const c = Chart.getChart(id); return { labels: c.data.labels,
        x: c.scales.x.ticks.map(t => c.scales.x.getLabelForValue(t.value)),
        y: c.scales.y.ticks.map(t => c.scales.y.getLabelForValue(t.value)) }; }""",
        canvas,
    )


@pytest.mark.browser
def test_dashboard_labels_and_texts_read_right(browser: Any, demo_url: str) -> None:
    """Every bar labelled, health with each dead letter's stream and no cut table,
    "new" against a thin previous period, trending's rate and its pp, readable hourly
    labels with the partial last hour marked, age bands youngest first, the conversions
    tile saying what it counts, and a hint under tables cut at phone width."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(demo_url + "?range=24h")
    page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1", timeout=30_000)

    for dimension in ("platform", "location", "gender", "age_band", "interest"):
        drawn = _chart(page, f"c-b-{dimension}")
        assert drawn["labels"] and drawn["y"] == drawn["labels"], dimension  # every bar
        window = _window(page)
        rows = httpx.get(
            f"{demo_url}api/v1/breakdown/{dimension}", params={"from": window[0], "to": window[1]}
        ).json()["rows"]
        most = sorted(rows, key=lambda r: -r["clicks"])[:12]
        # the 12 values with most clicks (ties at the edge may differ), in the API's order
        assert len(drawn["labels"]) == len(most), dimension
        if len(rows) > 12:
            caption = page.inner_text(f"#cap-{dimension}")
            assert caption.endswith(f"(the 12 with most clicks of {len(rows)})")
    histogram = _chart(page, "c-histogram")
    assert len(histogram["labels"]) > 6 and histogram["x"] == histogram["labels"]
    assert histogram["labels"][:2] == ["0 s–30 s", "30 s–1 min"]

    ages = _chart(page, "c-b-age_band")["labels"]
    order = ["<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+", "(unknown)"]
    assert ages == sorted(ages, key=order.index) and len(ages) >= 3

    hourly = _chart(page, "c-volume")["labels"]
    assert all(re.fullmatch(r"[A-Z][a-z]{2} \d{1,2} \d\d:00( \(partial\))?", x) for x in hourly)
    assert hourly[-1].endswith(" (partial)") and page.is_visible("#partial")
    assert "is not complete yet" in page.inner_text("#partial")

    # the backfill is 5 minutes: the 24 h before hold nothing to compare with
    assert page.inner_text(".tile[data-key=impressions] .delta") == "no previous data"
    conversions = page.inner_text(".tile[data-key=conversions]")
    assert conversions.startswith("Conversions (all)\n")
    assert re.search(r"\nattributed: [\d,]+\n", conversions), conversions

    note = page.inner_text("#trending-note")
    assert note.startswith("conversion rate = attributed conversions per click, in the latest")
    assert "change in percentage points (pp)" in note
    headers = page.eval_on_selector_all("#trending th", "ths => ths.map(t => t.textContent)")
    assert headers == ["campaign", "conv. rate before", "conv. rate latest", "change", "clicks"]
    changes = page.eval_on_selector_all(
        "#trending td:nth-child(4)", "t => t.map(c => c.textContent)"
    )
    assert all(c.endswith(" pp") for c in changes if c != "no data")

    health = httpx.get(demo_url + "api/v1/health").json()
    text = page.inner_text("#health")
    for dead in health["dead_letters"]:
        assert f"{dead['stream']} · {dead['reason']}: " in text
    assert not page.eval_on_selector("#health .scroll", "s => s.classList.contains('cut')")
    assert page.is_hidden("#health .scroll-hint")

    icon = httpx.get(demo_url + "favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"

    page.set_viewport_size({"width": 390, "height": 844})
    _until(
        lambda: page.eval_on_selector("#health .scroll", "s => s.classList.contains('cut')"),
        5,
        "the health table to say it scrolls at phone width",
    )
    assert page.is_visible("#health .scroll-hint")
    assert page.inner_text("#health .scroll-hint") == "scroll sideways for more →"

    # a filtered URL, for the docs
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(demo_url + "?range=1h&platform=mobile")  # any case: the API gives the stored one
    page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1", timeout=30_000)
    assert page.is_hidden("#error")
    # the picker and the URL show the stored spelling
    assert page.input_value("select[name=platform]") == "Mobile"
    options = page.eval_on_selector_all(
        "select[name=platform] option", "os => os.map(o => o.value)"
    )
    assert "mobile" not in options and "platform=Mobile" in page.url
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-filtered.png")), full_page=True)
    assert not errors, errors
    page.close()


def test_dashboard_after_a_day_of_backfill(browser: Any, days1_url: str) -> None:
    """After ``demo --days 1``: the 15-minute range compares with a previous period at the
    live rate (a percentage, not +80,000 %); the hour range, whose previous hour is the
    thinned backfill, says so instead of comparing, and a note says where history thins."""
    health = httpx.get(days1_url + "api/v1/health").json()
    history = health["live"]["history"]
    assert history["live_rate"] == DAYS1_RATE and history["thinnest_rate"] < DAYS1_RATE / 10
    dense_from = datetime.fromisoformat(history["dense_from"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(history["end"].replace("Z", "+00:00"))
    assert end - dense_from == timedelta(minutes=30)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(days1_url + "?range=15m")
    page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1", timeout=30_000)
    delta = page.inner_text(".tile[data-key=impressions] .delta")
    found = re.fullmatch(r"[▲▼] \+?(-?[\d.]+)% vs previous", delta)
    assert found and abs(float(found.group(1))) < 25, delta  # live vs history at the same rate
    assert page.is_hidden("#thinned")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-days1.png")), full_page=True)

    page.goto(days1_url + "?range=1h")
    page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1", timeout=30_000)
    for key in TILE_KEYS:
        shown = page.inner_text(f".tile[data-key={key}] .delta")
        assert shown in ("previous: thinned backfill", "no previous data"), (key, shown)
    assert page.inner_text(".tile[data-key=impressions] .delta") == "previous: thinned backfill"
    title = page.get_attribute(".tile[data-key=impressions] .delta", "title") or ""
    assert f"backfill before {dense_from:%Y-%m-%d %H:%M} UTC" in title
    note = page.inner_text("#thinned")
    assert note.startswith(f"History before {dense_from:%Y-%m-%d %H:%M} UTC is the demo's thinned")
    assert f"against {DAYS1_RATE}/s live" in note
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-days1-hour.png")), full_page=True)
    assert not errors, errors
    page.close()


def test_favicon_is_served(client: TestClient) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.text.startswith("<svg")
    assert '<link rel="icon" href="/favicon.ico"' in client.get("/").text


@pytest.mark.browser
def test_page_without_chart_library_still_shows_numbers(
    browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from query_dataset import build

    monkeypatch.setitem(api.VENDOR_FILES, "chart.js", "missing/chart.umd.min.js")
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        build(wh)  # September 2023: quick ranges must follow the data, not "now"
        app = api.create_app(wh, Settings(home=tmp_path), refresh_seconds=0.2)
        sock = api.bind("127.0.0.1", 0)
        server = api.make_server(app)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            base = api.url_of(sock)
            _until(lambda: httpx.get(base + "healthz").status_code == 200, 10, "server")
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "?range=1h")
            page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1")
            assert page.is_visible("#note")
            assert "chart library is not installed" in page.inner_text("#note")
            summary = _matches_api(page, base, {})
            assert summary is not None
            assert page.evaluate("document.body.dataset.to") == "2023-09-09T10:05"
            assert page.inner_text(".tile[data-key=impressions] .value") == "230"
            assert summary["impressions"] == 230
            # "vs previous": a percentage against 140 impressions before (80 now) ...
            at = "?range=custom&from=2023-09-09T10:0{}&to=2023-09-09T10:0{}"
            page.goto(base + at.format(1, 3))
            page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1")
            delta = ".tile[data-key=impressions] .delta"
            assert page.inner_text(delta) == "▼ -42.9% vs previous"
            # ... and "new" against 80 before (under 100: too few to compare)
            page.goto(base + at.format(3, 5))
            page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1")
            assert page.inner_text(".tile[data-key=impressions] .value") == "10"
            assert page.inner_text(delta) == "new vs previous"
            assert page.get_attribute(delta, "title") == (
                "previous 2 min: 80 (too few impressions before to compare: 80)"
            )
            page.close()
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()


def test_chromium_is_installed_by_ci() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "apt-get install -y -qq chromium" in ci
    assert (
        shutil.which("npm") is None
        or "npm ci" in (Path(__file__).resolve().parents[2] / "run").read_text()
    )


@pytest.mark.browser
def test_page_asks_for_a_read_key_once_then_shows_numbers(browser: Any, tmp_path: Path) -> None:
    """A server that requires keys: the page asks for one, refuses a write key, keeps the
    read key in an HttpOnly cookie (scripts cannot read it) and then shows the numbers."""
    from query_dataset import build

    from adpulse.serving.auth import KeyRing, access_for, create_key

    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        build(wh)
        _, read_key = create_key(wh, "read")
        _, write_key = create_key(wh, "write")
        access = access_for("required", "127.0.0.1", KeyRing.of(wh, 5.0))
        app = api.create_app(wh, Settings(home=tmp_path), refresh_seconds=0.2, access=access)
        sock = api.bind("127.0.0.1", 0)
        server = api.make_server(app)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            base = api.url_of(sock)
            _until(lambda: httpx.get(base + "healthz").status_code == 200, 10, "server")
            assert httpx.get(base + "api/v1/summary").status_code == 401
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(base + "?range=1h")
            page.wait_for_selector("#key-form:not([hidden])", timeout=10_000)
            assert _loads(page) == 0
            page.fill("#key-form input[name=key]", write_key)
            page.click("#key-form button[type=submit]")
            page.wait_for_function(
                "document.getElementById('key-error').textContent.includes('write key')"
            )
            assert page.is_visible("#key-form")
            page.fill("#key-form input[name=key]", read_key)
            page.click("#key-form button[type=submit]")
            page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1")
            assert page.is_hidden("#key-form")
            assert page.inner_text(".tile[data-key=impressions] .value") == "230"
            assert page.evaluate("document.cookie") == ""  # HttpOnly: not for scripts
            (cookie,) = context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
                "adpulse_key",
                True,
                "Strict",
            )
            # the live stream works with the cookie too
            page.wait_for_function("document.getElementById('live').textContent === 'live'")
            # a second page of the same browser asks no more
            again = context.new_page()
            again.goto(base + "?range=1h")
            again.wait_for_function("Number(document.body.dataset.loaded || 0) >= 1")
            assert again.is_hidden("#key-form")
            context.close()
        finally:
            api.stop_server(server, thread)  # ends the live streams first
            sock.close()


def test_api_docs_use_no_cdn_and_can_be_turned_off(client: TestClient, tmp_path: Path) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    for url in ("/vendor/swagger-ui-bundle.js", "/vendor/swagger-ui.css", "/openapi.json"):
        assert url in page.text
    assert "cdn.jsdelivr.net" not in page.text
    assert "https://" not in page.text
    assert client.get("/redoc").status_code == 404  # it would load from a CDN
    if (api.WEB_DIR / "node_modules" / api.VENDOR_FILES["swagger-ui.css"]).is_file():
        media = {
            "swagger-ui-bundle.js": "text/javascript",
            "swagger-ui.css": "text/css",
            "swagger-favicon.png": "image/png",
        }
        for name, kind in media.items():
            answer = client.get(f"/vendor/{name}")
            assert (answer.status_code, answer.headers["content-type"].split(";")[0]) == (
                200,
                kind,
            )
    elif os.environ.get("CI"):
        pytest.fail("swagger-ui-dist is not installed: the install step runs `npm ci` (./run)")
    with DuckDBWarehouse(tmp_path / "off.duckdb") as wh:
        wh.create_schema()
        with TestClient(api.create_app(wh, Settings(home=tmp_path, api_docs=False))) as off:
            assert off.get("/docs").status_code == 404
            assert off.get("/openapi.json").status_code == 404
            assert off.get("/api/v1/health").status_code == 200


@pytest.mark.browser
def test_api_docs_render_offline_in_chromium(browser: Any, tmp_path: Path) -> None:
    """Swagger UI shows the API with every request to another host refused."""
    if not (api.WEB_DIR / "node_modules" / api.VENDOR_FILES["swagger-ui.css"]).is_file():
        pytest.skip("swagger-ui-dist is not installed (npm ci)")
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        app = api.create_app(wh, Settings(home=tmp_path))
        sock = api.bind("127.0.0.1", 0)
        server = api.make_server(app)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            base = api.url_of(sock)
            _until(lambda: httpx.get(base + "healthz").status_code == 200, 10, "server")
            context = browser.new_context()
            elsewhere: list[str] = []

            def only_this_server(route: Any) -> None:
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            context.route("**/*", only_this_server)
            page = context.new_page()
            page.goto(base + "docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            paths = page.eval_on_selector_all(
                ".opblock-summary-path", "ps => ps.map(p => p.dataset.path)"
            )
            assert "/api/v1/summary" in paths
            assert page.inner_text(".info .title").startswith("adpulse")
            assert elsewhere == []
            context.close()
        finally:
            api.stop_server(server, thread)
            sock.close()
