"""`faultlab compare A B`: each benchmark of run B against the same benchmark of run A, as Google
Benchmark's tools/compare.py does it: the ratio of the two runs' figures and a two-sided
Mann-Whitney U test over their repetitions.

Benchmarks are matched by run_name. Two figures are compared: the time column (real_time, in
ns; faultlab's rows report manual time) and, where both runs have it, the p50_ns counter (the
primary figure of faultlab's latency rows: the median single fault). For each, the ratio is B's
median over repetitions divided by A's, and the U test asks whether B's repetitions come from
the same distribution as A's. Medians and a rank test, not means and a t-test: one repetition
hit by the noise of a shared VM pulls a mean and a t-test's variance far, a median and the
ranks hardly.

compare.py calls a U test weak below 9 repetitions a side and prints a warning rather than
hide it; so does this. With very few repetitions the test cannot reach alpha at all (3 against
3, the smallest two-sided p is 0.1): such rows get the verdict "too few repetitions", never
"not significant", which would read as "no change".

Rows only in one run, and rows skipped in either (with the reasons), are listed apart. Settings
that change figures (kernel, CPU, THP, numa_balancing, emulation, the CPUs used) are compared
between the two runs' environments and every difference is named.

compare_runs() returns the comparison as data, for the text table here, the CSV and the
HTML (comparison_html) to format: on a page of its own (`--html`, in page.py's frame) and as a
section of a run's index.html (`faultlab report DIR --baseline A`, html.py).
"""

import csv
import io
import math
import statistics
from dataclasses import dataclass, field

from scipy.stats import mannwhitneyu

from .page import escape, frame, table
from .results import TIME, BadInput, leaves, load_run
from .text import format_ns, significant, wrap

# Significance level of the U test, compare.py's default (--alpha).
ALPHA = 0.05
# compare.py's UTEST_OPTIMAL_REPETITIONS: below this many repetitions on either side it warns
# that the result is unreliable.
OPTIMAL_REPETITIONS = 9
# compare.py's UTEST_MIN_REPETITIONS: with fewer on either side it runs no test.
MIN_REPETITIONS = 2

# The figures compared, in this order: the time column always, p50_ns where both runs have it.
FIGURES = (TIME, "p50_ns")
FIGURE_LABELS = {TIME: "time", "p50_ns": "p50"}

# Verdicts, in the order the table lists them (regressions first).
SLOWER = "slower"
FASTER = "faster"
NOT_SIGNIFICANT = "not significant"
TOO_FEW = "too few repetitions"
VERDICT_ORDER = (SLOWER, FASTER, NOT_SIGNIFICANT, TOO_FEW)

# The environment's settings that change figures, as paths into context.faultlab.environment
# (nested objects are compared leaf by leaf). The build's type and sanitizer belong here too; its
# version does not: a different faultlab is what a comparison is usually for.
ENVIRONMENT_PATHS = (
    "kernel/release",
    "cpu/model_name",
    "thp",
    "numa_balancing",
    "emulation",
    "build/build_type",
    "build/sanitizer",
)
# The CPUs the workers were given (--cpu, or all the run was allowed): context.faultlab.options.
CPUS = "options/cpus"


@dataclass
class FigureComparison:
    """One figure of one benchmark in both runs."""
    name: str            # run_name, the key the runs were matched by
    short_name: str      # the name without the harness's arguments, for display
    figure: str          # TIME ("time_ns") or a counter ("p50_ns"); both in ns
    a_values: list       # per repetition
    b_values: list
    a_median: float
    b_median: float
    ratio: float         # b_median / a_median; math.nan when a_median is 0
    p_value: float       # two-sided U test; None with fewer than MIN_REPETITIONS a side
    # The smallest p-value the test can give with these repetition counts: at or above ALPHA
    # no difference, however large, can be called significant.
    smallest_p: float
    verdict: str         # one of VERDICT_ORDER

    @property
    def weak(self):
        """Fewer repetitions than compare.py asks for on one side: a verdict to take lightly."""
        return min(len(self.a_values), len(self.b_values)) < OPTIMAL_REPETITIONS

    @property
    def label(self):
        return FIGURE_LABELS.get(self.figure, self.figure)


