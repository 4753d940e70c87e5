"""`faultlab run --flamegraph` through the front door (scripts/faultlab, on the build CTest
tests: FAULTLAB_BUILD_DIR and FAULTLAB_PREBUILT): one fast benchmark recorded with perf gives
folded stacks with faultlab's own functions by name and, where kptr_restrict lets perf name
them, the kernel's page-fault handlers; a flame graph page that loads nothing from the network;
and index.html links to both; in headless Chromium (report_html_browser_test's driver) the page
draws faultlab's frames offline, with no console error, and index.html loads clean. perf
records only half of each benchmark's repetitions (the run has twice as many, 1 and 2 of every 4
recorded) and nothing outside them, and the run reports what the recording cost, recorded
repetitions against plain ones. Where perf is missing, the run is refused before it starts.

The recording test is skipped where perf cannot record here; the refusal is tested everywhere.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import report_html_browser_test  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FAULTLAB = ROOT / "scripts" / "faultlab"
# Anonymous first-touch faults: fast in --quick, and every sample of the timed loop is either in
# bench/ code touching the page or in the kernel's fault path below it.
FILTER = "^fault/write/anon4k/region_mib:64/procs:1/.*/threads:1$"
# faultlab's own frames, by name: the fault suite's functions (bench/fault_suite.cc) that touch
# the pages.
USER_FRAME = re.compile(r"(^|;)faultlab::[^;]*(RunFaultCase|MeasureWorker)")
KERNEL_FAULT_FRAMES = {"handle_mm_fault_[k]", "exc_page_fault_[k]", "do_user_addr_fault_[k]",
                       "asm_exc_page_fault_[k]", "do_anonymous_page_[k]"}
# A page loads something when an element's src or href, a CSS url() or @import names an
# absolute or protocol-relative address. XML namespace strings (d3's) load nothing.
LOADS = re.compile(r"""(\b(src|href)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)(https?:)?//""",
                   re.I)


# The flame graph page's frames as drawn: d3-flame-graph draws each frame as a <g class="frame">
# holding a <rect>; a frame with width is one the reader sees.
MEASURE_FLAME_GRAPH = """(() => {
  const frames = [...document.querySelectorAll("g.frame rect")];
  const shown = frames.filter((rect) => rect.getBoundingClientRect().width > 0);
  return {frames: frames.length, shown: shown.length,
          names: [...document.querySelectorAll("g.frame")].map((g) => g.textContent).slice(0, 200),
          scroll_width: document.documentElement.scrollWidth,
          client_width: document.documentElement.clientWidth};
})()"""


def faultlab(*args, env=None):
    environment = {**os.environ, "FAULTLAB_PREBUILT": "1", **(env or {})}
    return subprocess.run([str(FAULTLAB), *args], capture_output=True, text=True, timeout=900,
                          env=environment)


