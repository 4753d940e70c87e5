"""Tests of `faultlab report fork` (reports/report.py fork DIR) on tests/data/fork_results.json,
rows trimmed from two real runs (see its context.faultlab_fixture). Expected values are computed
here from the fixture's iteration rows, not taken from the report's code.

Run: /usr/bin/python3 -m unittest -v report_fork_test (from tests/; CTest does this).
"""

import csv
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from report_support import (ROOT, TESTS, all_texts, check_refused, flat,
                            iteration_rows, listing, run_report,
                            legend_texts, load_json, renamed, run_name_of)

FIXTURE = TESTS / "data" / "fork_results.json"
OUTPUTS = ("fork.csv", "fork_latency.svg", "fork_write_cost.svg", "fork_summary.txt")

sys.path.insert(0, str(ROOT / "reports"))
from faultlab_report import fork  # noqa: E402


def load_fixture():
    return load_json(FIXTURE)


class ReportForkTest(unittest.TestCase):
    def setUp(self):
        self.directory = Path(tempfile.mkdtemp(prefix="faultlab-report-fork-"))
        self.addCleanup(shutil.rmtree, self.directory)

    def write_results(self, document, directory=None):
        directory = directory or self.directory
        with open(directory / "results.json", "w", encoding="utf-8") as file:
            json.dump(document, file)

    def report(self, document=None, directory=None):
        """Writes the results (the fixture by default) and runs the report in-process."""
        directory = directory or self.directory
        self.write_results(document if document is not None else load_fixture(), directory)
        summary, _ = fork.write_report(directory)
        return summary

    def run_cli(self, *args):
        return run_report(*args)

    def read_csv(self):
        with open(self.directory / "fork.csv", newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))

    # fork.csv ----------------------------------------------------------------------------------

    def test_csv_has_one_row_per_benchmark(self):
        document = load_fixture()
        self.report(document)
        rows = self.read_csv()
        expected = {row["run_name"] for row in document["benchmarks"]
                    if row["run_type"] == "iteration"}
        self.assertEqual(sorted(row["benchmark"] for row in rows), sorted(expected))
        with open(self.directory / "fork.csv", encoding="utf-8") as file:
            header = file.readline().strip().split(",")
        self.assertEqual(header[:5], ["half", "suite", "case", "variant", "rss_mib"])
        for column in ("extra_threads", "repetitions", "time_ns_mean", "time_ns_cv", "skipped",
                       "fork_ns", "child_vmpte_kb", "break_fault_ns", "child_pt_owned_bytes"):
            self.assertIn(column, header)
        halves = {(row["suite"], row["half"]) for row in rows}
        self.assertEqual(halves, {("fork", "kernel"), ("model", "model")})

    def test_csv_values_are_aggregated_by_hand(self):
        document = load_fixture()
        self.report(document)
        name = run_name_of(document, "fork/latency/anon4k/rss_mib:256/")
        repetitions = iteration_rows(document, name)
        times = [row["real_time"] for row in repetitions]
        forks = [row["fork_ns"] for row in repetitions]
        mean = sum(times) / len(times)
        stddev = math.sqrt(sum((t - mean) ** 2 for t in times) / (len(times) - 1))
        row = next(row for row in self.read_csv() if row["benchmark"] == name)
        self.assertEqual(row["half"], "kernel")
        self.assertEqual((row["case"], row["variant"], row["rss_mib"]),
                         ("latency", "anon4k", "256"))
        self.assertEqual(int(row["repetitions"]), 3)
        self.assertAlmostEqual(float(row["time_ns_mean"]), mean, delta=mean * 1e-12)
        self.assertAlmostEqual(float(row["time_ns_cv"]), stddev / mean, places=12)
        self.assertAlmostEqual(float(row["fork_ns"]), sum(forks) / len(forks), delta=1e-6)
        # Google Benchmark's own aggregates, kept in the fixture for this benchmark, agree.
        aggregates = {row["aggregate_name"]: row["real_time"] for row in document["benchmarks"]
                      if row["run_name"] == name and row["run_type"] == "aggregate"}
        self.assertAlmostEqual(float(row["time_ns_mean"]), aggregates["mean"], delta=1e-3)
        self.assertAlmostEqual(float(row["time_ns_cv"]), aggregates["cv"], places=9)

    def test_csv_keeps_skipped_rows_with_their_reason(self):
        document = load_fixture()
        self.report(document)
        skipped = {row["run_name"]: row["error_message"] for row in document["benchmarks"]
                   if row.get("error_occurred")}
        self.assertTrue(skipped)
        rows = {row["benchmark"]: row for row in self.read_csv()}
        for name, message in skipped.items():
            self.assertEqual(rows[name]["skipped"], message.removeprefix("skipped: "))
            self.assertEqual(rows[name]["time_ns_mean"], "")

    # The charts --------------------------------------------------------------------------------

    def test_latency_chart_has_one_legend_entry_per_series_that_ran(self):
        self.report()
        labels = legend_texts(self.directory / "fork_latency.svg")
        self.assertEqual(sorted(labels), sorted([
            "kernel anon4k", "kernel thp", "kernel shmem", "kernel file_ro",
            "model classic", "model COW-PTE eager", "model COW-PTE lazy"]))
        # hugetlb2m skipped at every size: left out, and the chart says so.
        self.assertIn("Left out, skipped at every size: kernel hugetlb2m",
                      all_texts(self.directory / "fork_latency.svg"))

    def test_write_cost_chart_has_one_legend_entry_per_series(self):
        self.report()
        labels = legend_texts(self.directory / "fork_write_cost.svg")
        series = [label.split(":")[0] for label in labels]
        self.assertEqual(sorted(series), sorted([
            "kernel anon4k", "kernel thp", "model classic", "model COW-PTE eager",
            "model COW-PTE lazy"]))
        self.assertIn("break-even fraction", all_texts(self.directory / "fork_write_cost.svg"))

    def test_same_input_gives_byte_identical_svg(self):
        self.report()
        first = {name: (self.directory / name).read_bytes()
                 for name in ("fork_latency.svg", "fork_write_cost.svg")}
        again = self.directory / "again"
        again.mkdir()
        self.report(directory=again)
        for name, data in first.items():
            self.assertEqual((again / name).read_bytes(), data, name)

    def test_cow_pte_kernel_rows_are_plotted(self):
        document = load_fixture()
        extra = []
        for row in document["benchmarks"]:
            if row["run_name"].startswith("fork/latency/anon4k/"):
                extra.append(renamed(row, "fork/latency/", "fork/latency_cow_pte/"))
            if row["run_name"].startswith("fork/parent_write/anon4k/"):
                # Dearer writes than plain anon4k: the COW-PTE line crosses it at some k.
                cow_pte = renamed(row, "fork/parent_write/", "fork/parent_write_cow_pte/")
                cow_pte["real_time"] *= 1.2
                extra.append(cow_pte)
        for row in extra:
            if row["run_name"].startswith("fork/latency_cow_pte/"):
                for key in ("real_time", "fork_ns"):
                    row[key] *= 0.5
        document["benchmarks"] += extra
        summary = self.report(document)
        label = "kernel anon4k, COW-PTE (prctl)"
        self.assertIn(label, legend_texts(self.directory / "fork_latency.svg"))
        write_labels = legend_texts(self.directory / "fork_write_cost.svg")
        self.assertTrue(any(text.startswith(label + ":") for text in write_labels), write_labels)
        self.assertIn(f"from there {label} costs as much as kernel anon4k",
                      all_texts(self.directory / "fork_write_cost.svg"))
        self.assertIn("Kernel COW-PTE (prctl): ", flat(summary))

    # fork_summary.txt --------------------------------------------------------------------------

    def test_summary_numbers_come_from_the_fixture(self):
        document = load_fixture()
        summary = self.report(document)
        self.assertEqual((self.directory / "fork_summary.txt").read_text(encoding="utf-8"),
                         summary)
        # The lazy speedup at 256 MiB: the first figure of the table's 256 MiB row.
        lazy = iteration_rows(document,
                              run_name_of(document, "model/fork/cow_pte_lazy/rss_mib:256/"))
        expected = statistics.fmean(row["speedup_vs_classic"] for row in lazy)
        match = re.search(r"^\s+256 MiB\s+([\d.]+)x", summary, re.MULTILINE)
        self.assertIsNotNone(match, summary)
        self.assertAlmostEqual(float(match.group(1)), expected, delta=expected * 0.005)
        # Kernel anon4k's fork latency at the largest size, in ms.
        anon4k = iteration_rows(document,
                                run_name_of(document, "fork/latency/anon4k/rss_mib:256/"))
        expected_ms = statistics.fmean(row["real_time"] for row in anon4k) / 1e6
        match = re.search(r"Kernel fork \+ exit \+ wait at 256 MiB: anon4k ([\d.]+) ms",
                          flat(summary))
        self.assertIsNotNone(match, summary)
        self.assertAlmostEqual(float(match.group(1)), expected_ms, delta=expected_ms * 0.005)
        # Interpolation is said, and the series' figures are set beside faultlab's.
        self.assertRegex(flat(summary), r"Model lazy, 512 MiB \(extrapolated from 16 and 256 "
                                        r"MiB\): .* -[\d.]+%\. (Agrees|Differs): ")

    def test_repeatability_verdict_flips_with_one_repetition(self):
        document = load_fixture()
        latency = [row for row in document["benchmarks"] if row["run_type"] == "iteration"
                   and not row.get("error_occurred")
                   and row["run_name"].startswith(("fork/latency", "model/fork/"))]
        by_name = {}
        for row in latency:
            by_name.setdefault(row["run_name"], []).append(row)
        for rows in by_name.values():
            mean = statistics.fmean(row["real_time"] for row in rows)
            for row in rows:
                row["real_time"] = mean
        summary = self.report(document)
        rows = len(by_name)  # every latency row the fixture ran: the sweeps, variants, floors
        self.assertIn(f"fork figures repeat within 10%: yes ({rows} of {rows} rows)", summary)
        name = run_name_of(document, "fork/latency/anon4k/rss_mib:16/")
        by_name[name][1]["real_time"] *= 1.5
        summary = flat(self.report(document))
        self.assertIn(f"fork figures repeat within 10%: no ({rows - 1} of {rows} rows) "
                      "fork/latency/anon4k/rss_mib:16 ", summary)
        # The odd repetition shows among the row's repetitions.
        listed = re.search(r"fork/latency/anon4k/rss_mib:16 [\d.]+%: ([^A-Za-z]*?[µm]?s(?:, [\d.]+ [µm]?s)*)",
                           summary)
        self.assertIsNotNone(listed)
        self.assertEqual(len(listed.group(1).split(", ")), len(by_name[name]))
        # The fixture's run let parent and child use two CPUs: the summary names the way out.
        self.assertIn("`--cpu C` keeps both on one CPU", flat(summary))
        document["context"]["faultlab"]["options"]["cpus"] = [0]
        self.assertNotIn("`--cpu C`", flat(self.report(document)))
        self.assertNotIn("reference loop", flat(self.report(document)))
        self.assertNotIn("run no kernel code", flat(self.report(document)))
        # With the machine's reference loop beside the noisy row, and a model row noisy too.
        for number, row in enumerate(by_name[name]):
            row["reference_ns"] = 1000.0 + 100.0 * number
        model = run_name_of(document, "model/fork/classic/rss_mib:16/")
        by_name[model][0]["real_time"] *= 2
        summary = flat(self.report(document))
        spread = statistics.stdev(row["reference_ns"] for row in by_name[name]) / 1100.0
        self.assertRegex(summary, r"fork/latency/anon4k/rss_mib:16 [^;]*; reference loop "
                         + re.escape(f"±{spread * 100:.2g}%"))
        self.assertIn("The model's forks, which run no kernel code, miss too (1 row)", summary)

    def test_skipped_reasons_appear_in_the_summary(self):
        document = load_fixture()
        # A reason of its own, beside the hugetlb ones that differ only in the pages needed.
        other = next(row for row in document["benchmarks"] if row.get("error_occurred") and
                     row["run_name"].startswith("fork/child_write/"))
        other["error_message"] = "skipped: no userfaultfd here"
        summary = flat(self.report(document))
        self.assertIn("fork/child_write/hugetlb2m/rss_mib:64: no userfaultfd here", summary)
        hugetlb = [row for row in document["benchmarks"]
                   if row.get("error_occurred") and row is not other]
        largest = max(hugetlb, key=lambda row: [int(n) for n in
                                                re.findall(r"\d+", row["error_message"])])
        self.assertIn(flat(largest["error_message"].removeprefix("skipped: ")), summary)
        for row in hugetlb:
            base = row["run_name"].split("/rss_mib:")[0]
            self.assertIn(base + "/rss_mib:", summary)

    def test_only_kernel_rows_still_give_the_latency_chart(self):
        document = load_fixture()
        document["benchmarks"] = [row for row in document["benchmarks"]
                                  if row["run_name"].startswith("fork/")]
        self.write_results(document)
        result = self.run_cli("fork", str(self.directory))
        self.assertEqual(result.returncode, 0, result.stderr)
        summary = (self.directory / "fork_summary.txt").read_text(encoding="utf-8")
        self.assertIn("Model rows (model/fork) are missing from this run", summary)
        self.assertIn("--suite model", summary)
        self.assertEqual(result.stdout, summary)
        labels = legend_texts(self.directory / "fork_latency.svg")
        self.assertTrue(labels)
        self.assertTrue(all(label.startswith("kernel ") for label in labels), labels)

    # Bad input ---------------------------------------------------------------------------------

    def assert_refused(self, directory):
        before = listing(directory)
        check_refused(self, run_report("fork", directory), directory, before)
        for name in OUTPUTS:
            self.assertFalse((directory / name).exists(), name)

    def test_missing_directory_is_refused(self):
        self.assert_refused(self.directory / "no-such-run")

    def test_missing_results_json_is_refused(self):
        self.assert_refused(self.directory)

    def test_unreadable_json_is_refused(self):
        (self.directory / "results.json").write_text('{"context": {', encoding="utf-8")
        self.assert_refused(self.directory)

    def test_results_without_schema_version_are_refused(self):
        document = load_fixture()
        del document["context"]["schema_version"]
        self.write_results(document)
        self.assert_refused(self.directory)

    def test_results_without_fork_rows_are_refused(self):
        document = load_fixture()
        document["benchmarks"] = [row for row in document["benchmarks"]
                                  if not row["run_name"].startswith(("fork/", "model/fork/"))]
        self.write_results(document)
        self.assert_refused(self.directory)

    def test_unknown_report_kind_is_refused(self):
        result = self.run_cli("heatmap", str(self.directory))
        self.assertEqual(result.returncode, 2)
        self.assertIn("kinds: fork", result.stderr)
        result = subprocess.run([str(ROOT / "scripts" / "faultlab"), "report", "heatmap"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 2)
        self.assertIn("fork", result.stderr)


if __name__ == "__main__":
    unittest.main()