@dataclass
class Unmatched:
    """A benchmark not compared: only in one run, or skipped in one or both."""
    name: str
    short_name: str
    only_in: str = ""    # "A" or "B"; empty when both runs have it
    a_skipped: str = ""  # the reason it did not run in A, or empty
    b_skipped: str = ""

    @property
    def reason(self):
        if self.only_in:
            return f"only in {self.only_in}"
        if self.a_skipped == self.b_skipped:
            return f"skipped in both: {self.a_skipped}"
        parts = [f"{side} skipped: {why}" for side, why in
                 (("A", self.a_skipped), ("B", self.b_skipped)) if why]
        return "; ".join(parts)


@dataclass
class EnvironmentDifference:
    what: str            # a path into the environment, e.g. "thp/enabled", or CPUS
    a: object
    b: object


@dataclass
class RunComparison:
    a: object            # results.Run
    b: object
    rows: list           # FigureComparison, sorted: regressions first, larger changes first
    only_in_a: list = field(default_factory=list)   # Unmatched
    only_in_b: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    environment: list = field(default_factory=list)  # EnvironmentDifference

    def counts(self):
        """How many figure rows have each verdict, in VERDICT_ORDER."""
        return {verdict: sum(row.verdict == verdict for row in self.rows)
                for verdict in VERDICT_ORDER}


def u_test(a_values, b_values):
    """(p-value, smallest p-value possible at these sizes) of the two-sided U test, as
    compare.py calls it (scipy's default method: exact for small samples without ties). The
    smallest p is the test's own answer for two samples that do not overlap at all."""
    if min(len(a_values), len(b_values)) < MIN_REPETITIONS:
        return None, 1.0
    p_value = mannwhitneyu(a_values, b_values, alternative="two-sided").pvalue
    apart = mannwhitneyu(range(len(a_values)),
                         range(len(a_values), len(a_values) + len(b_values)),
                         alternative="two-sided").pvalue
    return float(p_value), float(apart)


def compare_figure(a_bench, b_bench, figure):
    """The FigureComparison of one figure, or None if either run lacks it."""
    a_values = [value for value in a_bench.values(figure) if math.isfinite(value)]
    b_values = [value for value in b_bench.values(figure) if math.isfinite(value)]
    if not a_values or not b_values:
        return None
    a_median, b_median = statistics.median(a_values), statistics.median(b_values)
    ratio = b_median / a_median if a_median else math.nan
    p_value, smallest_p = u_test(a_values, b_values)
    if p_value is None or smallest_p >= ALPHA:
        verdict = TOO_FEW
    elif p_value < ALPHA and b_median != a_median:
        verdict = SLOWER if b_median > a_median else FASTER
    else:
        verdict = NOT_SIGNIFICANT
    return FigureComparison(a_bench.name, a_bench.short_name, figure, a_values, b_values,
                            a_median, b_median, ratio, p_value, smallest_p, verdict)


def sort_key(row):
    """Regressions, then improvements, then the rest; within each, the largest change first."""
    change = abs(math.log(row.ratio)) if row.ratio > 0 else math.inf
    return VERDICT_ORDER.index(row.verdict), -change, row.name, FIGURES.index(row.figure)


def lookup(document, path):
    """The value at a /-separated path, or KeyError."""
    for key in path.split("/"):
        if not isinstance(document, dict) or key not in document:
            raise KeyError(path)
        document = document[key]
    return document


