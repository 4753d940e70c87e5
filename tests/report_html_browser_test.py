"""The run's HTML report as a person sees it: index.html, written by `report.py DIR` from one run
directory holding every suite (the fixtures combined, report_html_test.combined_run), is opened
in headless Chromium (Debian's chromium), driven over the DevTools protocol (Debian's
python3-websocket). The test fails on any console message of level warning or error, any
uncaught exception, any request other than the page's own file (the page must work offline;
data: URLs are inside the file and allowed), any chart drawn empty (no visible element in a
colour: every chart here draws its data in colours and its axes in black and grey), and any
page wider than the window. It saves screenshots of the top of the page and of each suite's
section (in $FAULTLAB_SCREENSHOTS if set, else a temporary directory).

The comparison page (`faultlab compare A B --html FILE`) gets the same checks, without charts,
and so does the page of a run with the comparison in it (`report.py DIR --baseline A`).

Exit 77 (CTest's skip) where chromium or python3-websocket is missing (`faultlab test`
installs both). Run: /usr/bin/python3 -B report_html_browser_test.py (from tests/; CTest does
this).
"""

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from report_html_test import combined_run, run_cli  # noqa: E402
from report_support import TESTS  # noqa: E402

SKIP = 77
CHROMIUM = shutil.which("chromium")
# platform.md: the flags that start Debian's chromium headless as root, with nothing fetched in
# the background (the test counts every request).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--remote-debugging-port=0")
WIDTH, HEIGHT = 1280, 1000
# How long the browser may take to start and to load the page on a busy two-CPU machine; not a
# performance bound.
START_TIMEOUT = 60
LOAD_TIMEOUT = 120
# Screenshots: the top of the page, and this much of each suite's section.
SECTION_SHOT_HEIGHT = 2400

# Per chart: its size, how many of its elements draw something, and how many draw in a colour
# (not black, white or grey: matplotlib draws axes, ticks, grid and text in those). A heatmap's
# cells are one <image>, counted as drawn in colour when it has a size.
MEASURE_PAGE = """(() => {
  const coloured = (paint) => {
    const m = /rgba?\\((\\d+), (\\d+), (\\d+)(?:, ([\\d.]+))?\\)/.exec(paint || "");
    if (!m || (m[4] !== undefined && Number(m[4]) === 0)) return false;
    const c = [m[1], m[2], m[3]].map(Number);
    return Math.max(...c) - Math.min(...c) > 40;
  };
  const charts = [...document.querySelectorAll("svg")].map((svg) => {
    const box = svg.getBoundingClientRect();
    let drawn = 0, inColour = 0;
    for (const element of svg.querySelectorAll("path, use, image, rect, polygon, polyline")) {
      const size = element.getBBox();
      if (size.width <= 0 && size.height <= 0) continue;
      const style = getComputedStyle(element);
      if (style.visibility === "hidden" || style.display === "none") continue;
      drawn++;
      if (element.tagName === "image" || coloured(style.fill) || coloured(style.stroke)) inColour++;
    }
    const figure = svg.closest("figure");
    return {id: figure ? figure.id : "", width: box.width, height: box.height, drawn: drawn,
            in_colour: inColour, texts: svg.querySelectorAll("text").length};
  });
  const sections = [...document.querySelectorAll("section[id^='suite-']")].map((section) => {
    const box = section.getBoundingClientRect();
    return {id: section.id, top: box.top + window.scrollY, height: box.height};
  });
  return {charts: charts, sections: sections, title: document.title,
          scroll_width: document.documentElement.scrollWidth,
          client_width: document.documentElement.clientWidth,
          page_height: document.documentElement.scrollHeight,
          scripts: document.scripts.length};
})()"""


def browser_missing():
    """Why the browser test cannot run here, or None."""
    if CHROMIUM is None:
        return "chromium is not installed (faultlab test installs it)"
    if importlib.util.find_spec("websocket") is None:
        return "python3-websocket is not installed (faultlab test installs it)"
    return None


