"""Tests of `faultlab report DIR` (reports/report.py DIR): DIR/index.html, the whole run as one
page, written with every report the run has rows for; of `faultlab compare A B --html FILE`; and
of `faultlab report DIR --baseline A`, the same comparison as a section of DIR/index.html with
its rows in DIR/comparison.csv.

The run: tests/data's fixtures in one directory (combined_run): the fault rows of compare_a, the
fork and model rows of fork_results, the uffd, guard and model rows of uffd_results and the numa
rows of numa_one_node_results, all real runs on this kind of machine, under fork_results'
context with every suite named in its options. The page is read here with Python's HTML parser
(what it holds, that it loads nothing from elsewhere); report_html_browser_test.py opens it in
Chromium. Expected values are computed here from the fixtures' rows.

Run: /usr/bin/python3 -B -m unittest -v report_html_test (from tests/; CTest does this).
"""

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from report_support import (PYTHON, REPORT, ROOT, SVG, TESTS, check_refused, flat,  # noqa: E402
                            listing, load_json, renamed)

sys.path.insert(0, str(ROOT / "reports"))
from faultlab_report import fork, numa, uffd  # noqa: E402
from faultlab_report.results import load_run, split_name  # noqa: E402

DATA = TESTS / "data"
# (fixture, the suites whose rows it gives the combined run)
FIXTURES = (("compare_a.json", ("fault",)), ("fork_results.json", ("fork", "model")),
            ("uffd_results.json", ("uffd", "guard", "model")),
            ("numa_one_node_results.json", ("numa",)))
SUITES = ["fault", "fork", "uffd", "guard", "numa", "model"]
REPORT_FILES = {"fork.csv", "fork_latency.svg", "fork_write_cost.svg", "fork_summary.txt",
                "uffd.csv", "uffd_round_trip.svg", "uffd_summary.txt",
                "numa.csv", "numa_latency.svg", "numa_bandwidth.svg", "numa_first_touch.svg",
                "numa_summary.txt"}


def combined_document():
    """One results.json holding every suite: fork_results' context, every fixture's rows."""
    document = load_json(DATA / "fork_results.json")
    document["benchmarks"] = []
    for fixture, suites in FIXTURES:
        rows = load_json(DATA / fixture)["benchmarks"]
        document["benchmarks"] += [row for row in rows
                                   if row["run_name"].split("/")[0] in suites]
    options = document["context"]["faultlab"]["options"]
    options["suites"], options["filter"] = SUITES, ""
    return document


def write_run(directory, document):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "results.json", "w", encoding="utf-8") as file:
        json.dump(document, file)
    return directory


def combined_run(directory):
    """A run directory holding the combined fixtures' results.json."""
    return write_run(directory, combined_document())


def run_cli(*args):
    return subprocess.run([PYTHON, "-B", str(REPORT), *args], capture_output=True, text=True,
                          timeout=300)