def environment_differences(a, b):
    """Each setting of ENVIRONMENT_PATHS (and the CPU list) whose values differ. A setting one
    run did not record (an older faultlab) is unknown there, not different."""
    differences = []
    sources = [(path, lambda run, path=path: lookup(run.environment(), path))
               for path in ENVIRONMENT_PATHS]
    sources.append((CPUS, lambda run: lookup(run.context.get("faultlab") or {}, CPUS)))
    for path, read in sources:
        try:
            a_leaves, b_leaves = leaves(read(a), path), leaves(read(b), path)
        except KeyError:
            continue
        for leaf in sorted(a_leaves.keys() | b_leaves.keys()):
            if leaf in a_leaves and leaf in b_leaves and a_leaves[leaf] != b_leaves[leaf]:
                differences.append(EnvironmentDifference(leaf, a_leaves[leaf], b_leaves[leaf]))
    return differences


def compare_runs(a, b):
    """The RunComparison of two loaded runs (results.Run). BadInput when no benchmark ran in
    both: there is nothing to compare."""
    a_benches = {bench.name: bench for bench in a.benchmarks}
    b_benches = {bench.name: bench for bench in b.benchmarks}
    comparison = RunComparison(a, b, [])
    for name, a_bench in a_benches.items():
        b_bench = b_benches.get(name)
        if b_bench is None:
            comparison.only_in_a.append(Unmatched(name, a_bench.short_name, only_in="A"))
        elif a_bench.skipped or b_bench.skipped:
            comparison.skipped.append(Unmatched(name, a_bench.short_name,
                                                a_skipped=a_bench.skipped,
                                                b_skipped=b_bench.skipped))
        else:
            for figure in FIGURES:
                row = compare_figure(a_bench, b_bench, figure)
                if row is not None:
                    comparison.rows.append(row)
    comparison.only_in_b = [Unmatched(name, bench.short_name, only_in="B")
                            for name, bench in b_benches.items() if name not in a_benches]
    if not comparison.rows:
        common = len(a_benches.keys() & b_benches.keys())
        raise BadInput(f"no benchmark ran in both {a.directory} and {b.directory} "
                       f"({len(a_benches)} in A, {len(b_benches)} in B, {common} in both, "
                       f"{len(comparison.skipped)} of those skipped)")
    comparison.rows.sort(key=sort_key)
    comparison.environment = environment_differences(a, b)
    return comparison


def load_and_compare(a_directory, b_directory):
    """compare_runs of two run directories; BadInput for either's bad input."""
    return compare_runs(load_run(a_directory), load_run(b_directory))


def display_names(comparison):
    """{run_name: the name to show}: the short name, unless two benchmarks share it."""
    named = ([(row.name, row.short_name) for row in comparison.rows] +
             [(item.name, item.short_name) for item in
              comparison.only_in_a + comparison.only_in_b + comparison.skipped])
    owners = {}
    for name, short in named:
        owners.setdefault(short, set()).add(name)
    return {name: short if len(owners[short]) == 1 else name for name, short in named}


def format_ratio(ratio):
    return f"{significant(ratio)}x" if math.isfinite(ratio) else "-"


def format_p(p_value):
    return "-" if p_value is None else significant(p_value, 2)


def describe_run(label, run):
    build = run.environment().get("build") or {}
    version = build.get("faultlab_version") or "unknown version"
    date = run.context.get("date") or "unknown date"
    # Other work on the machine moves figures too, and no setting records it: the load average
    # Google Benchmark takes at the start of the run (1 minute) is the one hint.
    load = run.context.get("load_avg")
    load = f"; load average {load[0]:.2f} at start" if isinstance(load, list) and load else ""
    return f"{label}: {run.directory} (faultlab {version}, {date}{load}; {run.machine()})"


