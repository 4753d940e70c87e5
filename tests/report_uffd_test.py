"""Tests of `faultlab report uffd` (reports/report.py uffd DIR) on tests/data/uffd_results.json,
the iteration rows of a real quick run of suites uffd and guard (see its
context.faultlab_fixture). Expected values are computed here from the fixture's rows, not taken
from the report's code.

Run: /usr/bin/python3 -m unittest -v report_uffd_test (from tests/; CTest does this).
"""

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from report_support import PYTHON, REPORT, ROOT, TESTS, flat, legend_texts, load_json  # noqa: E402

FIXTURE = TESTS / "data" / "uffd_results.json"
OUTPUTS = ("uffd.csv", "uffd_round_trip.svg", "uffd_summary.txt")

sys.path.insert(0, str(ROOT / "reports"))
from faultlab_report import uffd  # noqa: E402


def load_fixture():
    return load_json(FIXTURE)


def rows_of(document, prefix):
    """Iteration rows whose run_name starts with prefix, grouped by run_name."""
    groups = {}
    for row in document["benchmarks"]:
        if row["run_type"] == "iteration" and row["run_name"].startswith(prefix):
            groups.setdefault(row["run_name"], []).append(row)
    return groups


def one(document, prefix):
    groups = rows_of(document, prefix)
    assert len(groups) == 1, (prefix, list(groups))
    return next(iter(groups.values()))


def three_digits_us(ns):
    """ns as µs with three significant digits, as a reader would round it: 8861.2 -> '8.86 µs'."""
    us = ns / 1e3
    decimals = max(0, 2 - math.floor(math.log10(abs(us))))
    return f"{us:.{decimals}f} µs"


