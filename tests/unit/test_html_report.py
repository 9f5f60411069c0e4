"""The HTML report: self-contained (offline), complete, deterministic, and it really draws.

The browser test drives headless Chromium over the DevTools protocol (--remote-debugging-pipe)
in one launch: it loads the report from disk with name resolution disabled, collects console
errors, uncaught exceptions and any network request, waits for plotly to draw, reads the DOM
and takes screenshots (one full-size for people, one small one decoded here to prove the page is
not blank).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import time
import zlib
from base64 import b64decode
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from synthetic_run import make_synthetic_run
from test_result import result_of

from vmigrate.analysis import analyze
from vmigrate.report.html.page import render_html, render_report
from vmigrate.report.html.series import downsample, summed_rate, thin_marks
from vmigrate.result import Result, load_result, write_result

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs/result.schema.json").read_text())
CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = (
    "header",
    "headline",
    "checks",
    "outage",
    "waterfall",
    "timeline",
    "migration",
    "service",
    "resources",
    "data",
    "verification",
    "scenario",
)


class _Page(HTMLParser):
    """Every element's attributes, and the text outside scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)

    def classes(self) -> set[str]:
        return {c for _, attrs in self.elements for c in attrs.get("class", "").split()}

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.elements if "id" in attrs}


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_synthetic_run(tmp_path_factory.mktemp("run") / "run")
    render_report(run)
    return run


def test_the_synthetic_run_is_valid_against_the_schema(synthetic: Path) -> None:
    result = json.loads((synthetic / "result.json").read_text())
    jsonschema.validate(result, SCHEMA)
    for name in ("migration", "events", "processes", "threads", "links", "probe", "requests"):
        assert (synthetic / "series" / f"{name}.csv").stat().st_size > 100, name
    assert result["service"]["observed_downtime_ms"] == pytest.approx(300, abs=5)
    assert all(check["ok"] is True for check in result["checks"])


