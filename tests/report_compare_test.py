"""Tests of `faultlab compare A B` (reports/faultlab_report/compare.py, through scripts/faultlab
for the command line; and `faultlab report B --baseline A` and `faultlab run --baseline A`'s bad
input there) on tests/data/compare_{a,b}.json, the iteration rows of two real runs of a
few fault rows one after the other (see their context.faultlab_fixture), and on edits of them
made here: a benchmark made twice as slow, rows taken out, renamed or skipped, settings changed.
Expected ratios and p-values are computed here from the fixtures' rows.

Run: /usr/bin/python3 -m unittest -v report_compare_test (from tests/; CTest does this).
"""

import copy
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from report_support import (ROOT, TESTS, check_refused, flat, iteration_rows,  # noqa: E402
                            load_json, renamed)

FAULTLAB = ROOT / "scripts" / "faultlab"
FIXTURE_A = TESTS / "data" / "compare_a.json"
FIXTURE_B = TESTS / "data" / "compare_b.json"

sys.path.insert(0, str(ROOT / "reports"))
from faultlab_report import compare  # noqa: E402
from faultlab_report.results import BadInput  # noqa: E402
from scipy.stats import mannwhitneyu  # noqa: E402


def ran(document):
    """The run_names of the benchmarks that ran (no repetition skipped), in fixture order."""
    names = {}
    for row in document["benchmarks"]:
        names.setdefault(row["run_name"], True)
        if row.get("error_occurred"):
            names[row["run_name"]] = False
    return [name for name, ok in names.items() if ok]


def skipped(document):
    return {row["run_name"]: row["error_message"] for row in document["benchmarks"]
            if row.get("error_occurred")}


def scale(document, run_name, factor):
    """The benchmark's time column and p50_ns multiplied by factor in every repetition."""
    for row in iteration_rows(document, run_name):
        row["real_time"] *= factor
        if "p50_ns" in row:
            row["p50_ns"] *= factor


def with_rows_of(target, source, run_name):
    """target with the benchmark's rows replaced by a copy of source's."""
    target["benchmarks"] = [row for row in target["benchmarks"] if row["run_name"] != run_name]
    target["benchmarks"] += copy.deepcopy(iteration_rows(source, run_name))
    return target


