"""`faultlab run --flamegraph` through the front door (scripts/faultlab, on the build CTest
tests: FAULTLAB_BUILD_DIR and FAULTLAB_PREBUILT): one fast benchmark recorded with perf gives
folded stacks with faultlab's own functions by name and, where kptr_restrict lets perf name
them, the kernel's page-fault handlers; a flame graph page that loads nothing from the network;
and index.html links to both (where chromium is installed, it draws the page's frames). perf
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
import tempfile
import unittest
from pathlib import Path

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


def rendered_frames(page):
    """How many frames headless Chromium draws in the flame graph page (its DOM after the
    script ran), or None without chromium."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    with tempfile.TemporaryDirectory(prefix="flamegraph-chromium-") as profile:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    return len(re.findall(r'<g[^>]*class="frame"', dom))


def faultlab(*args, env=None):
    environment = {**os.environ, "FAULTLAB_PREBUILT": "1", **(env or {})}
    return subprocess.run([str(FAULTLAB), *args], capture_output=True, text=True, timeout=900,
                          env=environment)


def perf_can_record():
    try:
        return subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-o",
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
                # And the page draws them, offline.
                frames = rendered_frames(out / "flamegraphs" / entry["html"])
                if frames is not None:
                    self.assertGreater(frames, 0)
                self.assertIn(f'href="flamegraphs/{entry["html"]}"', page)
                self.assertIn(f'href="flamegraphs/{entry["folded"]}"', page)
        self.assertIn('id="flamegraphs"', page)
        self.check_half_recorded(out, results, spans, page)

    def check_half_recorded(self, out, results, spans, page):
        """Twice the repetitions (3 in --quick), 1, 2 and 5 of them recorded; no sample outside
        the benchmarks (faultlab's start, before the first, has perf's events off); the cost of
        the recording per benchmark in recording_cost.csv and index.html."""
        self.assertIn("profile_control", results["context"]["faultlab"])
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