def test_the_report_is_self_contained_and_has_every_section(synthetic: Path) -> None:
    path = synthetic / "report.html"
    page = parse(path)
    for tag, attrs in page.elements:
        for name in ("src", "href", "data", "poster", "action"):
            value = attrs.get(name, "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (tag, attrs)
        if tag == "link":
            assert attrs.get("rel") not in ("stylesheet", "preload", "modulepreload"), attrs
        if tag == "script":
            assert "src" not in attrs, attrs
    text = path.read_text(encoding="utf-8")
    assert "@import" not in text.split("<script>")[0]  # no remote CSS either
    assert text.count("Plotly.newPlot(") == 1
    assert text.count("* plotly.js v") == 1  # inlined once
    assert set(SECTIONS) <= page.ids()
    assert "check-fail" not in page.classes()
    assert "check-banner" not in page.ids()
    assert "check-ok" in page.classes()
    words = " ".join(page.text)
    for figure in (
        "synthetic-precopy",
        "completed",
        "precopy",
        "tcg",
        "p99",
        "300.8 ms",
        "118 ms",
        "688.6 MiB",
        "source",
        "destination",
        "storage",
        "postmigrate",
    ):
        assert figure in words, figure
    # every panel of the time line has data (no "no data" note) and nothing failed to draw
    assert '"text":"no data"' not in text
    assert "could not draw" not in text
    assert path.stat().st_size < 8_000_000


def test_a_false_check_is_red_and_announced(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "run", failed_check=True)
    result = json.loads((run / "result.json").read_text())
    jsonschema.validate(result, SCHEMA)
    assert [c["name"] for c in result["checks"] if c["ok"] is False] == [
        "throughput_within_link_rate"
    ]
    page = parse(render_report(run))
    assert "check-fail" in page.classes()
    assert "check-banner" in page.ids()
    rows = [a for t, a in page.elements if t == "tr" and "check-fail" in a.get("class", "")]
    assert len(rows) == 1


def test_an_unevaluated_check_is_grey_and_an_error_is_shown_escaped(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "run")
    result = json.loads((run / "result.json").read_text())
    result["outcome"] = "failed"
    result["error"] = "QMP said <b>no</b> & gave up"
    result["checks"][0]["ok"] = None
    (run / "result.json").write_text(json.dumps(result))
    path = render_report(run)
    page = parse(path)
    assert "check-na" in page.classes() and "check-fail" not in page.classes()
    assert "run-error" in page.ids()
    assert "QMP said <b>no</b> & gave up" in " ".join(page.text)
    assert "<b>no</b> &" not in path.read_text().split("</head>")[1]


def test_rendering_is_deterministic(synthetic: Path, tmp_path: Path) -> None:
    again = make_synthetic_run(tmp_path / "run")
    assert render_report(again).read_bytes() == (synthetic / "report.html").read_bytes()


def test_missing_series_say_no_data_instead_of_failing(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "run")
    for name in ("probe", "threads", "links", "processes", "migration"):
        (run / "series" / f"{name}.csv").unlink()
    (run / "series" / "requests.csv").write_text("intended_ns,sent_ns,done_ns,status,error\n")
    text = render_report(run).read_text()
    # 7 of 8 panels: the dirty-rate panel still marks the passes, which come from result.json
    assert text.count('"text":"no data"') == 7
    assert "could not draw" not in text


def bare_run(path: Path) -> Path:
    """A run that failed early, as vmigrate writes it: nothing migrated, no series recorded,
    every analysed section empty."""
    path.mkdir(parents=True)
    recorded = result_of(None, 0)
    verification = recorded.verification.model_copy(
        update={"running_on": "none", "service_ok_after": False}
    )
    recorded = recorded.model_copy(
        update={"error": "guest never booted", "verification": verification}
    )
    write_result(path, analyze(path, recorded))
    render_report(path)
    return path


def test_a_run_that_failed_early_still_renders(tmp_path: Path) -> None:
    text = (bare_run(tmp_path / "bare") / "report.html").read_text()
    assert text.count('"text":"no data"') == 8
    assert "guest never booted" in text and "0 passed · 0 failed · 5 not evaluated" in text
    assert "no checks recorded" in render_html(tmp_path / "bare", no_checks(tmp_path / "bare"))


def no_checks(run_dir: Path) -> Result:
    """The run's result without consistency checks (a document may have none)."""
    result = load_result(run_dir)
    result.checks = []
    return result


def test_the_waterfall_draws_each_step_of_the_switchover(synthetic: Path) -> None:
    text = (synthetic / "report.html").read_text()
    waterfall = text.split('id="waterfall"')[1].split("</svg>")[0]
    # last pass, stop, RAM written, devices written, stream sent, loaded, running, first reply,
    # first response: eight steps (no capture: no announcement); the blackout is the stop →
    # running bars.
    assert waterfall.count('class="wf-bar"') == 8
    assert "+90.0 ms" in waterfall and "+20.0 ms" in waterfall  # QEMU's own checkpoints
    assert "+178.1 ms" in waterfall
    assert "vCPU blackout (stop → running on the destination)" in text


def test_downsampling_keeps_the_extremes() -> None:
    x = np.arange(1_000_000, dtype=float)
    y = np.sin(x / 1000)
    y[123_457] = 50.0
    y[765_432] = -50.0
    dx, dy = downsample(x, y, 20_000)
    assert len(dx) <= 20_000
    assert 50.0 in dy and -50.0 in dy
    assert np.all(np.diff(dx) > 0)
    assert len(thin_marks(x, 5_000)) <= 5_001


def test_rates_of_processes_that_come_and_go_add_up_without_steps() -> None:
    t = np.arange(0, 10.01, 0.2)
    steady = (t, 0.5 * t + 3.0)  # 50 % of a core, 3 s of CPU before the first sample
    late = (t[t >= 4] + 0.003, (t[t >= 4] - 4) * 1.0 + 7.0)  # appears at 4 s, jittered
    x, rate = summed_rate([steady, late], 0.2)
    assert np.allclose(rate[x < 4], 0.5)
    assert np.allclose(rate[x > 4.3], 1.5, atol=0.02)


# ---------------------------------------------------------------------------------------------
# the browser


class DevTools:
    """Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON)."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_browser, self._to_child = os.pipe()
        self._from_child, from_browser = os.pipe()
        # move the child's ends above 10 first, so placing them on 3 and 4 cannot clobber them
        child_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        argv = [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--mute-audio",
            "--hide-scrollbars",
            "--enable-unsafe-swiftshader",  # software WebGL for plotly's scattergl traces
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: nothing can go out
            f"--user-data-dir={profile}",
            "--window-size=1400,3000",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.pid = os.posix_spawn(
            argv[0],
            argv,
            {**os.environ, "HOME": str(profile)},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
                (os.POSIX_SPAWN_DUP2, child_in, 3),
                (os.POSIX_SPAWN_DUP2, child_out, 4),
            ],
            setpgroup=0,
        )
        for fd in (to_browser, from_browser, child_in, child_out, log_fd):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one command (to the page session once attached) and wait for its answer."""
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            request["sessionId"] = self.session
        os.write(self._to_child, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30.0, since: int = 0) -> dict[str, Any]:
        """The first `method` event from the `since`-th recorded one on (waiting for it)."""
        deadline = time.monotonic() + timeout
        for event in self.events[since:]:
            if event["method"] == method:
                return event
        while True:
            message = self._read_message(deadline)
            if "method" in message:
                self.events.append(message)
                if message["method"] == method:
                    return message

    def evaluate(self, expression: str) -> Any:
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def poll(self, expression: str, ok: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if ok(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.killpg(self.pid, signal.SIGKILL)  # the process group chromium leads
            os.waitpid(self.pid, 0)
        os.close(self._to_child)
        os.close(self._from_child)


FACTS = """(() => {
  const gd = document.getElementById('timeline-plot');
  const notes = [...document.querySelectorAll('#timeline-plot .annotation-text')]
    .filter(e => e.textContent === 'no data')
    .map(e => Math.round(e.getBoundingClientRect().top));
  return {
    traces: gd && gd.data ? gd.data.length : 0,
    panels: gd && gd._fullLayout ? gd._fullLayout._subplots.xaxis.length : 0,
    gl: document.querySelectorAll('#timeline-plot canvas').length,
    no_data_at: notes,
    waterfall_bars: [...document.querySelectorAll('#waterfall .wf-bar')]
      .map(e => Math.round(e.getBoundingClientRect().width)),
  };
})()"""


def browse(reports: list[Path], workdir: Path, width: int = 1400) -> list[dict[str, Any]]:
    """Load each report in turn in one headless Chromium; per report, what happened (its
    DevTools events, DOM, figure facts) and two screenshots (full size and a quarter)."""
    browser = DevTools(workdir / "profile", workdir / "chromium.log")
    seen = []
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        browser.session = browser.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable")
        for report in reports:
            first_event = len(browser.events)
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=1000,
                deviceScaleFactor=1,
                mobile=False,
            )
            browser.call("Page.navigate", url=report.resolve().as_uri())
            browser.wait_for("Page.loadEventFired", timeout=60, since=first_event)
            browser.poll(
                "document.querySelectorAll('#timeline-plot .main-svg').length",
                lambda n: bool(n),
                timeout=60,
            )
            # scattergl draws on canvases after the SVG; give regl a few frames
            browser.evaluate(
                "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))"
            )
            height = int(browser.evaluate("document.documentElement.scrollHeight"))
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            browser.evaluate("new Promise(r => setTimeout(() => r(1), 500))")
            full = browser.call(
                "Page.captureScreenshot", format="png", captureBeyondViewport=True, timeout=60
            )["data"]
            small = browser.call(
                "Page.captureScreenshot",
                format="png",
                timeout=60,
                clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 0.25},
            )["data"]
            seen.append(
                {
                    "facts": browser.evaluate(FACTS),
                    "dom": browser.evaluate("document.documentElement.outerHTML"),
                    "height": height,
                    "screenshot": b64decode(full),
                    "thumbnail": b64decode(small),
                    "first_event": first_event,
                }
            )
    finally:
        browser.close()
    for index, page in enumerate(seen):
        last = seen[index + 1]["first_event"] if index + 1 < len(seen) else None
        page["events"] = browser.events[page["first_event"] : last]
    return seen


def problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, error log entries and any non-local request."""
    found = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            found.append(f"uncaught: {params['exceptionDetails']}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:", "blob:", "about:")):
                found.append(f"network request: {url}")
    return found


def png_pixels(png: bytes) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) to an HxWxC array."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat = 8, b""
    width = height = channels = 0
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        chunk = png[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        offset += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.int64)
    previous = np.zeros(stride, dtype=np.int64)
    for row in range(height):
        start = row * (stride + 1)
        filter_type = raw[start]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=start + 1).astype(np.int64)
        if filter_type == 0:
            current = line
        elif filter_type == 2:
            current = (line + previous) & 0xFF
        elif filter_type == 1:  # Sub: a running sum per channel
            current = (np.cumsum(line.reshape(width, channels), axis=0) & 0xFF).reshape(stride)
        else:  # Average and Paeth depend on the pixel just decoded: one at a time
            values = line.tolist()
            up = previous.tolist()
            for i in range(stride):
                left = values[i - channels] if i >= channels else 0
                if filter_type == 3:
                    values[i] = (values[i] + ((left + up[i]) >> 1)) & 0xFF
                else:
                    corner = up[i - channels] if i >= channels else 0
                    p = left + up[i] - corner
                    pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner
                    values[i] = (values[i] + pred) & 0xFF
            current = np.array(values, dtype=np.int64)
        out[row] = current
        previous = current
    return out.reshape(height, width, channels).astype(np.uint8)


@pytest.mark.timeout(180)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make setup)")
def test_chromium_renders_the_report_without_errors(synthetic: Path, tmp_path: Path) -> None:
    bare = bare_run(tmp_path / "bare")
    seen, seen_bare = browse([synthetic / "report.html", bare / "report.html"], tmp_path)
    shot = synthetic / "report.png"
    shot.write_bytes(seen["screenshot"])
    if keep := os.environ.get("VMIGRATE_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, keep)

    assert problems(seen["events"]) == []
    assert 'class="main-svg"' in seen["dom"]
    facts = seen["facts"]
    assert facts["panels"] == 8, facts
    assert facts["traces"] >= 25, facts
    assert facts["gl"] >= 1, facts  # the scattergl layers exist
    assert facts["no_data_at"] == [], facts
    bars = facts["waterfall_bars"]  # the switch-over's eight steps, laid out and visible
    assert len(bars) == 8 and all(width >= 1 for width in bars) and max(bars) > 100, facts

    pixels = png_pixels(seen["thumbnail"])
    assert pixels.shape[0] >= seen["height"] // 4 - 2 and pixels.shape[1] == 350
    rgb = pixels[:, :, :3].reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    assert len(colours) > 200  # text, lines, bands, markers: far from a blank page
    assert 1 - counts.max() / len(rgb) > 0.15  # and no single colour covers the page
    red = (rgb[:, 0] > 180) & (rgb[:, 1] < 90) & (rgb[:, 2] < 90)
    blue = (rgb[:, 2] > 180) & (rgb[:, 0] < 90)
    assert red.sum() > 20 and blue.sum() > 200  # plotted markers and lines, not just text

    # a run without series still lays out all eight panels, each saying "no data" in itself
    assert problems(seen_bare["events"]) == []
    assert seen_bare["facts"]["panels"] == 8, seen_bare["facts"]
    assert len(set(seen_bare["facts"]["no_data_at"])) == 8, seen_bare["facts"]