def text_report(comparison):
    """The comparison as the console shows it: both runs, what differs in their environments,
    the table (benchmark, figure, A, B, B/A, p, verdict) and what was not compared."""
    names = display_names(comparison)
    lines = [describe_run("A", comparison.a), describe_run("B", comparison.b)]
    if comparison.environment:
        lines.append("WARNING: the two runs' environments differ in settings that change figures:")
        for difference in comparison.environment:
            lines.append(f"  {difference.what}: A {difference.a!r}, B {difference.b!r}")
    lines.append("")
    lines.append(wrap(f"B/A: ratio of the medians over repetitions (above 1: B takes longer). "
                      f"p: two-sided Mann-Whitney U test over the repetitions; significant "
                      f"below {ALPHA}."))
    lines.append("")
    header = ("benchmark", "figure", "A", "B", "B/A", "p", "verdict")
    cells = []
    for row in comparison.rows:
        verdict = row.verdict + (" *" if row.weak and row.verdict != TOO_FEW else "")
        cells.append((names[row.name], row.label, format_ns(row.a_median),
                      format_ns(row.b_median), format_ratio(row.ratio), format_p(row.p_value),
                      verdict))
    widths = [max(len(line[column]) for line in [header] + cells) for column in range(len(header))]
    for line in [header] + cells:
        # Names and verdicts flush left, numbers flush right.
        padded = [text.ljust(width) if column in (0, 1, 6) else text.rjust(width)
                  for column, (text, width) in enumerate(zip(line, widths))]
        lines.append("  ".join(padded).rstrip())
    lines.append("")
    counts = comparison.counts()
    lines.append(f"{len(comparison.rows)} figures compared: " +
                 ", ".join(f"{count} {verdict}" for verdict, count in counts.items() if count))
    lines += weak_test_lines(comparison)
    for title, items in (("Only in A", comparison.only_in_a), ("Only in B", comparison.only_in_b)):
        if items:
            lines.append("")
            lines.append(f"{title} ({len(items)}, not compared):")
            lines += [f"  {names[item.name]}" for item in items]
    if comparison.skipped:
        lines.append("")
        lines.append(f"Skipped ({len(comparison.skipped)}, not compared):")
        lines += [wrap(f"  {names[item.name]}: {item.reason}") for item in comparison.skipped]
    return "\n".join(lines) + "\n"


def weak_test_lines(comparison):
    """What the repetition counts allow the U test to say, as compare.py warns of it."""
    lines = []
    too_few = [row for row in comparison.rows if row.verdict == TOO_FEW]
    if too_few:
        sizes = sorted({(len(row.a_values), len(row.b_values)) for row in too_few})
        smallest = min(row.smallest_p for row in too_few)
        counts = ", ".join(f"{a} vs {b}" for a, b in sizes)
        lines.append(wrap(f"WARNING: {len(too_few)} figures have too few repetitions for the U "
                          f"test to call any change significant ({counts} repetitions: the "
                          f"smallest p-value it can give is {significant(smallest, 2)}, not "
                          f"below {ALPHA}); their ratios are shown, not judged. Run both "
                          f"with `--repetitions {OPTIMAL_REPETITIONS}` or more."))
    weak = [row for row in comparison.rows if row.weak and row.verdict != TOO_FEW]
    if weak:
        lines.append(wrap(f"* WARNING: fewer than {OPTIMAL_REPETITIONS} repetitions on a side: "
                          f"the U test is weak and its verdict unreliable (Google Benchmark's "
                          f"compare.py recommends {OPTIMAL_REPETITIONS} or more: "
                          f"`faultlab run --repetitions {OPTIMAL_REPETITIONS}`)."))
    return lines


CSV_HEADER = ("benchmark", "figure", "a_median_ns", "b_median_ns", "ratio", "p_value",
              "a_repetitions", "b_repetitions", "verdict", "weak_test", "not_compared")


def csv_report(comparison):
    """One line per figure compared, in the table's order, then one per benchmark not compared
    (not_compared says why). Numbers in full precision."""
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in comparison.rows:
        writer.writerow([row.name, row.figure, repr(row.a_median), repr(row.b_median),
                         repr(row.ratio), "" if row.p_value is None else repr(row.p_value),
                         len(row.a_values), len(row.b_values), row.verdict,
                         int(row.weak), ""])
    for item in comparison.only_in_a + comparison.only_in_b + comparison.skipped:
        writer.writerow([item.name, "", "", "", "", "", "", "", "", "", item.reason])
    return output.getvalue()