class Page(HTMLParser):
    """What a test reads from a page: every start tag with its attributes, the ids, the
    sections' text, and the table rows by section (each cell's text; the second line under a
    cell, a row's label, apart)."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags = []                # (tag, {attribute: value})
        self.ids = []
        self.section = None           # the innermost <section id=...>
        self.sections = []            # [id], in page order
        self.text = {}                # section id: its text
        self.rows = {}                # section id: [[cell text]]
        self.below = {}               # section id: [the text under a cell of the row]
        self.cell = None
        self.in_below = False
        self.stack = []
        self.feed(text)

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        self.tags.append((tag, attributes))
        if "id" in attributes:
            self.ids.append(attributes["id"])
        self.stack.append((tag, self.section))
        if tag == "section" and attributes.get("id"):
            self.section = attributes["id"]
            self.sections.append(self.section)
        elif tag == "tr":
            self.rows.setdefault(self.section, []).append([])
            self.below.setdefault(self.section, []).append("")
        elif tag == "td":
            self.cell = []
        elif tag == "div" and attributes.get("class") == "below" and self.cell is not None:
            self.in_below = True

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[self.section][-1].append("".join(self.cell))
            self.cell = None
        if tag == "div":
            self.in_below = False
        while self.stack:
            open_tag, outer = self.stack.pop()
            if open_tag == tag:
                if tag == "section":
                    self.section = outer
                break

    def handle_data(self, data):
        if self.in_below:
            self.below[self.section][-1] += data
        elif self.cell is not None:
            self.cell.append(data)
        for section in self.open_sections():
            self.text[section] = self.text.get(section, "") + data

    def open_sections(self):
        return {outer for _, outer in self.stack if outer} | ({self.section} - {None})


def suite_rows(page, suite):
    """{benchmark name: ([cells], the label under the name)} of the suite's table of rows,
    which names the benchmarks without the suite."""
    section = f"suite-{suite}"
    return {f"{suite}/{cells[0]}": (cells, below)
            for cells, below in zip(page.rows.get(section, []), page.below.get(section, []))
            if len(cells) > 2 and cells[1] in ("measured", "skipped", "failed")}


def number_of(text):
    """'2.04 µs ±2.2%' -> 2040.0 (ns); '1492 ns' -> 1492.0."""
    match = re.match(r"([\d.]+) (ns|µs|ms|s)\b", text)
    assert match, text
    return float(match.group(1)) * {"ns": 1, "µs": 1e3, "ms": 1e6, "s": 1e9}[match.group(2)]


class ReportHtmlTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The combined run's page, written once: the tests that only read it share it.
        cls.shared_scratch = Path(tempfile.mkdtemp(prefix="faultlab-report-html-shared-"))
        cls.shared = cls.write_page(cls.shared_scratch / "run", combined_document())

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.shared_scratch)

    @staticmethod
    def write_page(directory, document):
        """(directory, the CLI's result, index.html's text, its Page) of report.py DIR."""
        write_run(directory, document)
        result = run_cli(str(directory))
        if result.returncode != 0:
            raise AssertionError(f"report.py {directory}: exit {result.returncode}: "
                                 f"{result.stderr}")
        text = (directory / "index.html").read_text(encoding="utf-8")
        return directory, result, text, Page(text)

    def setUp(self):
        self.scratch = Path(tempfile.mkdtemp(prefix="faultlab-report-html-"))
        self.addCleanup(shutil.rmtree, self.scratch)

    def report(self, document=None, name="run"):
        """The page of document's run (default: the combined run's, shared; not to be
        changed)."""
        if document is None:
            return self.shared
        return self.write_page(self.scratch / name, document)

    # What is written ---------------------------------------------------------------------------

    def test_writes_every_report_the_run_has_rows_for_and_the_page(self):
        directory, result, _, _ = self.report()
        self.assertEqual(set(p.name for p in directory.iterdir()),
                         REPORT_FILES | {"results.json", "index.html"})
        # Each report's files are the ones `report.py KIND DIR` writes alone, byte for byte.
        alone = combined_run(self.scratch / "alone")
        for module in (fork, uffd, numa):
            summary, written = module.write_report(alone)
            self.assertIn(summary, result.stdout)
            for name in written:
                self.assertEqual((directory / name).read_bytes(), (alone / name).read_bytes(),
                                 name)
        self.assertRegex(result.stderr, r"faultlab: wrote .*/\{.*index\.html.*\}\n$")

    def test_a_run_without_rows_for_any_report_gets_the_page_alone(self):
        document = load_json(DATA / "compare_a.json")
        directory, result, _, page = self.report(document)
        self.assertEqual(set(p.name for p in directory.iterdir()), {"results.json", "index.html"})
        self.assertEqual(result.stdout, "")
        self.assertEqual([s for s in page.sections if s.startswith("suite-")], ["suite-fault"])

    def test_bad_input_is_one_line_and_writes_nothing(self):
        missing = self.scratch / "missing"
        empty = self.scratch / "empty"
        empty.mkdir()
        broken = combined_document()
        row = next(row for row in broken["benchmarks"] if row["run_name"].startswith("fork/"))
        del row["real_time"]
        broken_dir = write_run(self.scratch / "broken", broken)
        for directory, says in ((missing, "no such directory"), (empty, "no such file"),
                                (broken_dir, "without a real_time")):
            result = run_cli(str(directory))
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
            self.assertIn(says, result.stderr)
        self.assertFalse(missing.exists())
        self.assertEqual(list(empty.iterdir()), [])
        self.assertEqual([p.name for p in broken_dir.iterdir()], ["results.json"])

    def test_kind_reports_still_run_alone(self):
        directory = combined_run(self.scratch / "run")
        result = run_cli("fork", str(directory))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("index.html", {p.name for p in directory.iterdir()})
        self.assertIn("fork_latency.svg", {p.name for p in directory.iterdir()})

    # Self-contained ----------------------------------------------------------------------------

    def test_page_loads_nothing_from_elsewhere(self):
        directory, _, text, page = self.report()
        tags = {tag for tag, _ in page.tags}
        for tag in ("script", "link", "img", "iframe", "object", "embed", "audio", "video"):
            self.assertNotIn(tag, tags)
        csp = [attributes["content"] for tag, attributes in page.tags
               if tag == "meta" and attributes.get("http-equiv") == "Content-Security-Policy"]
        self.assertEqual(len(csp), 1)
        self.assertIn("default-src 'none'", csp[0])
        ids = set(page.ids)
        for tag, attributes in page.tags:
            for name in ("href", "xlink:href", "src", "srcset", "action", "poster"):
                value = attributes.get(name)
                if value is None:
                    continue
                if value.startswith("#"):
                    self.assertIn(value[1:], ids, f"<{tag} {name}={value}>: no such anchor")
                elif value.startswith("data:image/png;base64,"):
                    self.assertEqual(tag, "image")  # a heatmap's cells, inside the file
                else:
                    # A file of the run, beside the page.
                    self.assertNotIn("/", value, f"<{tag} {name}={value}>")
                    self.assertTrue((directory / value).is_file(), f"<{tag} {name}={value}>")
        # CSS loads nothing either: every url() points into the page.
        self.assertEqual(re.findall(r"url\((?!#)[^)]*\)", text), [])
        self.assertNotIn("@import", text)
        self.assertNotIn("@font-face", text)

    def test_ids_are_unique_across_the_charts(self):
        _, _, _, page = self.report()
        duplicates = {name for name in page.ids if page.ids.count(name) > 1}
        self.assertEqual(duplicates, set())

    # What the page says ------------------------------------------------------------------------

    def test_header_then_warnings_first_then_the_contents(self):
        document = combined_document()
        _, _, text, page = self.report()
        context = document["context"]
        warnings = context["faultlab"]["warnings"]
        self.assertTrue(warnings)
        self.assertLess(page.sections.index("warnings"), page.sections.index("environment"))
        self.assertEqual(page.sections[:2], ["warnings", "environment"])
        for warning in warnings:
            self.assertIn(flat(warning), flat(page.text["warnings"]))
        header = text[:text.index('id="warnings"')]
        environment = context["faultlab"]["environment"]
        for fact in (environment["kernel"]["release"], context["date"],
                     environment["build"]["faultlab_version"],
                     "suites fault, fork, uffd, guard, numa, model"):
            self.assertIn(fact, header)
        self.assertLess(text.index('id="contents"'), text.index('id="environment"'))

    def test_emulation_is_the_first_warning_and_stands_out(self):
        _, _, _, page = self.report(load_json(DATA / "numa_results.json"))
        items = [attributes.get("class") for tag, attributes in page.tags if tag == "li"]
        self.assertEqual(items[0], "emulation")
        self.assertTrue(page.text["warnings"].split("light.")[1].strip().startswith(
            "SOFTWARE EMULATION"))

    def test_environment_table_has_every_recorded_setting(self):
        document = combined_document()
        _, _, _, page = self.report()
        environment = document["context"]["faultlab"]["environment"]
        text = page.text["environment"]
        self.assertIn(f"enabled: {environment['thp']['enabled']}", text)
        self.assertIn(environment["kernel"]["release"], text)
        for key in environment:
            self.assertIn(key, text)
        for dropped in document["context"]["faultlab"]["counters"]["dropped"]:
            self.assertIn(f"perf counter dropped: {dropped['name']}", text)

    def test_a_section_per_suite_in_order_with_every_row(self):
        document = combined_document()
        directory, _, _, page = self.report()
        self.assertEqual([s for s in page.sections if s.startswith("suite-")],
                         [f"suite-{suite}" for suite in SUITES])
        for suite in SUITES:
            names = {row["run_name"] for row in document["benchmarks"]
                     if row["run_name"].startswith(suite + "/")}
            shown = suite_rows(page, suite)
            self.assertEqual(len(shown), len(names), suite)
        # Skipped rows say so, with the reason.
        benches = {bench.name: bench for bench in load_run(directory).benchmarks}
        for row in document["benchmarks"]:
            if not row.get("error_occurred"):
                continue
            suite = row["run_name"].split("/")[0]
            bench = benches[row["run_name"]]
            cells, _ = suite_rows(page, suite)[bench.short_name]
            # Why not measured, in place of the figures; then the repetitions.
            self.assertEqual(cells[1:], ["skipped",
                                         row["error_message"].removeprefix("skipped: "),
                                         str(bench.repetitions)])

    def test_failed_rows_show_as_failed_with_the_reason(self):
        document = combined_document()
        name = next(row["run_name"] for row in document["benchmarks"]
                    if row["run_name"].startswith("numa/policy/local/"))
        for row in document["benchmarks"]:
            if row["run_name"] == name:
                row["error_occurred"] = True
                row["error_message"] = "placement check: 3 pages on node 1, not 0"
        directory, _, text, page = self.report(document)
        short = next(bench.short_name for bench in load_run(directory).benchmarks
                     if bench.name == name)
        cells, _ = suite_rows(page, "numa")[short]
        self.assertEqual(cells[1], "failed")
        self.assertEqual(cells[2], "placement check: 3 pages on node 1, not 0")
        self.assertRegex(text, r'<tr class="failed"><td class="name">' +
                         re.escape(short.removeprefix("numa/")))

    def test_figures_are_the_means_over_repetitions(self):
        document = combined_document()
        directory, _, _, page = self.report()
        name = next(row["run_name"] for row in document["benchmarks"]
                    if row["run_name"].startswith("fault/write/anon4k/"))
        rows = [row for row in document["benchmarks"]
                if row["run_name"] == name and row["run_type"] == "iteration"]
        times = [row["real_time"] for row in rows]
        mean = statistics.fmean(times)
        cv = statistics.stdev(times) / mean
        p50 = statistics.fmean(row["p50_ns"] for row in rows)
        short = next(bench.short_name for bench in load_run(directory).benchmarks
                     if bench.name == name)
        cells, label = suite_rows(page, "fault")[short]
        self.assertEqual(cells[1], "measured")
        self.assertAlmostEqual(number_of(cells[2]), mean, delta=mean * 0.005)
        shown_cv = float(re.search(r"±([\d.]+)%", cells[2]).group(1)) / 100
        self.assertAlmostEqual(shown_cv, cv, delta=cv * 0.05)
        self.assertAlmostEqual(number_of(cells[3]), p50, delta=p50 * 0.005)
        self.assertEqual(cells[-1], str(len(rows)))
        self.assertEqual(label, rows[0]["label"])

    def test_fault_charts_one_per_case_with_every_percentile(self):
        document = combined_document()
        _, _, text, _ = self.report()
        cases = list(dict.fromkeys(split_name(row["run_name"])[1]
                                   for row in document["benchmarks"]
                                   if row["run_name"].startswith("fault/")))
        for case in cases:
            figure = re.search(rf'<figure id="chart-fault-{case}">(<svg.*?</svg>)', text,
                               re.DOTALL)
            self.assertIsNotNone(figure, case)
            svg = ElementTree.fromstring(figure.group(1))
            legend = next(group for group in svg.iter(f"{SVG}g")
                          if group.get("id") == f"chart-fault-{case}-legend_1")
            labels = ["".join(label.itertext()) for label in legend.iter(f"{SVG}text")]
            self.assertEqual(labels, ["mean", "p50", "p90", "p99", "p99.9", "max"], case)
        # The skipped hugetlb1g write keeps its row in the chart, with its reason below.
        write = re.search(r'<figure id="chart-fault-write">(.*?)</figure>', text, re.DOTALL)
        self.assertIn("hugetlb1g: skipped", write.group(1))
        self.assertIn("hugetlb1g skipped: needs 1 free 1 GiB hugetlb pages", flat(
            re.sub(r"<[^>]+>", " ", write.group(1))))

    def test_each_report_sits_in_its_first_suite_with_its_charts_and_summary(self):
        directory, _, text, page = self.report()
        for kind, suite, charts in (("fork", "fork", ("fork_latency", "fork_write_cost")),
                                    ("uffd", "uffd", ("uffd_round_trip",)),
                                    ("numa", "numa", ("numa_latency", "numa_bandwidth",
                                                      "numa_first_touch"))):
            section = page.text[f"suite-{suite}"]
            summary = (directory / f"{kind}_summary.txt").read_text(encoding="utf-8")
            self.assertIn(summary.rstrip(), section)
            for chart in charts:
                start = text.index(f'<figure id="chart-{chart}">')
                self.assertLess(text.index(f'id="suite-{suite}"'), start)
                # The file's chart, its ids prefixed: the same number of drawn elements.
                inline = text[start:text.index("</figure>", start)]
                on_disk = (directory / f"{chart}.svg").read_text(encoding="utf-8")
                for element in ("<path", "<use", "<text", "<image"):
                    self.assertEqual(inline.count(element), on_disk.count(element),
                                     (chart, element))
        # Guard and model point at the reports that cover them.
        self.assertIn("uffd report (in the uffd section) covers", page.text["suite-guard"])
        self.assertIn("fork report (in the fork section) covers", page.text["suite-model"])

    def test_run_summary_is_shown_when_the_run_wrote_one(self):
        directory = combined_run(self.scratch / "run")
        (directory / "summary.txt").write_text("fault suite: steady-state mean <per> fault\n",
                                               encoding="utf-8")
        result = run_cli(str(directory))
        self.assertEqual(result.returncode, 0, result.stderr)
        page = Page((directory / "index.html").read_text(encoding="utf-8"))
        self.assertIn("fault suite: steady-state mean <per> fault", page.text["run-summary"])
        self.assertNotIn("run-summary", self.report()[3].sections)

    def test_files_section_links_every_file_written(self):
        directory, _, _, page = self.report()
        links = {attributes["href"] for tag, attributes in page.tags if tag == "a"
                 and not attributes.get("href", "#").startswith("#")}
        self.assertEqual(links, REPORT_FILES | {"results.json"})
        self.assertIn("results.json", page.text["files"])

    def test_without_a_baseline_there_is_no_comparison(self):
        directory, _, _, page = self.report()
        self.assertNotIn("comparison", page.ids)
        self.assertNotIn("#comparison", {attributes.get("href") for _, attributes in page.tags})
        self.assertFalse((directory / "comparison.csv").exists())

    # compare --html ----------------------------------------------------------------------------

    def compare_dirs(self, b_document=None):
        a = write_run(self.scratch / "a", load_json(DATA / "compare_a.json"))
        b = write_run(self.scratch / "b", b_document or load_json(DATA / "compare_b.json"))
        return a, b

    def test_compare_html_has_the_table_the_text_has(self):
        b_document = load_json(DATA / "compare_b.json")
        b_document["context"]["faultlab"]["environment"]["thp"]["enabled"] = "always"
        a, b = self.compare_dirs(b_document)
        page_path = self.scratch / "compare.html"
        result = run_cli("compare", str(a), str(b), "--html", str(page_path))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"faultlab: wrote {page_path}", result.stderr)
        page = Page(page_path.read_text(encoding="utf-8"))
        table = [cells for cells in page.rows["comparison"] if cells]
        # The text table's rows, in its order: benchmark, figure, A, B, B/A, p, verdict.
        text_rows = [line.split() for line in result.stdout.splitlines()
                     if re.match(r"^fault/\S+ +(time|p50) ", line)]
        self.assertEqual(len(table), len(text_rows))
        for cells, words in zip(table, text_rows):
            self.assertEqual(cells[0], words[0])
            self.assertEqual(cells[1], words[1])
            self.assertEqual(cells[4], words[6])  # B/A
        self.assertIn("thp/enabled", page.text["warnings"])
        self.assertIn("'always'", page.text["warnings"])
        self.assertNotIn("script", {tag for tag, _ in page.tags})

    # report DIR --baseline A -------------------------------------------------------------------

    def test_baseline_puts_compares_table_in_the_page(self):
        b_document = load_json(DATA / "compare_b.json")
        b_document["context"]["faultlab"]["environment"]["thp"]["enabled"] = "always"
        a, b = self.compare_dirs(b_document)
        result = run_cli(str(b), "--baseline", str(a))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sorted(p.name for p in b.iterdir()),
                         ["comparison.csv", "index.html", "results.json"])
        self.assertRegex(result.stderr, r"faultlab: wrote .*/\{comparison\.csv,index\.html\}\n$")
        # What compare prints and writes for the same pair: the table on stdout, the same CSV.
        compared = run_cli("compare", str(a), str(b), "--csv", str(self.scratch / "c.csv"))
        self.assertEqual(compared.returncode, 0, compared.stderr)
        self.assertEqual(result.stdout, compared.stdout)
        self.assertEqual((b / "comparison.csv").read_bytes(),
                         (self.scratch / "c.csv").read_bytes())
        page = Page((b / "index.html").read_text(encoding="utf-8"))
        # After the environment, before the suites; listed in the contents.
        self.assertLess(page.sections.index("environment"), page.sections.index("comparison"))
        self.assertLess(page.sections.index("comparison"), page.sections.index("suite-fault"))
        toc = [attributes["href"] for tag, attributes in page.tags
               if tag == "a" and attributes.get("href", "").startswith("#")]
        self.assertEqual(toc[:3], ["#warnings", "#environment", "#comparison"])
        self.assertIn("Against a", page.text["comparison"])
        # The text table's rows, in its order, cell for cell: benchmark, figure, A, B, B/A, p,
        # (repetitions,) verdict.
        text_rows = [match.groups() for match in re.finditer(
            r"^(fault/\S+) +(time|p50) +(\S+ \S+) +(\S+ \S+) +(\S+) +(\S+) +(.+)$",
            compared.stdout, re.MULTILINE)]
        table = [cells for cells in page.rows["comparison-figures"] if cells]
        self.assertTrue(text_rows)
        self.assertEqual([tuple(cells[:6] + cells[7:]) for cells in table], text_rows)
        self.assertEqual([cells[6] for cells in table], ["5 / 5"] * len(table))
        self.assertIn("slower *", [cells[7] for cells in table])
        self.assertIn(flat(re.search(r"^\d+ figures compared: .*$", compared.stdout,
                                     re.MULTILINE).group(0)), page.text["comparison-figures"])
        # The environments' difference and the weak test, warned of inside the section.
        self.assertIn("thp/enabled: A 'madvise', B 'always'", page.text["comparison-warnings"])
        self.assertIn("fewer than 9 repetitions", page.text["comparison-warnings"])
        # The skipped row, listed apart.
        self.assertIn("skipped in both: needs 1 free 1 GiB hugetlb pages",
                      page.text["comparison"])
        # comparison.csv is linked from the files of the run.
        files = [attributes["href"] for tag, attributes in page.tags if tag == "a"
                 and not attributes["href"].startswith("#")]
        self.assertEqual(sorted(set(files)), ["comparison.csv", "results.json"])
        self.assertIn("comparison.csv", page.text["files"])
        self.assertEqual({name for name in page.ids if page.ids.count(name) > 1}, set())

        # Written again without --baseline: the page has no comparison and no link to the
        # comparison.csv left from before (which stays).
        result = run_cli(str(b))
        self.assertEqual(result.returncode, 0, result.stderr)
        page = Page((b / "index.html").read_text(encoding="utf-8"))
        self.assertNotIn("comparison", page.sections)
        self.assertNotIn("comparison.csv", {attributes.get("href") for _, attributes in page.tags})
        self.assertTrue((b / "comparison.csv").is_file())

    def test_baseline_in_a_run_of_every_suite(self):
        # The baseline has the fault rows only: every other suite is "only in B", and the
        # section sits among the charts' ids without a clash.
        a = write_run(self.scratch / "a", load_json(DATA / "compare_a.json"))
        directory = combined_run(self.scratch / "run")
        result = run_cli(str(directory), f"--baseline={a}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(set(p.name for p in directory.iterdir()),
                         REPORT_FILES | {"results.json", "index.html", "comparison.csv"})
        page = Page((directory / "index.html").read_text(encoding="utf-8"))
        self.assertEqual(page.sections.index("comparison"),
                         page.sections.index("environment") + 1)
        self.assertEqual({name for name in page.ids if page.ids.count(name) > 1}, set())
        others = {row["run_name"] for row in combined_document()["benchmarks"]
                  if not row["run_name"].startswith("fault/")}
        self.assertIn(f"Only in B ({len(others)}), not compared", page.text["comparison"])
        # B's fault rows are A's own (combined_document takes compare_a's): every figure the
        # same, none significant.
        verdicts = {cells[7] for cells in page.rows["comparison-figures"] if cells}
        self.assertEqual(verdicts, {"not significant *"})

    def test_baseline_bad_input_writes_nothing(self):
        a, b = self.compare_dirs()
        empty = self.scratch / "empty"
        empty.mkdir()
        elsewhere = load_json(DATA / "compare_a.json")
        elsewhere["benchmarks"] = [renamed(row, "fault/", "other/")
                                   for row in elsewhere["benchmarks"]]
        other = write_run(self.scratch / "other", elsewhere)
        for args, says in (((str(b), "--baseline", str(self.scratch / "missing")),
                            "--baseline " + str(self.scratch / "missing") + ": no such directory"),
                           ((str(b), "--baseline", str(empty)), "not a faultlab run"),
                           ((str(b), "--baseline", str(other)), "no benchmark ran in both"),
                           ((str(b), "--baseline"), "--baseline takes a run directory"),
                           ((str(b), "--baseline="), "--baseline takes a run directory"),
                           ((str(b), "--baseline", str(a), "--bogus"), "unknown option '--bogus'"),
                           ((str(b), str(a), "--baseline", str(a)), "unknown report"),
                           (("--baseline", str(a)), "usage")):
            before = listing(b)
            line = check_refused(self, run_cli(*args), b, before)
            self.assertIn(says, line)
            self.assertEqual(before, ["results.json"])

    def test_compare_html_bad_input_writes_nothing(self):
        a, b = self.compare_dirs()
        for args, says in (((str(a), str(b), "--html"), "--html takes a file name"),
                           ((str(a), str(b), "--html", str(self.scratch / "no" / "x.html")),
                            "no such directory"),
                           ((str(a), str(b), "--html", str(self.scratch)), "a directory")):
            before = sorted(self.scratch.rglob("*"))
            result = run_cli("compare", *args)
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
            self.assertIn(says, result.stderr)
            self.assertEqual(sorted(self.scratch.rglob("*")), before)


if __name__ == "__main__":
    unittest.main()