def time_ns(row):
    return row["real_time"] * {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[row["time_unit"]]


class ReportCompareTest(unittest.TestCase):
    def setUp(self):
        self.directory = Path(tempfile.mkdtemp(prefix="faultlab-compare-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.a = load_json(FIXTURE_A)
        self.b = load_json(FIXTURE_B)

    def write(self, side, document):
        """Writes document as the run directory side ('a' or 'b'); returns the directory."""
        directory = self.directory / side
        directory.mkdir(exist_ok=True)
        with open(directory / "results.json", "w", encoding="utf-8") as file:
            json.dump(document, file)
        return directory

    def compared(self, a=None, b=None):
        return compare.load_and_compare(self.write("a", a if a is not None else self.a),
                                        self.write("b", b if b is not None else self.b))

    def run_cli(self, *args):
        return subprocess.run([str(FAULTLAB), "compare", *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    def row(self, comparison, run_name, figure=compare.TIME):
        found = [row for row in comparison.rows if (row.name, row.figure) == (run_name, figure)]
        self.assertEqual(len(found), 1, (run_name, figure))
        return found[0]

    def test_fixtures_are_two_real_runs_with_enough_to_compare(self):
        # The tests below need three benchmarks that ran in both, with p50_ns, and one skipped
        # row, each with more than 3 repetitions (the U test can then reach 0.05).
        self.assertGreaterEqual(len(set(ran(self.a)) & set(ran(self.b))), 3)
        self.assertTrue(skipped(self.a) and skipped(self.b))
        for name in ran(self.a):
            rows = iteration_rows(self.a, name)
            self.assertGreaterEqual(len(rows), 4, name)
            self.assertTrue(all("p50_ns" in row for row in rows), name)
        self.assertNotEqual(self.a["context"]["date"], self.b["context"]["date"])

    def test_real_runs_ratio_of_medians_and_u_test(self):
        comparison = self.compared()
        common = [name for name in ran(self.a) if name in ran(self.b)]
        self.assertEqual({(row.name, row.figure) for row in comparison.rows},
                         {(name, figure) for name in common for figure in ("time_ns", "p50_ns")})
        for name in common:
            for figure, value in (("time_ns", time_ns), ("p50_ns", lambda row: row["p50_ns"])):
                a_values = [value(row) for row in iteration_rows(self.a, name)]
                b_values = [value(row) for row in iteration_rows(self.b, name)]
                row = self.row(comparison, name, figure)
                self.assertAlmostEqual(row.ratio,
                                       statistics.median(b_values) / statistics.median(a_values))
                self.assertAlmostEqual(row.p_value, mannwhitneyu(
                    a_values, b_values, alternative="two-sided").pvalue)
                self.assertEqual(row.verdict == compare.NOT_SIGNIFICANT, row.p_value >= 0.05)
        # The skipped benchmark is listed with its reason, not compared.
        self.assertEqual({item.name for item in comparison.skipped}, set(skipped(self.a)))
        for item in comparison.skipped:
            self.assertEqual(item.a_skipped, skipped(self.a)[item.name].removeprefix("skipped: "))

    def test_identical_runs_give_ratio_one_and_no_change(self):
        comparison = self.compared(self.a, self.a)
        self.assertTrue(comparison.rows)
        for row in comparison.rows:
            self.assertEqual(row.ratio, 1.0)
            self.assertEqual(row.p_value, 1.0)
            self.assertEqual(row.verdict, compare.NOT_SIGNIFICANT)
        self.assertEqual(comparison.environment, [])
        text = compare.text_report(comparison)
        self.assertNotIn("WARNING: the two runs' environments differ", text)
        self.assertRegex(text, rf"{len(comparison.rows)} figures compared: "
                               rf"{len(comparison.rows)} not significant")

    def test_a_benchmark_twice_as_slow_is_significant_and_listed_first(self):
        slow, fast = ran(self.a)[:2]
        b = copy.deepcopy(self.a)
        scale(b, slow, 2.0)
        scale(b, fast, 0.5)
        comparison = self.compared(self.a, b)
        for figure in ("time_ns", "p50_ns"):
            row = self.row(comparison, slow, figure)
            self.assertAlmostEqual(row.ratio, 2.0)
            self.assertEqual(row.verdict, compare.SLOWER)
            self.assertLess(row.p_value, 0.05)
            self.assertTrue(row.weak)  # fewer than 9 repetitions a side
            row = self.row(comparison, fast, figure)
            self.assertAlmostEqual(row.ratio, 0.5)
            self.assertEqual(row.verdict, compare.FASTER)
        # Regressions first, then improvements, then the rest.
        verdicts = [row.verdict for row in comparison.rows]
        self.assertEqual(verdicts[:4], [compare.SLOWER] * 2 + [compare.FASTER] * 2)
        self.assertTrue(all(verdict == compare.NOT_SIGNIFICANT for verdict in verdicts[4:]))
        text = compare.text_report(comparison)
        short = self.row(comparison, slow).short_name
        self.assertRegex(text, rf"\n{re.escape(short)} +time .* 2\.00x +0\.0079 +slower \*\n")
        self.assertIn("* WARNING: fewer than 9 repetitions on a side: the U test is weak",
                      flat(text))

    def test_nine_repetitions_a_side_are_not_a_weak_test(self):
        name = ran(self.a)[0]
        rows = iteration_rows(self.a, name)
        a = copy.deepcopy(self.a)
        a["benchmarks"] = [row for row in a["benchmarks"] if row["run_name"] != name]
        for index in range(9):
            row = copy.deepcopy(rows[index % len(rows)])
            row["repetition_index"] = index
            row["real_time"] *= 1 + index / 1000  # distinct values, as real repetitions are
            a["benchmarks"].append(row)
        b = copy.deepcopy(a)
        scale(b, name, 2.0)
        comparison = self.compared(a, b)
        row = self.row(comparison, name)
        self.assertEqual((len(row.a_values), len(row.b_values)), (9, 9))
        self.assertEqual(row.verdict, compare.SLOWER)
        self.assertFalse(row.weak)
        self.assertRegex(compare.text_report(comparison),
                         rf"\n{re.escape(row.short_name)} +time .* slower\n")

    def test_three_repetitions_are_too_few_to_judge(self):
        # A --quick run repeats 3 times: 3 against 3, no U test can reach p < 0.05.
        a = copy.deepcopy(self.a)
        a["benchmarks"] = [row for row in a["benchmarks"] if row.get("repetition_index", 0) < 3]
        b = copy.deepcopy(a)
        name = ran(a)[0]
        scale(b, name, 2.0)
        comparison = self.compared(a, b)
        row = self.row(comparison, name)
        self.assertAlmostEqual(row.ratio, 2.0)
        self.assertAlmostEqual(row.p_value, 0.1)
        self.assertAlmostEqual(row.smallest_p, 0.1)
        self.assertEqual(row.verdict, compare.TOO_FEW)
        self.assertTrue(all(row.verdict == compare.TOO_FEW for row in comparison.rows))
        text = flat(compare.text_report(comparison))
        self.assertIn(f"WARNING: {len(comparison.rows)} figures have too few repetitions for the "
                      "U test to call any change significant (3 vs 3 repetitions: the smallest "
                      "p-value it can give is 0.10, not below 0.05)", text)

    def test_rows_in_one_run_only_and_skipped_rows_are_listed_apart(self):
        # One benchmark renamed in B (so only in A under its old name, only in B under the new),
        # one skipped in B; the fixtures' own skipped row is skipped in both.
        moved, skip, kept = ran(self.a)[:3]
        b = copy.deepcopy(self.a)
        b["benchmarks"] = [renamed(row, "/repeats:", "/renamed:1/repeats:")
                           if row["run_name"] == moved else row for row in b["benchmarks"]]
        for row in iteration_rows(b, skip):
            row.update(error_occurred=True, error_message="skipped: no such thing here")
        comparison = self.compared(self.a, b)
        self.assertEqual([item.name for item in comparison.only_in_a], [moved])
        self.assertEqual([item.name for item in comparison.only_in_b],
                         [moved.replace("/repeats:", "/renamed:1/repeats:", 1)])
        reasons = {item.name: item.reason for item in comparison.skipped}
        fixture_skip = next(iter(skipped(self.a)))
        self.assertEqual(set(reasons), {skip, fixture_skip})
        self.assertEqual(reasons[skip], "B skipped: no such thing here")
        self.assertEqual(reasons[fixture_skip], "skipped in both: " +
                         skipped(self.a)[fixture_skip].removeprefix("skipped: "))
        self.assertEqual({row.name for row in comparison.rows}, {kept})
        text = flat(compare.text_report(comparison))
        self.assertIn(f"Only in A (1, not compared): {comparison.only_in_a[0].short_name} ", text)
        self.assertIn(f"Only in B (1, not compared): {comparison.only_in_b[0].short_name} ", text)
        short = {item.name: item.short_name for item in comparison.skipped}
        self.assertIn(f"{short[skip]}: B skipped: no such thing here", text)
        self.assertIn(f"{short[fixture_skip]}: skipped in both: ", text)

    def test_environment_differences_that_change_figures_are_warned(self):
        b = copy.deepcopy(self.a)
        environment = b["context"]["faultlab"]["environment"]
        environment["thp"]["enabled"] = "always"
        environment["kernel"]["release"] = "6.1.0-test"
        environment["numa_balancing"] = 1
        b["context"]["faultlab"]["options"]["cpus"] = [1]
        # What does not change figures is not warned of.
        environment["hostname"] = "another-host"
        comparison = self.compared(self.a, b)
        self.assertEqual({difference.what for difference in comparison.environment},
                         {"thp/enabled", "kernel/release", "numa_balancing", "options/cpus"})
        text = compare.text_report(comparison)
        self.assertIn("WARNING: the two runs' environments differ in settings that change "
                      "figures:", text)
        self.assertIn("  thp/enabled: A 'madvise', B 'always'", text)
        self.assertIn("  options/cpus: A [0, 1], B [1]", text)
        # A setting one run did not record (an older faultlab) is unknown there, not different.
        del b["context"]["faultlab"]["environment"]["emulation"]
        self.assertEqual(len(self.compared(self.a, b).environment), 4)

    def test_cli_prints_the_table_and_writes_the_csv(self):
        b = copy.deepcopy(self.a)
        slow = ran(self.a)[0]
        scale(b, slow, 2.0)
        a_dir, b_dir = self.write("a", self.a), self.write("b", b)
        result = self.run_cli(a_dir, b_dir, "--csv", self.directory / "compare.csv")
        self.assertEqual(result.returncode, 0, result.stderr)
        comparison = compare.load_and_compare(a_dir, b_dir)
        self.assertEqual(result.stdout, compare.text_report(comparison))
        self.assertRegex(result.stdout, r"\nbenchmark +figure +A +B +B/A +p +verdict\n")
        with open(self.directory / "compare.csv", newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        compared = [row for row in rows if not row["not_compared"]]
        self.assertEqual([(row["benchmark"], row["figure"]) for row in compared],
                         [(row.name, row.figure) for row in comparison.rows])
        self.assertEqual(compared[0]["benchmark"], slow)
        self.assertAlmostEqual(float(compared[0]["ratio"]), 2.0)
        self.assertEqual(compared[0]["verdict"], "slower")
        self.assertEqual(compared[0]["weak_test"], "1")
        not_compared = {row["benchmark"]: row["not_compared"] for row in rows
                        if row["not_compared"]}
        self.assertEqual(set(not_compared), set(skipped(self.a)))
        # Without --csv nothing is written.
        os.unlink(self.directory / "compare.csv")
        result = self.run_cli(a_dir, b_dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sorted(os.listdir(self.directory)), ["a", "b"])

    def tree(self):
        """Every path below the scratch directory, to tell that nothing was written."""
        return sorted(str(path) for path in self.directory.rglob("*"))

    def assert_bad_input(self, *args):
        before = self.tree()
        line = check_refused(self, self.run_cli(*args))
        self.assertEqual(self.tree(), before, args)
        return line

    def test_bad_input_exits_2_with_one_line_and_writes_nothing(self):
        a_dir, b_dir = self.write("a", self.a), self.write("b", self.b)
        out = self.directory / "compare.csv"
        self.assertIn("no such directory",
                      self.assert_bad_input(a_dir, self.directory / "missing", "--csv", out))
        empty = self.directory / "empty"
        empty.mkdir()
        self.assertIn("not a faultlab run", self.assert_bad_input(a_dir, empty, "--csv", out))
        foreign = copy.deepcopy(self.b)
        del foreign["context"]["schema_version"]
        self.write("b", foreign)
        self.assertIn("not written by faultlab run",
                      self.assert_bad_input(a_dir, b_dir, "--csv", out))
        # No benchmark in common (every name changed), or none that ran in both.
        other = copy.deepcopy(self.b)
        other["benchmarks"] = [renamed(row, "fault/", "other/") for row in other["benchmarks"]]
        self.write("b", other)
        self.assertIn("no benchmark ran in both", self.assert_bad_input(a_dir, b_dir, "--csv", out))
        for row in self.b["benchmarks"]:
            row.update(error_occurred=True, error_message="skipped: test")
        self.write("b", self.b)
        self.assertIn("no benchmark ran in both", self.assert_bad_input(a_dir, b_dir, "--csv", out))
        self.write("b", load_json(FIXTURE_B))
        self.assertIn("no such directory",
                      self.assert_bad_input(a_dir, b_dir, "--csv", self.directory / "x" / "c.csv"))
        self.assertIn("a directory", self.assert_bad_input(a_dir, b_dir, "--csv", self.directory))
        self.assertIn("--csv takes a file name", self.assert_bad_input(a_dir, b_dir, "--csv"))
        self.assertIn("two run directories", self.assert_bad_input(a_dir))
        self.assertIn("unknown option", self.assert_bad_input(a_dir, b_dir, "--bogus"))

    def test_report_baseline_through_the_front_door(self):
        # `faultlab report B --baseline A` (and --baseline=A): the comparison's CSV as compare
        # writes it; a --baseline without a directory is refused before report.py.
        a_dir, b_dir = self.write("a", self.a), self.write("b", self.b)
        self.assertEqual(self.run_cli(a_dir, b_dir, "--csv", self.directory / "c.csv").returncode,
                         0)
        for baseline in (["--baseline", str(a_dir)], [f"--baseline={a_dir}"]):
            result = subprocess.run([str(FAULTLAB), "report", str(b_dir), *baseline],
                                    capture_output=True, text=True, timeout=120)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual((b_dir / "comparison.csv").read_bytes(),
                             (self.directory / "c.csv").read_bytes())
            self.assertIn('<section id="comparison">',
                          (b_dir / "index.html").read_text(encoding="utf-8"))
        for name in ("comparison.csv", "index.html"):
            os.unlink(b_dir / name)
        self.assertIn("--baseline takes a run directory",
                      self.assert_front_door_refuses("report", b_dir, "--baseline"))
        self.assertIn("unknown option '--bogus'",
                      self.assert_front_door_refuses("report", b_dir, "--bogus"))

    def assert_front_door_refuses(self, *args):
        """scripts/faultlab ARGS refused: exit 2, one line, nothing written, before any build.
        FAULTLAB_BUILD_DIR names a file: a script that went on to build would fail there at
        once (exit 1, mkdir), not build the project."""
        not_a_build_dir = self.directory / "not-a-build-dir"
        not_a_build_dir.write_text("")
        before = self.tree()
        result = subprocess.run([str(FAULTLAB), *map(str, args)], capture_output=True, text=True,
                                timeout=120,
                                env={**os.environ, "FAULTLAB_BUILD_DIR": str(not_a_build_dir)})
        line = check_refused(self, result)
        self.assertEqual(self.tree(), before, args)
        return line

    def test_run_baseline_bad_input_is_refused_before_building(self):
        # Checked before anything is installed, built or run.
        empty = self.directory / "empty"
        empty.mkdir()
        self.assertIn("--baseline /nonexistent: not a run directory (no results.json there)",
                      self.assert_front_door_refuses("run", "--quick", "--baseline",
                                                     "/nonexistent"))
        self.assertIn("not a run directory",
                      self.assert_front_door_refuses("run", f"--baseline={empty}"))
        self.assertIn("--baseline takes a run directory",
                      self.assert_front_door_refuses("run", "--quick", "--baseline"))
        self.assertIn("--baseline takes a run directory",
                      self.assert_front_door_refuses("run", "--baseline="))

    def test_in_process_bad_input_is_raised(self):
        with self.assertRaises(BadInput):
            compare.load_and_compare(self.directory / "missing", self.directory / "missing")


if __name__ == "__main__":
    unittest.main()