def perf_can_record():
    try:
        return subprocess.run(["perf", "record", "-a", "-q", "-e", "cpu-clock", "-g", "-o",
                               "/dev/null", "--", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


class FlameGraph(unittest.TestCase):
    def setUp(self):
        self.scratch = Path(tempfile.mkdtemp(prefix="flamegraph-test-"))
        self.addCleanup(shutil.rmtree, self.scratch)

    def test_missing_perf_is_refused(self):
        out = self.scratch / "out"
        result = faultlab("run", "--quick", "--flamegraph", "--filter", FILTER, "--out", str(out),
                          env={"FAULTLAB_PERF": str(self.scratch / "no-perf")})
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("--flamegraph needs perf", lines[0])
        self.assertFalse(out.exists())

    def test_run_writes_flame_graphs(self):
        if not perf_can_record():
            self.skipTest("perf cannot record here")
        out = self.scratch / "out"
        result = faultlab("run", "--quick", "--flamegraph", "--filter", FILTER, "--out", str(out))
        self.assertEqual(result.returncode, 0, result.stderr)
        results = json.loads((out / "results.json").read_text())
        spans = results["context"]["faultlab"]["benchmark_spans"]
        self.assertTrue(spans)
        index = json.loads((out / "flamegraphs" / "index.json").read_text())
        self.assertEqual([entry["name"] for entry in index["benchmarks"]],
                         [span["name"] for span in spans])
        page = (out / "index.html").read_text()
        for entry in index["benchmarks"]:
            with self.subTest(benchmark=entry["name"]):
                folded = (out / "flamegraphs" / entry["folded"]).read_text().splitlines()
                self.assertTrue(folded)
                self.assertEqual(sum(int(line.rsplit(" ", 1)[1]) for line in folded),
                                 entry["samples"])
                stacks = [line.rsplit(" ", 1)[0] for line in folded]
                self.assertTrue(any(USER_FRAME.search(stack) for stack in stacks),
                                "no faultlab function in:\n" + "\n".join(stacks[:20]))
                if index["recording"]["kptr_restrict"] == 0:
                    frames = {frame for stack in stacks for frame in stack.split(";")}
                    self.assertTrue(frames & KERNEL_FAULT_FRAMES,
                                    "no page-fault handler in:\n" + "\n".join(stacks[:20]))
                html = (out / "flamegraphs" / entry["html"]).read_text()
                self.assertIsNone(LOADS.search(html), "the page loads from the network")
                # The stacks are in the page: a frame of the folded file is in its data.
                user = next(frame for stack in stacks for frame in stack.split(";")
                            if USER_FRAME.search(frame))
                self.assertIn(json.dumps(user)[1:-1], html)
                self.assertIn(f'href="flamegraphs/{entry["html"]}"', page)
                self.assertIn(f'href="flamegraphs/{entry["folded"]}"', page)
        self.assertIn('id="flamegraphs"', page)
        self.check_half_recorded(out, results, spans, page)
        self.check_in_the_browser(out, index)

    def check_in_the_browser(self, out, index):
        """The flame graph page and index.html in headless Chromium, as a person opens them:
        no console error or warning, no request but the page's own, frames drawn (the busiest
        benchmark's), screenshots of both. Skipped where chromium or python3-websocket is
        missing (faultlab test installs both)."""
        missing = report_html_browser_test.browser_missing()
        if missing:
            self.skipTest(missing)
        browser = report_html_browser_test.Browser(self.scratch)
        self.addCleanup(browser.close)
        busiest = max(index["benchmarks"], key=lambda entry: entry["samples"])
        flame = out / "flamegraphs" / busiest["html"]
        browser.open(flame)
        # d3-flame-graph grows its frames from width 0 in a transition after the load.
        deadline = time.monotonic() + 30
        drawn = browser.evaluate(MEASURE_FLAME_GRAPH)
        while drawn["shown"] < drawn["frames"] and time.monotonic() < deadline:
            time.sleep(0.2)
            drawn = browser.evaluate(MEASURE_FLAME_GRAPH)
        self.assertEqual(browser.problems(flame), [])
        self.assertGreater(drawn["shown"], 0, "the flame graph drew no frame")
        # faultlab's own frames, by name, among those drawn.
        self.assertTrue(any("RunFaultCase" in name or "MeasureWorker" in name
                            for name in drawn["names"]), drawn["names"][:20])
        shots = Path(os.environ.get("FAULTLAB_SCREENSHOTS", self.scratch))
        shots.mkdir(parents=True, exist_ok=True)
        browser.screenshot(shots / "flamegraph.png", 0, 1000)
        self.assertGreater((shots / "flamegraph.png").stat().st_size, 0)
        browser.events.clear()
        page = out / "index.html"
        browser.open(page)
        self.assertEqual(browser.problems(page), [])
        self.assertTrue(browser.evaluate(
            "document.querySelectorAll('#flamegraphs a[href$=\\'.html\\']').length > 0"))
        browser.screenshot(shots / "flamegraph-index.png", 0, 1400)

    def check_half_recorded(self, out, results, spans, page):
        """Twice the repetitions (3 in --quick), 1, 2 and 5 of them recorded; no sample outside
        the benchmarks (faultlab's start, before the first, has perf's events off); the cost of
        the recording per benchmark in recording_cost.csv and index.html."""
        self.assertIn("profile_control", results["context"]["faultlab"])
        # The run's own comm, and only its samples: every stack starts with it.
        comm = results["context"]["faultlab"]["profile_control"]["comm"]
        self.assertRegex(comm, r"^faultlab-[0-9a-f]+$")
        for entry in json.loads((out / "flamegraphs" / "index.json").read_text())["benchmarks"]:
            stacks = (out / "flamegraphs" / entry["folded"]).read_text().splitlines()
            # A folded line is the stack, a space, the count; a sample without a call chain is
            # the comm alone.
            roots = {line.rsplit(" ", 1)[0].split(";", 1)[0] for line in stacks}
            self.assertEqual(roots, {comm})
        for span in spans:
            rows = [row for row in results["benchmarks"]
                    if row["run_name"] == span["name"] and row["run_type"] == "iteration"]
            self.assertEqual(sorted(row["repetition_index"] for row in rows), list(range(6)))
            self.assertEqual(span["recorded_repetitions"], [1, 2, 5])
        times = subprocess.run(["perf", "script", "-i", str(out / "flamegraphs" / "perf.data"),
                                "-F", "time"], capture_output=True, text=True, check=True).stdout
        samples = [float(line.strip().rstrip(":")) for line in times.splitlines() if line.strip()]
        self.assertTrue(samples)
        before = [t for t in samples if t < spans[0]["start"]]
        self.assertEqual(before, [], "perf sampled faultlab's start, before any benchmark")
        with open(out / "flamegraphs" / "recording_cost.csv") as f:
            cost = list(csv.DictReader(f))
        self.assertEqual({row["benchmark"] for row in cost if row["figure"] == "time_ns"},
                         {span["name"] for span in spans})
        for row in cost:
            self.assertEqual((row["a_repetitions"], row["b_repetitions"]), ("3", "3"))
            self.assertGreater(float(row["ratio"]), 0)
        self.assertIn("Recording&#x27;s cost, measured in this run", page)


if __name__ == "__main__":
    unittest.main()
