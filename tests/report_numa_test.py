"""Tests of `faultlab report numa` (reports/report.py numa DIR) on two real quick runs of the numa
suite (see each fixture's context.faultlab_fixture): tests/data/numa_results.json from a QEMU
guest with three NUMA nodes (software emulation: the figures are not performance figures, but
they are the run's), and tests/data/numa_one_node_results.json from this one-node machine.
Expected values are computed here from the fixtures' iteration rows, not taken from the report's
code.

Run: /usr/bin/python3 -m unittest -v report_numa_test (from tests/; CTest does this).
"""

import copy
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
import xml.etree.ElementTree as ElementTree
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from report_support import (ROOT, SVG, TESTS, all_texts, check_refused,  # noqa: E402
                            flat, listing, load_json, run_report)

GUEST = TESTS / "data" / "numa_results.json"
ONE_NODE = TESTS / "data" / "numa_one_node_results.json"
CHARTS = {"latency": ("numa_latency.svg", "ns_per_load"),
          "bandwidth": ("numa_bandwidth.svg", "gb_per_s"),
          "first_touch": ("numa_first_touch.svg", "ns_per_fault")}
OUTPUTS = ("numa.csv", "numa_summary.txt", *(name for name, _ in CHARTS.values()))
# Each shape: its heading in the summary, its counter, the matrix case that has it, lower better.
SHAPES = (("Latency-bound", "ns_per_load", "latency", True),
          ("Bandwidth-bound", "gb_per_s", "bandwidth", False),
          ("Fault-heavy", "ns_per_fault", "first_touch", True))

sys.path.insert(0, str(ROOT / "reports"))
from faultlab_report import numa  # noqa: E402


def significant(value, digits):
    """value with `digits` significant digits, as a reader would round it."""
    if value == 0:
        return "0"
    value = float(f"{value:.{digits - 1}e}")  # 0.99996 reads "1.00"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def as_ns(ns):
    return f"{significant(ns / 1e3, 3)} µs" if ns >= 1e3 else f"{significant(ns, 3)} ns"


def as_figure(counter, value):
    return f"{significant(value, 3)} GB/s" if counter == "gb_per_s" else as_ns(value)


class Rows:
    """A fixture's iteration rows by benchmark, with their named arguments."""

    def __init__(self, document):
        self.groups = {}
        for row in document["benchmarks"]:
            if row["run_type"] == "iteration" and row["run_name"].startswith("numa/"):
                self.groups.setdefault(row["run_name"], []).append(row)

    @staticmethod
    def parts(run_name):
        plain, args = [], {}
        for piece in run_name.split("/"):
            key, colon, value = piece.partition(":")
            if colon:
                args[key] = int(value)
            else:
                plain.append(piece)
        return plain, args

    def find(self, *plain, **args):
        """The run_names whose plain pieces start with `plain` and whose args include `args`."""
        found = []
        for name in self.groups:
            pieces, named = self.parts(name)
            if pieces[:len(plain)] == list(plain) and all(named.get(k) == v
                                                          for k, v in args.items()):
                found.append(name)
        return found

    def errored(self, name):
        return any(row.get("error_occurred") for row in self.groups[name])

    def mean(self, name, counter):
        """The counter's mean over the repetitions, None if the row errored or lacks it."""
        if self.errored(name):
            return None
        values = [row[counter] for row in self.groups[name] if counter in row]
        return statistics.fmean(values) if values else None

    def matrix_cells(self, case, backing="anon4k"):
        """{(cpu, mem): run_name}."""
        return {(self.parts(name)[1]["cpu_node"], self.parts(name)[1]["mem_node"]): name
                for name in self.find("numa", case, backing)}


