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
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from report_support import (ROOT, TESTS, flat, legend_texts, load_json,  # noqa: E402
                            run_report)

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


def three_digits(value):
    """value with three significant digits, trailing zeros kept: 14.04 -> '14.0', 0.75 -> '0.750'."""
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


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
        return run_report(*args)

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

    @staticmethod
    def ratios(document, counter):
        """The counter's mean over repetitions per uffd row that has it."""
        return {name: statistics.fmean(row[counter] for row in rows)
                for name, rows in rows_of(document, "uffd/").items() if counter in rows[0]}

    def test_handler_verdict_counts_the_rows_within_the_target(self):
        document = load_fixture()
        summary = flat(self.report(document))
        measured = [ratio for ratio in self.ratios(document, "handler_vs_floor").values()
                    if ratio > 0]
        met = [ratio for ratio in measured if ratio <= 1.10]
        floor_heading = r"all medians of the same run\): "
        self.assertRegex(summary, floor_heading + f"{len(met)} of {len(measured)} rows meet it")
        # Raising one same_cpu row far over the target takes one row out of the count.
        rows = one(document, "uffd/wp/anon4k/handler:same_cpu/")
        was_met = statistics.fmean(row["handler_vs_floor"] for row in rows) <= 1.10
        for row in rows:
            row["handler_vs_floor"] = 5.0
        summary = flat(self.report(document))
        self.assertRegex(summary,
                         floor_heading + f"{len(met) - was_met} of {len(measured)} rows meet it")
        self.assertRegex(summary, r"wp anon4k same_cpu: 5(\.0+)? missed")

    def test_handler_against_the_minimal_handler_per_row(self):
        document = load_fixture()
        summary = flat(self.report(document))
        ratios = self.ratios(document, "handler_vs_minimal")
        # Every thread-mode row of the run, and no sigbus row, has the ratio.
        thread_rows = {name for name, rows in rows_of(document, "uffd/").items()
                       if "/handler:sigbus/" not in name and "/handler:" in name
                       and "/floor/" not in name and not rows[0].get("error_occurred")}
        self.assertEqual(set(ratios), thread_rows)
        met = [ratio for ratio in ratios.values() if 0 < ratio <= 1.10]
        self.assertRegex(summary, r"medians of the same run\): "
                                  f"{len(met)} of {len(ratios)} rows meet it")
        for name, ratio in ratios.items():
            case, memory, handler = name.split("/")[1:4]
            mode = handler.removeprefix("handler:")
            verdict = "met" if ratio <= 1.10 else "missed"
            self.assertIn(f"{case} {memory} {mode}: {three_digits(ratio)} {verdict}", summary)
        # One row far over the target is named as missing it, the count drops by one.
        rows = one(document, "uffd/missing_copy/shmem/handler:other_cpu/")
        was_met = statistics.fmean(row["handler_vs_minimal"] for row in rows) <= 1.10
        for row in rows:
            row["handler_vs_minimal"] = 1.5
        summary = flat(self.report(document))
        self.assertRegex(summary, r"medians of the same run\): "
                                  f"{len(met) - was_met} of {len(ratios)} rows meet it")
        self.assertIn("missing_copy shmem other_cpu: 1.50 missed", summary)
        # A run from before the minimal handler has no such section.
        for row in document["benchmarks"]:
            row.pop("handler_vs_minimal", None)
        self.assertNotIn("minimal handler", flat(self.report(document)))

    def test_a_same_cpu_row_missing_its_floor_points_to_the_readme(self):
        document = load_fixture()
        pointer = "Why same_cpu misses its floor"
        same_cpu = [ratio for name, ratio in self.ratios(document, "handler_vs_floor").items()
                    if "/handler:same_cpu/" in name]
        summary = flat(self.report(document))
        if any(ratio > 1.10 for ratio in same_cpu):
            self.assertIn(pointer, summary)
            self.assertIn('README.md, section "The `uffd` suite"', summary)
        # Every same_cpu row within its floor's target: nothing to explain.
        for row in document["benchmarks"]:
            if "/handler:same_cpu/" in row["run_name"] and "handler_vs_floor" in row:
                row["handler_vs_floor"] = 1.0
        self.assertNotIn(pointer, flat(self.report(document)))

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

    def test_a_write_after_zeropage_is_reported_where_the_row_measured_it(self):
        document = load_fixture()
        self.assertNotIn("a write to the page afterwards", flat(self.report(document)))
        for row in one(document, "uffd/missing_zeropage/anon4k/handler:same_cpu/"):
            row["write_after_ns"] = 2750.0
        self.assertIn("a write to the page afterwards 2.75 µs", flat(self.report(document)))

    def test_marker_round_trip_is_set_against_the_none_entry_of_the_same_run(self):
        document = load_fixture()
        summary = flat(self.report(document))
        for memory in ("shmem", "hugetlb2m"):
            rows = one(document, f"uffd/wp_marker/{memory}/handler:same_cpu/")
            none = statistics.fmean(row["none_fault_ns"] for row in rows)
            ratio = statistics.fmean(row["marker_vs_none"] for row in rows)
            none_text = three_digits_us(none) if none >= 1e3 else f"{none:.0f} ns"
            self.assertRegex(summary, rf"{memory}: same_cpu [\d.]+ µs, {three_digits(ratio)}x "
                                      rf"±[\d.]+% the none entry's {none_text}")
        # Rows without the ratio (an older run) leave the section out instead of inventing it.
        document["benchmarks"] = [row for row in document["benchmarks"]
                                  if "/wp_marker/" not in row["run_name"]]
        self.assertNotIn("PTE marker", flat(self.report(document)))

    def test_move_against_copy_says_more_or_saved(self):
        document = load_fixture()
        rows = one(document, "uffd/move/anon4k/handler:same_cpu/")
        for row in rows:
            row["move_vs_copy"] = 1.25
        summary = flat(self.report(document))
        self.assertRegex(summary, r"same_cpu 1\.25x ±0% \(25% more\)")
        for row in rows:
            row["move_vs_copy"] = 0.75
        summary = flat(self.report(document))
        self.assertRegex(summary, r"same_cpu 0\.750x ±0% \(25% saved\)")

    def test_faults_without_a_handler_give_si_code_and_scan_cost(self):
        document = load_fixture()
        summary = flat(self.report(document))
        poison = one(document, "uffd/poison/anon4k/")
        code = poison[0]["label"].split("si_code=")[1].split()[0]
        self.assertTrue(code.startswith("BUS_"), code)
        self.assertIn(f"SIGBUS ({code})", summary)
        for memory in ("anon4k", "shmem"):
            rows = one(document, f"uffd/wp_async/{memory}/")
            scan = statistics.fmean(row["scan_ns_per_page"] for row in rows)
            self.assertRegex(summary, rf"wp_async {memory}: .* protecting them again "
                                      rf"{scan:.0f} ns per page scanned")
        # wp through a handler against the async write: the ratio of the two means of medians.
        handled = statistics.fmean(row["p50_ns"] for row in
                                   one(document, "uffd/wp/anon4k/handler:same_cpu/"))
        plain = statistics.fmean(row["p50_ns"] for row in one(document, "uffd/wp_async/anon4k/"))
        self.assertIn(f"takes {three_digits(handled / plain)}x", summary)

    def test_unpopulated_rows_name_the_feature_that_made_anon_markers(self):
        summary = flat(self.report())
        self.assertRegex(summary, r"anon4k: same_cpu [\d.]+ µs \([\d.]+x ±[\d.]+% wp on a "
                                  r"populated page\); UFFDIO_WRITEPROTECT [\d.]+ ns per 4 KiB page "
                                  r"protected \(markers through UFFD_FEATURE_WP_UNPOPULATED\)")
        self.assertRegex(summary, r"hugetlb2m: same_cpu .* per 2 MiB page protected\.")

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