class Browser:
    """A headless Chromium with one page, driven over the DevTools protocol. Every event the
    page sends is kept in events."""

    def __init__(self, scratch):
        import websocket
        self.profile = Path(scratch) / "profile"
        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self.devtools_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as reply:
            targets = json.load(reply)
        page = next(target for target in targets if target["type"] == "page")
        # Chromium refuses DevTools connections that send an Origin it was not told to allow.
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"],
                                                  timeout=LOAD_TIMEOUT, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def devtools_port(self):
        """The port Chromium chose, from the file it writes into its profile once listening."""
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode} at start")
            if active.is_file():
                lines = active.read_text().splitlines()
                if lines and lines[0].isdigit():
                    return int(lines[0])
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not listen for DevTools within {START_TIMEOUT} s")

    def receive(self):
        message = json.loads(self.socket.recv())
        if "method" in message:
            self.events.append(message)
        return message

    def call(self, method, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = self.receive()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_for(self, method):
        deadline = time.monotonic() + LOAD_TIMEOUT
        while time.monotonic() < deadline:
            if self.receive().get("method") == method:
                return
        raise RuntimeError(f"no {method} within {LOAD_TIMEOUT} s")

    def open(self, path):
        """Loads the file; returns the seconds from navigating to the load event."""
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)
        started = time.monotonic()
        self.call("Page.navigate", url=path.as_uri())
        self.wait_for("Page.loadEventFired")
        return time.monotonic() - started

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate: {result['exceptionDetails']}")
        return result["result"]["value"]

    def screenshot(self, path, top, height):
        result = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                           clip={"x": 0, "y": top, "width": WIDTH, "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(result["data"]))

    def problems(self, page):
        """Every console message of level warning or error, uncaught exception, request other
        than the page's own file, and failed load since the browser started, as text; and the
        page's own load not seen (the events are not the page's)."""
        requested = [event["params"]["request"]["url"] for event in self.events
                     if event["method"] == "Network.requestWillBeSent"]
        problems = [] if page.as_uri() in requested else [f"no request for {page.as_uri()}"]
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if url != page.as_uri() and not url.startswith("data:"):
                    problems.append(f"request for {url}")
            elif method == "Network.loadingFailed":
                problems.append(f"failed load: {params.get('errorText')} "
                                f"(request {params.get('requestId')})")
            elif method == "Runtime.exceptionThrown":
                problems.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in (
                    "error", "warning", "assert"):
                problems.append(f"console {params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                problems.append(f"log {params['entry']['level']}: {params['entry']['text']}")
        return problems

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 (closing anyway)
            pass
        self.socket.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def png_size(path):
    """(width, height) from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


class BrowserTest(unittest.TestCase):
    def setUp(self):
        self.scratch = Path(tempfile.mkdtemp(prefix="faultlab-report-html-browser-"))
        self.addCleanup(shutil.rmtree, self.scratch)
        wanted = os.environ.get("FAULTLAB_SCREENSHOTS")
        self.shots = Path(wanted) if wanted else self.scratch / "screenshots"
        self.shots.mkdir(parents=True, exist_ok=True)
        self.browser = Browser(self.scratch)
        self.addCleanup(self.browser.close)

    def test_run_report_loads_offline_with_every_chart_drawn(self):
        directory = combined_run(self.scratch / "run")
        result = run_cli(str(directory))
        self.assertEqual(result.returncode, 0, result.stderr)
        page = directory / "index.html"
        seconds = self.browser.open(page)
        measured = self.browser.evaluate(MEASURE_PAGE)
        self.assertEqual(self.browser.problems(page), [])
        self.assertEqual(measured["scripts"], 0)
        self.assertLessEqual(measured["scroll_width"], measured["client_width"],
                             "the page is wider than the window")
        # Every suite of the run has its section, in the page's order.
        self.assertEqual([section["id"] for section in measured["sections"]],
                         ["suite-fault", "suite-fork", "suite-uffd", "suite-guard",
                          "suite-numa", "suite-model"])
        # Every chart: the fault cases', and each SVG the reports wrote.
        charts = {chart["id"]: chart for chart in measured["charts"]}
        expected = {f"chart-{name.removesuffix('.svg')}" for name in os.listdir(directory)
                    if name.endswith(".svg")}
        expected |= {"chart-fault-write", "chart-fault-read_zeropage",
                     "chart-fault-write_after_zeropage"}
        self.assertEqual(set(charts), expected)
        for name, chart in charts.items():
            self.assertGreater(chart["width"], 300, name)
            self.assertGreater(chart["height"], 150, name)
            self.assertGreater(chart["drawn"], 10, name)
            self.assertGreater(chart["in_colour"], 0, f"{name} drew nothing in colour: empty")
            self.assertGreater(chart["texts"], 3, name)
        self.browser.screenshot(self.shots / "index-top.png", 0, 2200)
        for section in measured["sections"]:
            height = max(1, min(SECTION_SHOT_HEIGHT, int(section["height"])))
            path = self.shots / f"index-{section['id']}.png"
            self.browser.screenshot(path, int(section["top"]), height)
            self.assertEqual(png_size(path), (WIDTH, height))
        print(f"index.html ({page.stat().st_size} bytes, {measured['page_height']} px tall) "
              f"loaded in {seconds:.2f} s; screenshots in {self.shots}", file=sys.stderr)

    def test_comparison_page_loads_offline(self):
        a, b = (self.scratch / "a", self.scratch / "b")
        for directory, fixture in ((a, "compare_a.json"), (b, "compare_b.json")):
            directory.mkdir()
            shutil.copy(TESTS / "data" / fixture, directory / "results.json")
        page = self.scratch / "compare.html"
        result = run_cli("compare", str(a), str(b), "--html", str(page))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.browser.open(page)
        measured = self.browser.evaluate(MEASURE_PAGE)
        self.assertEqual(self.browser.problems(page), [])
        self.assertLessEqual(measured["scroll_width"], measured["client_width"])
        self.assertTrue(measured["title"].startswith("faultlab compare"))
        self.browser.screenshot(self.shots / "compare-top.png", 0, 1400)

    def test_run_report_with_a_baseline_loads_offline(self):
        a, b = (self.scratch / "a", self.scratch / "b")
        for directory, fixture in ((a, "compare_a.json"), (b, "compare_b.json")):
            directory.mkdir()
            shutil.copy(TESTS / "data" / fixture, directory / "results.json")
        result = run_cli(str(b), "--baseline", str(a))
        self.assertEqual(result.returncode, 0, result.stderr)
        page = b / "index.html"
        self.browser.open(page)
        measured = self.browser.evaluate(MEASURE_PAGE)
        self.assertEqual(self.browser.problems(page), [])
        self.assertLessEqual(measured["scroll_width"], measured["client_width"])
        # The section is there and shown: its table has a row per figure compared.
        box = self.browser.evaluate("""(() => {
          const section = document.getElementById("comparison");
          const box = section.getBoundingClientRect();
          return {top: box.top + window.scrollY, height: box.height,
                  rows: section.querySelectorAll("#comparison-figures tbody tr").length};
        })()""")
        self.assertEqual(box["rows"], 6)  # 3 benchmarks in both, time and p50 each
        self.assertGreater(box["height"], 200)
        height = min(SECTION_SHOT_HEIGHT, int(box["height"]))
        self.browser.screenshot(self.shots / "index-comparison.png", int(box["top"]), height)


if __name__ == "__main__":
    reason = browser_missing()
    if reason:
        print(f"skipped: {reason}")
        sys.exit(SKIP)
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(BrowserTest)
    ok = unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful()
    sys.exit(0 if ok else 1)