def advice_value(rows, cpu, name, counter, case):
    """The figure an advice option of CPU node `cpu` should carry: bind node M the matrix cell
    (cpu, M) (its policy row where the cell has none); the others their policy row's counter, or
    for local, which has no chase of its own, the matrix cell (cpu, cpu). A merged name
    ('local (node 0) = bind node 0') must give one value. None: not measured."""
    values = set()
    for part in name.split(" = "):
        local = re.fullmatch(r"local \(node (\d+)\)", part)
        single = re.fullmatch(r"(bind|preferred) node (\d+)", part)
        spread = re.fullmatch(r"(interleave|weighted_interleave) (?:nodes [\d,]+|over \d+ nodes)",
                              part)
        cell = None
        if local:
            policy_rows = rows.find("numa", "policy", "local", "anon4k", cpu_node=cpu)
            cell = rows.matrix_cells(case).get((cpu, int(local.group(1))))
        elif single:
            policy_rows = rows.find("numa", "policy", single.group(1), "anon4k", cpu_node=cpu,
                                    target=int(single.group(2)))
            cell = rows.matrix_cells(case).get((cpu, int(single.group(2))))
        else:
            assert spread, part
            policy_rows = rows.find("numa", "policy", spread.group(1), "anon4k", cpu_node=cpu)
        row_value = rows.mean(policy_rows[0], counter) if policy_rows else None
        cell_value = rows.mean(cell, counter) if cell else None
        if single and single.group(1) == "bind":
            values.add(cell_value if cell_value is not None else row_value)
        else:
            values.add(row_value if row_value is not None or not local else cell_value)
    assert len(values) == 1, (name, values)
    return values.pop()


def expected_options(rows, cpu, case):
    """The option names the advice must weigh for CPU node `cpu`, from the fixture's names:
    one per policy row of that node and one per matrix cell of its row."""
    names = set()
    for name in rows.find("numa", "policy", cpu_node=cpu):
        (_, _, policy, _, *_), args = Rows.parts(name)
        if policy == "local":
            names.add(f"local (node {cpu})")
        elif policy in ("bind", "preferred"):
            names.add(f"{policy} node {args['target']}")
        else:
            label = rows.groups[name][0].get("label", "")
            nodes = re.search(r"\bnodes=([\d,]+)", label)
            names.add(f"{policy} nodes {nodes.group(1)}" if nodes else
                      f"{policy} over {args['nodes']} nodes")
    names |= {f"bind node {mem}" for (c, mem) in rows.matrix_cells(case) if c == cpu}
    return names