class ReportUffdTest(unittest.TestCase):
    def setUp(self):
        self.directory = Path(tempfile.mkdtemp(prefix="faultlab-report-uffd-"))
        self.addCleanup(shutil.rmtree, self.directory)

    def report(self, document=None):
        with open(self.directory / "results.json", "w", encoding="utf-8") as file:
            json.dump(document if document is not None else load_fixture(), file)
        summary, _ = uffd.write_report(self.directory)
        return summary

    def run_cli(self, *args):
        return subprocess.run([PYTHON, "-B", str(REPORT), *args], capture_output=True,
                              text=True, timeout=120)

    def test_csv_has_every_uffd_and_guard_row_and_the_model_beside(self):
        document = load_fixture()
        self.report(document)
        with open(self.directory / "uffd.csv", newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        names = {row["benchmark"] for row in rows}
        kernel = {name for name in rows_of(document, "uffd/") | rows_of(document, "guard/")}
        self.assertTrue(kernel <= names, kernel - names)
        for model in ("model/uffd/missing_copy/anon4k/", "model/uffd/minor_continue/shmem/",
                      "model/guard/install/anon4k/", "model/zap/shmem_wp/"):
            self.assertTrue(any(name.startswith(model) for name in names), model)
        with open(self.directory / "uffd.csv", encoding="utf-8") as file:
            header = file.readline().strip().split(",")
        self.assertEqual(header[:7], ["half", "suite", "case", "variant", "detail", "handler",
                                      "pages"])
        # The model's memory type is its own column, not lost.
        details = {row["detail"] for row in rows
                   if row["benchmark"].startswith("model/uffd/missing_copy/")}
        self.assertEqual(details, {"anon4k", "shmem"})

    def test_round_trips_are_the_repetitions_mean_median(self):
        document = load_fixture()
        summary = flat(self.report(document))
        for prefix in ("uffd/missing_copy/anon4k/handler:same_cpu/",
                       "uffd/wp/shmem/handler:sigbus/",
                       "uffd/minor_continue/hugetlb2m/handler:other_cpu/"):
            medians = [row["p50_ns"] for row in one(document, prefix)]
            self.assertIn(three_digits_us(statistics.fmean(medians)), summary, prefix)

    def test_handler_verdict_counts_the_rows_within_the_target(self):
        document = load_fixture()
        summary = flat(self.report(document))
        ratios = {name: statistics.fmean(row["handler_vs_floor"] for row in rows)
                  for name, rows in rows_of(document, "uffd/").items()
                  if "handler_vs_floor" in rows[0]}
        measured = [ratio for ratio in ratios.values() if ratio > 0]
        met = [ratio for ratio in measured if ratio <= 1.10]
        self.assertIn(f"{len(met)} of {len(measured)} rows meet it", summary)
        # Raising one same_cpu row far over the target takes one row out of the count.
        rows = one(document, "uffd/wp/anon4k/handler:same_cpu/")
        was_met = statistics.fmean(row["handler_vs_floor"] for row in rows) <= 1.10
        for row in rows:
            row["handler_vs_floor"] = 5.0
        summary = flat(self.report(document))
        self.assertIn(f"{len(met) - was_met} of {len(measured)} rows meet it", summary)
        self.assertRegex(summary, r"wp anon4k same_cpu: 5(\.0+)? missed")

    def test_continue_against_copy_per_memory(self):
        document = load_fixture()
        summary = flat(self.report(document))
        for memory in ("shmem", "hugetlb2m"):
            rows = one(document, f"uffd/minor_continue/{memory}/handler:same_cpu/")
            ratio = statistics.fmean(row["continue_vs_copy"] for row in rows)
            saved = round((1 - ratio) * 100)
            self.assertRegex(summary, rf"{memory}: same_cpu [\d.]+x ±[\d.]+% \({saved}(\.\d)?% "
                                      r"saved\)")

    def test_zeropage_round_trip_is_set_against_a_read_fault(self):
        document = load_fixture()
        summary = flat(self.report(document))
        rows = one(document, "uffd/missing_zeropage/anon4k/handler:same_cpu/")
        trap = statistics.fmean(row["trap_ns"] for row in rows)
        self.assertIn(f"anon4k: a read fault mapping the zero page takes {trap:.0f} ns", summary)

    def test_guard_lines_give_the_vmas_each_way_leaves(self):
        document = load_fixture()
        summary = flat(self.report(document))
        for pages in (1, 64, 512):
            guard = one(document, f"guard/install/anon4k/pages:{pages}/")
            mprotect = one(document, f"guard/install_mprotect/anon4k/pages:{pages}/")
            self.assertIn(f"install pages:{pages}/stride:16: guard", summary)
            self.assertIn(f"VMAs left {guard[0]['vmas_after']:.0f} against "
                          f"{mprotect[0]['vmas_after']:.0f}", summary)

    def test_chart_has_a_legend_entry_per_mode_and_the_model(self):
        self.report()
        labels = legend_texts(self.directory / "uffd_round_trip.svg")
        self.assertEqual(labels, ["kernel, handler same_cpu", "kernel, handler other_cpu",
                                  "kernel, handler sigbus",
                                  "model (no trap; handler in the faulting thread)"])

    def test_same_input_gives_byte_identical_svg(self):
        self.report()
        first = (self.directory / "uffd_round_trip.svg").read_bytes()
        self.report()
        self.assertEqual(first, (self.directory / "uffd_round_trip.svg").read_bytes())

    def test_skipped_reasons_appear_in_the_summary(self):
        document = load_fixture()
        summary = flat(self.report(document))
        skipped = [row for row in document["benchmarks"] if row.get("error_occurred")]
        self.assertTrue(skipped)
        for row in skipped:
            self.assertIn(flat(row["error_message"].removeprefix("skipped: ")), summary)

    def test_results_without_uffd_or_guard_rows_are_refused(self):
        document = load_fixture()
        document["benchmarks"] = [row for row in document["benchmarks"]
                                  if row["run_name"].startswith("model/")]
        with open(self.directory / "results.json", "w", encoding="utf-8") as file:
            json.dump(document, file)
        result = self.run_cli("uffd", str(self.directory))
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1)
        self.assertIn("no uffd or guard rows", result.stderr)
        for name in OUTPUTS:
            self.assertFalse((self.directory / name).exists(), name)

    def test_cli_writes_every_output(self):
        with open(self.directory / "results.json", "w", encoding="utf-8") as file:
            json.dump(load_fixture(), file)
        result = self.run_cli("uffd", str(self.directory))
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in OUTPUTS:
            self.assertTrue((self.directory / name).stat().st_size > 0, name)
        self.assertEqual(result.stdout, (self.directory / "uffd_summary.txt").read_text())


if __name__ == "__main__":
    unittest.main()