def comparison_html(comparison, level, warnings_id, figures_id):
    """The comparison as HTML, for the standalone page (html_report) and for a run's index.html
    (`faultlab report DIR --baseline A`, html.py): both runs, the environment's differences and
    the weak-test warnings (a section with id warnings_id), the verdict counts and the table,
    regressions first (a section with id figures_id), then what was not compared. level: the
    rank of its headings (2 on its own page, 3 inside the run's page)."""
    names = display_names(comparison)
    h = f"h{level}"
    runs = "".join(f"<li>{escape(describe_run(label, run))}</li>"
                   for label, run in (("A", comparison.a), ("B", comparison.b)))
    parts = [f"<ul>{runs}</ul>"]
    warnings = [f"The two runs' environments differ in {difference.what}: A "
                f"{difference.a!r}, B {difference.b!r}" for difference in comparison.environment]
    warnings += [line.removeprefix("* ").removeprefix("WARNING: ")
                 for line in weak_test_lines(comparison)]
    if warnings:
        items = "".join(f"<li>{escape(' '.join(warning.split()))}</li>" for warning in warnings)
        parts.append(f'<section id="{warnings_id}" class="warnings"><{h}>Warnings '
                     f"({len(warnings)})</{h}><ul>{items}</ul></section>")
    counts = comparison.counts()
    parts.append(
        f'<section id="{figures_id}"><{h}>{len(comparison.rows)} figures compared: ' +
        escape(", ".join(f"{count} {verdict}" for verdict, count in counts.items() if count)) +
        f"</{h}><p>B/A: the ratio of the medians over repetitions (above 1: B takes longer). p: "
        f"two-sided Mann-Whitney U test over the repetitions; significant below {ALPHA}. *: fewer "
        f"than {OPTIMAL_REPETITIONS} repetitions on a side, a weak test.</p>")
    rows = []
    for row in comparison.rows:
        verdict = row.verdict + (" *" if row.weak and row.verdict != TOO_FEW else "")
        rows.append((row.verdict.replace(" ", "-"),
                     [names[row.name], row.label, format_ns(row.a_median),
                      format_ns(row.b_median), format_ratio(row.ratio), format_p(row.p_value),
                      f"{len(row.a_values)} / {len(row.b_values)}", verdict]))
    classes = {0: "name", 2: "num", 3: "num", 4: "num", 5: "num", 6: "num", 7: "verdict"}
    parts.append(table(("benchmark", "figure", "A", "B", "B/A", "p", "repetitions A / B",
                        "verdict"), rows, classes))
    parts.append("</section>")
    not_compared = [(f"Only in A ({len(comparison.only_in_a)})", comparison.only_in_a),
                    (f"Only in B ({len(comparison.only_in_b)})", comparison.only_in_b),
                    (f"Skipped ({len(comparison.skipped)})", comparison.skipped)]
    for title, items in not_compared:
        if items:
            parts.append(f"<{h}>{escape(title)}, not compared</{h}>")
            parts.append(table(("benchmark", "why"),
                               [("skipped", [names[item.name], item.reason]) for item in items],
                               {0: "name"}))
    return "\n".join(parts)


def html_report(comparison):
    """The comparison as a self-contained page: both runs, the environment's differences and the
    weak-test warnings first, then the table (regressions first) and what was not compared."""
    header = ("<header><h1>faultlab compare</h1>"
              '<p class="lead">Each benchmark of run B against the same benchmark of run A.</p>'
              "</header>")
    title = f"faultlab compare: {comparison.a.directory.name} against {comparison.b.directory.name}"
    return frame(title, header + "\n" + comparison_html(comparison, 2, "warnings", "comparison"))