def advice_blocks(summary, heading):
    """{cpu: (best name, best figure text, [(alternative name, figure text, penalty text)],
    [(unmeasured name, reason)])} of one shape's table."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading + " ("))
    blocks, cpu = {}, None
    for line in lines[start + 1:]:
        if not line.strip():
            break
        best = re.fullmatch(r"  CPU node (\d+): use (.+): (\S+ \S+) \((.+)\)\.", line)
        alternative = re.fullmatch(r"    (.+?) +(\S+ \S+)  \+(\S+)%(?: \(within the spread\))?; .+",
                                   line)
        missing = re.fullmatch(r"    (.+?) +not measured: (.+)", line)
        if best:
            cpu = int(best.group(1))
            blocks[cpu] = (best.group(2), best.group(3), [], [])
        elif alternative:
            blocks[cpu][2].append(alternative.groups())
        elif missing:
            blocks[cpu][3].append(missing.groups())
        elif line.startswith("      ") and blocks[cpu][3]:
            name, reason = blocks[cpu][3].pop()  # a long reason, wrapped
            blocks[cpu][3].append((name, f"{reason} {line.strip()}"))
        else:
            raise AssertionError(f"unexpected advice line: {line!r}")
    return blocks


def cell_annotations(svg_path):
    """{id: text} of every <g id="cell-..."> (a measured cell's annotation) in the SVG."""
    root = ElementTree.parse(svg_path).getroot()
    return {group.get("id"): "".join(group.itertext()).strip() for group in root.iter(f"{SVG}g")
            if group.get("id", "").startswith("cell-")}


class ReportNumaTest(unittest.TestCase):
    def setUp(self):
        self.directory = Path(tempfile.mkdtemp(prefix="faultlab-report-numa-"))
        self.addCleanup(shutil.rmtree, self.directory)

    def write_results(self, document):
        with open(self.directory / "results.json", "w", encoding="utf-8") as file:
            json.dump(document, file)

    def report(self, document):
        self.write_results(document)
        summary, _ = numa.write_report(self.directory)
        return summary

    def run_cli(self, *args):
        return run_report(*args)

    # --- The advice ---------------------------------------------------------------------------

    def check_advice(self, document):
        rows = Rows(document)
        summary = self.report(document)
        cpus = sorted({Rows.parts(name)[1]["cpu_node"] for name in rows.find("numa", "policy")})
        self.assertTrue(cpus)
        for heading, counter, case, lower in SHAPES:
            blocks = advice_blocks(summary, heading)
            self.assertEqual(sorted(blocks), cpus, heading)
            for cpu, (best_name, best_text, alternatives, unmeasured) in blocks.items():
                with self.subTest(shape=heading, cpu=cpu):
                    # Every option is weighed once: each policy row and each matrix cell.
                    listed = [best_name] + [name for name, _, _ in alternatives] + \
                             [name for name, _ in unmeasured]
                    parts = [part for name in listed for part in name.split(" = ")]
                    self.assertEqual(sorted(parts), sorted(expected_options(rows, cpu, case)))
                    for name, _ in unmeasured:
                        self.assertIsNone(advice_value(rows, cpu, name, counter, case), name)
                    # The best is the best of every measured option's figure.
                    best = advice_value(rows, cpu, best_name, counter, case)
                    self.assertEqual(best_text, as_figure(counter, best))
                    candidates = [advice_value(rows, cpu, name, counter, case)
                                  for name in expected_options(rows, cpu, case)]
                    candidates = [value for value in candidates if value is not None]
                    self.assertEqual(best, (min if lower else max)(candidates))
                    self.assertTrue(alternatives)
                    for name, figure, penalty in alternatives:
                        value = advice_value(rows, cpu, name, counter, case)
                        self.assertEqual(figure, as_figure(counter, value), name)
                        ratio = value / best if lower else best / value
                        self.assertEqual(penalty, significant((ratio - 1) * 100, 2), name)
        return summary, rows

    def test_advice_picks_the_measured_best_and_the_penalties_match_the_rows(self):
        summary, rows = self.check_advice(load_json(GUEST))
        # Three memory nodes: every CPU node weighs remote binds and interleaving.
        blocks = advice_blocks(summary, "Latency-bound")
        for cpu, (best, _, alternatives, _) in blocks.items():
            names = " ".join([best] + [name for name, _, _ in alternatives])
            for mem in (0, 1, 2):
                self.assertIn(f"bind node {mem}", names)
            self.assertIn("interleave nodes 0,1,2", names)

    def test_one_node_advice_and_what_is_missing(self):
        document = load_json(ONE_NODE)
        summary, rows = self.check_advice(document)
        for heading, _, _, _ in SHAPES:
            self.assertEqual(list(advice_blocks(summary, heading)), [0])
        # One cell per matrix: one CPU node, one memory node.
        for case in ("latency", "bandwidth", "first_touch"):
            self.assertEqual(set(rows.matrix_cells(case)), {(0, 0)})
        text = flat(summary)
        self.assertIn("Missing from this run: only memory node 0 was measured", text)
        self.assertIn("needs a second NUMA node with memory", text)

    def test_a_failed_best_row_is_not_advised_and_says_why(self):
        document = load_json(GUEST)
        rows = Rows(document)
        summary = self.report(document)
        best_name = advice_blocks(summary, "Fault-heavy")[0][0]
        # The policy row behind the best fault-heavy option of CPU node 0 fails its premise.
        policy = best_name.split()[0]
        args = {"cpu_node": 0}
        if policy in ("bind", "preferred"):
            args["target"] = int(best_name.split()[-1])
        (name,) = rows.find("numa", "policy", policy, "anon4k", **args)
        message = "premise: 3 of 16384 pages on node 2, not 0"
        for row in document["benchmarks"]:
            if row["run_name"] == name:
                row["error_occurred"] = True
                row["error_message"] = message
        summary = self.check_advice(document)[0]
        block = advice_blocks(summary, "Fault-heavy")[0]
        self.assertNotEqual(block[0], best_name)
        self.assertIn((best_name, f"failed: {message}"), block[3])
        self.assertIn(f"Failed (a premise or data check did not hold; no figure kept): "
                      f"{name.split('/region_mib')[0]}: {message}", flat(summary))

    # --- Skipped rows, emulation --------------------------------------------------------------

    def test_skipped_rows_are_listed_with_their_reason(self):
        for path in (GUEST, ONE_NODE):
            document = load_json(path)
            rows = Rows(document)
            summary = flat(self.report(document))
            skipped = [name for name in rows.groups if rows.errored(name)]
            self.assertTrue(skipped, path)
            section = summary[summary.index("Skipped (cannot run here), by reason:"):]
            for name in skipped:
                reason = rows.groups[name][0]["error_message"].removeprefix("skipped: ")
                self.assertIn(flat(reason), section)
                short = "/".join(piece for piece in name.split("/")
                                 if piece.partition(":")[0] not in numa.SIZE_ARGS
                                 and piece != "manual_time")
                self.assertIn(short, section)

    def test_emulation_is_flagged(self):
        guest = load_json(GUEST)
        self.assertTrue(guest["context"]["faultlab"]["environment"]["emulation"]["emulated"])
        summary = flat(self.report(guest))
        self.assertIn("SOFTWARE EMULATION (qemu-tcg): every timing below is NOT a performance "
                      "figure", summary)
        for chart, _ in CHARTS.values():
            self.assertIn("SOFTWARE EMULATION (qemu-tcg): NOT performance figures",
                          all_texts(self.directory / chart))
        host = load_json(ONE_NODE)
        self.assertNotIn("EMULATION", self.report(host))
        # Recorded only as the run's warning (an older environment block): still flagged.
        host["context"]["faultlab"]["environment"].pop("emulation", None)
        host["context"]["faultlab"]["warnings"].insert(
            0, "SOFTWARE EMULATION (qemu-tcg, from FAULTLAB_EMULATED): every instruction is "
               "emulated")
        self.assertIn("SOFTWARE EMULATION", self.report(host))

    # --- The heatmaps and the CSV -------------------------------------------------------------

    def test_heatmaps_have_one_annotated_cell_per_measured_pair(self):
        for path in (GUEST, ONE_NODE):
            document = load_json(path)
            rows = Rows(document)
            self.report(document)
            for case, (chart, counter) in CHARTS.items():
                expected = {}
                for backing in ("anon4k", "thp", "hugetlb2m"):
                    for (cpu, mem), name in rows.matrix_cells(case, backing).items():
                        value = rows.mean(name, counter)
                        if value is not None:
                            expected[f"cell-{backing}-cpu{cpu}-mem{mem}"] = as_figure(counter,
                                                                                      value)
                with self.subTest(fixture=path.name, chart=chart):
                    self.assertTrue(expected)
                    self.assertEqual(cell_annotations(self.directory / chart), expected)

    def test_same_input_gives_byte_identical_svg(self):
        document = load_json(GUEST)
        self.report(document)
        first = {chart: (self.directory / chart).read_bytes() for chart, _ in CHARTS.values()}
        self.report(document)
        for chart, data in first.items():
            self.assertEqual(data, (self.directory / chart).read_bytes(), chart)

    def test_csv_has_one_row_per_benchmark_with_its_placement(self):
        document = load_json(GUEST)
        rows = Rows(document)
        self.report(document)
        with open(self.directory / "numa.csv", newline="", encoding="utf-8") as file:
            table = {row["benchmark"]: row for row in csv.DictReader(file)}
        self.assertEqual(set(table), set(rows.groups))
        for name, row in table.items():
            pieces, args = Rows.parts(name)
            with self.subTest(name=name):
                self.assertEqual(row["case"], pieces[1])
                self.assertEqual(row["cpu_node"], str(args.get("cpu_node", "")))
                if pieces[1] == "policy":
                    self.assertEqual((row["policy"], row["backing"]), (pieces[2], pieces[3]))
                    placed = args.get("target", args["cpu_node"] if pieces[2] == "local" else "")
                    self.assertEqual(row["mem_node"], str(placed))
                elif pieces[1] in ("move_pages", "mbind_move", "migrate_pages"):
                    self.assertEqual((row["policy"], row["backing"]), ("", pieces[2]))
                    self.assertEqual((row["from"], row["to"], row["batch"]),
                                     (str(args["from"]), str(args["to"]),
                                      str(args.get("batch", ""))))
                    self.assertEqual(row["pages_per_s"], repr(rows.mean(name, "pages_per_s")))
                else:
                    # The matrix binds; the hinting rows fill the node, then reset the policy
                    # (balancing leaves bound memory alone); the analogue's memory is local.
                    policy = "bind" if pieces[1] in ("first_touch", "latency", "bandwidth") else ""
                    self.assertEqual((row["policy"], row["backing"]), (policy, pieces[2]))
                    self.assertEqual(row["mem_node"], str(args["mem_node"]))
                if rows.errored(name):
                    self.assertEqual(row["status"], "skipped")
                    self.assertEqual(row["reason"], rows.groups[name][0]["error_message"]
                                     .removeprefix("skipped: "))
                    self.assertEqual(row["ns_per_fault"], "")
                else:
                    self.assertEqual(row["status"], "measured")
                    for counter in ("ns_per_fault", "ns_per_load", "gb_per_s"):
                        value = rows.mean(name, counter)
                        self.assertEqual(row[counter], "" if value is None else repr(value))
        interleave = [row for row in table.values()
                      if row["policy"] == "interleave" and row["status"] == "measured"]
        self.assertTrue(interleave)
        self.assertEqual({row["nodes"] for row in interleave}, {"0,1,2"})

    def test_migration_rates_per_call_batch_and_pair(self):
        document = load_json(GUEST)
        rows = Rows(document)
        summary = self.report(document)
        section = flat(summary[summary.index("Migration, pages moved per second"):])
        lines = dict(re.findall(
            r"((?:move_pages|mbind_move|migrate_pages) anon4k(?: batch \d+)?): (.*?)\.(?: |$)",
            section))
        moves = [name for case in ("move_pages", "mbind_move", "migrate_pages")
                 for name in rows.find("numa", case, "anon4k")]
        # Three batches, mbind and migrate_pages, six pairs each.
        self.assertEqual(len(moves), 5 * 6)
        for name in moves:
            (_, case, backing, *_), args = Rows.parts(name)
            what = f"{case} {backing}" + (f" batch {args['batch']}" if "batch" in args else "")
            rate = rows.mean(name, "pages_per_s")
            text = (f"{significant(rate / 1e3, 3)}k" if rate < 1e6 else
                    f"{significant(rate / 1e6, 3)}M")
            self.assertIn(f"{args['from']}->{args['to']} {text}", lines[what], name)

    def test_hinting_faults_and_the_trap_against_the_software_path(self):
        document = load_json(ONE_NODE)
        rows = Rows(document)
        summary = self.report(document)
        text = flat(summary)
        (local,) = [name for name in rows.find("numa", "hinting", "anon4k", cpu_node=0, mem_node=0)]
        faults = rows.mean(local, "hint_faults")
        self.assertGreater(faults, 0)
        self.assertIn(f"CPU node 0, memory placed on node 0 (local): {significant(faults, 3)} "
                      f"hinting faults", text)
        self.assertIn(f"round trip p50 {as_ns(rows.mean(local, 'p50_ns'))}", text)

        def p50(prefix):
            values = [row["p50_ns"] for row in document["benchmarks"]
                      if row["run_type"] == "iteration" and row["run_name"].startswith(prefix)]
            return statistics.fmean(values)

        kernel = rows.mean(local, "p50_ns")
        analogue = p50("numa/protnone_analogue/anon4k/")
        model = p50("model/numa_hint/restore/anon4k/threads:1/")
        section = flat(summary[summary.index("The trap against the software path"):])
        self.assertIn(f"user space: PROT_NONE, SIGSEGV, mprotect back {as_ns(analogue)} "
                      f"{significant(analogue / kernel, 3)}x the kernel's hinting fault", section)
        self.assertIn(f"model: hinting fault, restored (no trap) {as_ns(model)} "
                      f"{significant(model / kernel * 100, 2)}% of the kernel's hinting fault",
                      section)
        # The remote cell cannot run on one node: listed with the reason, not in the section.
        self.assertNotIn("memory placed on node 1", text)
        self.assertIn("numa/hinting/anon4k/cpu_node:0/mem_node:1", text)

    def test_hinting_faults_converge_between_the_guests_nodes(self):
        # In the three-node guest every remote cell moved each page once, in one hinting fault,
        # and converged; the local cells moved nothing.
        document = load_json(GUEST)
        rows = Rows(document)
        text = flat(self.report(document))
        cells = rows.find("numa", "hinting", "anon4k")
        self.assertEqual(len(cells), 6)  # CPU nodes 0 and 1, memory on nodes 0, 1 and 2
        for name in cells:
            _, args = Rows.parts(name)
            cpu, mem = args["cpu_node"], args["mem_node"]
            where = f"CPU node {cpu}, memory placed on node {mem}"
            line = text[text.index(where):]
            line = line[:line.find("CPU node", len(where))]
            migrated = rows.mean(name, "migrated_per_page")
            self.assertIn(f"{significant(migrated, 3)} migrations per page", line, name)
            if cpu == mem:
                self.assertEqual(migrated, 0, name)
                self.assertIn("(local)", line)
                continue
            self.assertEqual(rows.mean(name, "converged"), 1, name)
            self.assertEqual(rows.mean(name, "hint_faults_per_page"), 1, name)
            self.assertEqual(migrated, 1, name)
            seconds = rows.mean(name, "converge_ms") / 1e3
            self.assertIn(f"converged (90% on node {cpu}) in {significant(seconds, 3)} s", line,
                          name)

    def test_no_hinting_section_without_hinting_rows(self):
        document = load_json(GUEST)
        document["benchmarks"] = [row for row in document["benchmarks"]
                                  if "/hinting/" not in row["run_name"]
                                  and "protnone_analogue" not in row["run_name"]
                                  and not row["run_name"].startswith("model/")]
        summary = self.report(document)
        self.assertNotIn("NUMA hinting faults", summary)
        self.assertNotIn("The trap against the software path", summary)

    # --- Bad input ----------------------------------------------------------------------------

    def assert_refused(self, directory, *, kind="numa"):
        before = listing(directory)
        return check_refused(self, run_report(kind, directory), directory, before)

    def test_bad_input_is_refused_and_nothing_is_written(self):
        self.assert_refused(self.directory / "no-such-run")
        self.assert_refused(self.directory)  # no results.json
        (self.directory / "results.json").write_text('{"context": {', encoding="utf-8")
        self.assert_refused(self.directory)
        document = load_json(ONE_NODE)
        no_schema = copy.deepcopy(document)
        del no_schema["context"]["schema_version"]
        self.write_results(no_schema)
        self.assert_refused(self.directory)
        document["benchmarks"] = [row for row in document["benchmarks"]
                                  if not row["run_name"].startswith("numa/")]
        self.write_results(document)
        self.assertIn("no numa rows", self.assert_refused(self.directory))

    def test_cli_writes_every_output(self):
        self.write_results(load_json(GUEST))
        result = self.run_cli("numa", str(self.directory))
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in OUTPUTS:
            self.assertTrue((self.directory / name).stat().st_size > 0, name)
        self.assertEqual(result.stdout, (self.directory / "numa_summary.txt").read_text())
        result = subprocess.run([str(ROOT / "scripts" / "faultlab"), "report", "numa", "a", "b"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 2)


if __name__ == "__main__":
    unittest.main()
