"""`faultlab report DIR`: the whole run as one page, DIR/index.html, written together with every
report the run has rows for (fork, uffd, numa: their CSV, SVG and summary files), from
DIR/results.json.

The page, in order: the run (machine, kernel, date, faultlab's version, the run's options), the
environment's warnings (software emulation first), a table of contents, the environment, with
`--baseline A` the comparison against run A (compare.py's, as `faultlab compare A DIR --html`
shows it; its rows also in DIR/comparison.csv), the run's own summary (summary.txt: the fault and model suites), then a section per suite the run
has (fault, fork, uffd, guard, numa, model, then any other), the flame graphs when the run was
recorded with --flamegraph (links into flamegraphs/: flamegraph.py), and the files of the run.
A suite's section has its charts inline, the summary of the report that covers it, and a table
of its rows: name, status (measured, skipped or failed, with the reason), the figures that say most
about the suite, the time column's spread across repetitions, and the row's label. The fork,
uffd and numa reports' charts and summaries go in the first section of the suites each covers;
the fault suite's charts (fault.py) are drawn here, as results.json has them: percentiles of
single faults per repetition, not the faults themselves.

compare.py is imported only when a baseline is given: it needs scipy, which the page without
a comparison should not wait for.

Self-contained, offline and without JavaScript: page.py. Every file the page links to is one it
is written with or one the run wrote (results.json, results.csv, summary.txt, topology.xml).
"""

import json
import math

from . import fault, flamegraph, fork, numa, uffd
from .page import Cell, escape, frame, inline_svg, preformatted, table
from .results import TIME, BadInput, leaves, load_run, write_files
from .text import format_ns, format_percent, significant

# The reports written with the page, by the name `faultlab report KIND` knows them by.
KINDS = {"fork": fork, "uffd": uffd, "numa": numa}
# The suites each report covers: its charts and summary go in the first of these the run has.
KIND_SUITES = {"fork": ("fork", "model"), "uffd": ("uffd", "guard", "model"), "numa": ("numa",)}

# The suites in the order of the page, with what each measures; a suite not named here comes
# after them, under its own name.
SUITES = {
    "fault": "page faults on first touch, per kind of memory and access",
    "fork": "fork latency against RSS, copy-on-write after fork, COW-PTE",
    "uffd": "userfaultfd round trips, and the faults the kernel answers without a handler",
    "guard": "guard regions (MADV_GUARD_INSTALL) against mprotect",
    "numa": "where memory lives: the node matrix, policies, migration",
    "model": "the user-space model of the fault paths, without a trap",
}

# The figures each suite's table shows, where any of its rows has them: (counter, heading). The
# time column comes first in every table, with its spread.
KEY_FIGURES = {
    "fault": (("p50_ns", "p50"), ("p90_ns", "p90"), ("p99_ns", "p99"), ("max_ns", "max"),
              ("first_round_ns", "first round"), ("harness_ratio", "harness share"),
              ("faults_per_sec", "faults/s")),
    "fork": (("fork_ns", "fork call"), ("p50_ns", "p50"), ("p99_ns", "p99"),
             ("child_vmpte_kb", "child VmPTE"), ("ns_per_4k", "per 4 KiB")),
    "uffd": (("p50_ns", "p50 round trip"), ("p99_ns", "p99"), ("max_ns", "max"),
             ("trap_ns", "trap"), ("to_handler_ns", "to handler"), ("ioctl_ns", "ioctl"),
             ("to_resume_ns", "to resume")),
    "guard": (("ns_per_call", "per call"), ("ns_per_page", "per page"), ("p50_ns", "p50"),
              ("p99_ns", "p99")),
    "numa": (("ns_per_fault", "per fault"), ("ns_per_load", "per load"), ("gb_per_s", "GB/s"),
             ("pages_per_s", "pages/s")),
    "model": (("median_ns", "median"), ("ns_per_entry", "per entry"), ("excess_ns", "excess")),
}

# The environment's entries in the order a reader looks for them: what shapes a fault first, the
# build and the kernel's whole configuration last; entries not named here follow.
ENVIRONMENT_ORDER = ("kernel", "cpu", "hypervisor", "emulation", "thp", "hugetlb", "numa",
                     "numa_balancing", "damon", "memory", "swap", "vm", "userfaultfd",
                     "perf_event_paranoid", "kptr_restrict", "clocksource", "cgroup", "build",
                     "google_benchmark", "kernel_config")

# An environment entry with more settings than this is folded (the kernel's configuration, the
# CPU's flags, THP's sizes).
FOLD_ABOVE = 12

# What the run itself wrote, linked from the page when present.
RUN_FILES = (("results.json", "every repetition of every benchmark, and the run's context"),
             ("results.csv", "the same rows as a table, one per repetition and aggregate"),
             ("summary.txt", "the fault and model suites' summary"),
             ("topology.xml", "hwloc's XML of the machine"))
# What each report's files are, for the list of files.
REPORT_FILE_KINDS = {".csv": "its rows as a table", ".svg": "chart", ".txt": "its summary"}

INDEX = "index.html"
# The comparison's rows (compare.csv_report) with --baseline. Without --baseline a comparison.csv
# an earlier report wrote stays in DIR (reports only ever add or replace their files); the page
# links it only when written with it, so no page points at a comparison it does not show.
COMPARISON_CSV = "comparison.csv"


# ---------------------------------------------------------------------------------------------
# Numbers

def figure_text(counter, value):
    """A counter's value in the unit its name says: *_ns as a time, *_kb in kB, GB/s, per second,
    a ratio as a percentage, anything else as a plain number."""
    if not math.isfinite(value):
        return f"{value:g}"
    if counter == TIME or counter.endswith("_ns") or counter.startswith("ns_per_"):
        return format_ns(value)
    if counter.endswith("_kb"):
        return f"{significant(value)} kB"
    if counter == "gb_per_s":
        return f"{significant(value)} GB/s"
    if counter == "mib_per_s":
        return f"{significant(value)} MiB/s"
    if counter.endswith(("_per_s", "_per_sec")):
        for suffix, scale in (("M", 1e6), ("k", 1e3)):
            if value >= scale:
                return f"{significant(value / scale)}{suffix}"
        return significant(value)
    if counter.endswith("_ratio"):
        return format_percent(value)
    return significant(value)


# ---------------------------------------------------------------------------------------------
# The run: header, warnings, environment

def option_texts(run):
    """The run's options as a reader would give them."""
    options = run.options()
    texts = []
    if options.get("suites"):
        texts.append("suites " + ", ".join(map(str, options["suites"])))
    if options.get("quick"):
        texts.append("--quick")
    if options.get("filter"):
        texts.append(f"--filter {options['filter']}")
    if options.get("cpus"):
        texts.append("CPUs " + ",".join(map(str, options["cpus"])))
    if options.get("node") is not None:
        texts.append(f"--node {options['node']}")
    if options.get("hugepages_reserved"):
        texts.append(f"hugepages reserved {json.dumps(options['hugepages_reserved'])}")
    if options.get("numa_balancing_opt_in"):
        texts.append("--numa-balancing")
    return texts


def header_html(run):
    environment = run.environment()
    kernel = environment.get("kernel") or {}
    build = environment.get("build") or {}
    faultlab = run.context.get("faultlab") or {}
    facts = [("Machine", run.machine()),
             ("Kernel", " ".join(str(part) for part in (kernel.get("release"),
                                                        kernel.get("version")) if part)),
             ("Date", run.context.get("date") or "unknown"),
             ("faultlab", build.get("faultlab_version") or "unknown version"),
             ("Options", "; ".join(option_texts(run)) or "none recorded")]
    if isinstance(faultlab.get("run_seconds"), (int, float)):
        facts.append(("Run time", f"{faultlab['run_seconds']:.0f} s"))
    load = run.context.get("load_avg")
    if isinstance(load, list) and load:
        facts.append(("Load average at start", ", ".join(f"{value:.2f}" for value in load)))
    facts.append(("Directory", run.directory.resolve().name))
    items = "".join(f"<dt>{escape(name)}</dt><dd>{escape(value)}</dd>" for name, value in facts)
    return f'<header><h1>faultlab run</h1>\n<dl class="facts">{items}</dl></header>'


def warnings_html(run):
    warnings = run.warnings()
    if not warnings:
        return ('<section id="warnings"><p class="note">The environment raised no warning: '
                "nothing recorded that distorts the figures.</p></section>")
    items = "".join(
        f'<li class="{"emulation" if warning.startswith("SOFTWARE EMULATION") else ""}">'
        f"{escape(warning)}</li>" for warning in warnings)
    return (f'<section id="warnings" class="warnings"><h2>Warnings ({len(warnings)})</h2>'
            "<p>Conditions of this run that distort its figures; read every number below in "
            f"their light.</p><ul>{items}</ul></section>")


def value_text(value):
    """A leaf of the environment as text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def environment_cell(value):
    """An environment entry: a plain value, a few 'path: value' lines, or many of them folded
    into a <details> that names the first."""
    if not isinstance(value, dict):
        return escape(value_text(value))
    lines = [f"{path.lstrip('/')}: {value_text(leaf)}" for path, leaf in leaves(value, "").items()]
    if not lines:
        return ""
    body = "<br>".join(escape(line) for line in lines)
    if len(lines) <= FOLD_ABOVE:
        return body
    return (f"<details><summary>{len(lines)} entries ({escape(lines[0])}, ...)</summary>"
            f"{body}</details>")


def counters_rows(run):
    counters = (run.context.get("faultlab") or {}).get("counters")
    if not isinstance(counters, dict):
        return []
    rows = []
    if counters.get("opened"):
        rows.append(("perf counters opened", ", ".join(map(str, counters["opened"]))))
    for dropped in counters.get("dropped") or []:
        if isinstance(dropped, dict):
            rows.append((f"perf counter dropped: {dropped.get('name')}",
                         str(dropped.get("reason", ""))))
    for degraded in counters.get("degraded") or []:
        rows.append(("perf counter degraded", value_text(degraded)))
    return rows


def environment_html(run):
    environment = run.environment()
    keys = [key for key in ENVIRONMENT_ORDER if key in environment]
    keys += [key for key in environment if key not in ENVIRONMENT_ORDER]
    rows = [f"<tr><th>{escape(key)}</th><td>{environment_cell(environment[key])}</td></tr>"
            for key in keys]
    rows += [f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>"
             for key, value in counters_rows(run)]
    benchmark_context = [("CPUs (Google Benchmark)", run.context.get("num_cpus")),
                         ("MHz per CPU", run.context.get("mhz_per_cpu")),
                         ("CPU scaling enabled", run.context.get("cpu_scaling_enabled")),
                         ("Google Benchmark library", run.context.get("library_build_type"))]
    rows += [f"<tr><th>{escape(key)}</th><td>{escape(value_text(value))}</td></tr>"
             for key, value in benchmark_context if value is not None]
    if not rows:
        return ('<section id="environment"><h2>Environment</h2><p>Not recorded in '
                "results.json.</p></section>")
    return ('<section id="environment"><h2>Environment</h2><p>The machine\'s state before the '
            "run, as faultlab recorded it in results.json (context.faultlab).</p>"
            '<div class="scroll"><table class="environment">' + "\n".join(rows) +
            "</table></div></section>")


def run_summary_html(run):
    path = run.directory / "summary.txt"
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return ""
    return ('<section id="run-summary"><h2>Summary of the fault and model suites</h2>'
            '<p>From <a href="summary.txt">summary.txt</a>, which the run wrote and printed '
            f"at its end.</p>{preformatted(text)}</section>")


# ---------------------------------------------------------------------------------------------
# The suites

def suites_of(run):
    """The suites the run has rows for: SUITES' order first, then any other in run order."""
    present = list(dict.fromkeys(bench.suite for bench in run.benchmarks))
    return [suite for suite in SUITES if suite in present] + \
        [suite for suite in present if suite not in SUITES]


def counts_text(benches):
    counts = {status: sum(bench.status == status for bench in benches)
              for status in ("measured", "skipped", "failed")}
    return (f"{len(benches)} rows: " +
            ", ".join(f"{count} {status}" for status, count in counts.items() if count) + ".")


def rows_table(suite, benches):
    """One row per benchmark: its name (without the suite) with its label below, its status,
    the time column's mean and cv and the suite's key figures, or, for a row not measured, why
    not; and its repetitions."""
    figures = [(counter, heading) for counter, heading in KEY_FIGURES.get(suite, ())
               if any(bench.measure(counter) is not None for bench in benches)]
    header = ([f"{suite}/...", "status", "time (mean ±cv)"] +
              [heading for _, heading in figures] + ["reps"])
    rows = []
    for bench in benches:
        cells = [Cell(bench.short_name.removeprefix(f"{suite}/"), "name", bench.label),
                 bench.status]
        if bench.skipped:
            cells.append(Cell(bench.skipped, "why", span=1 + len(figures)))
        else:
            time = bench.measure(TIME)
            cells.append(Cell(f"{format_ns(time.value)} ±{format_percent(time.cv)}", "num"))
            for counter, _ in figures:
                measure = bench.measure(counter)
                cells.append(Cell("" if measure is None else
                                  figure_text(counter, measure.value), "num"))
        cells.append(Cell(str(bench.repetitions), "num"))
        rows.append(("" if bench.status == "measured" else bench.status, cells))
    return table(header, rows)


def chart_html(data, prefix, label, file_name=None):
    """A chart in a <figure>, with a link to its file when it has one."""
    caption = escape(label)
    if file_name:
        caption += f' (<a href="{escape(file_name)}">{escape(file_name)}</a>)'
    return (f'<figure id="{escape(prefix)}">{inline_svg(data, prefix + "-", label)}'
            f"<figcaption>{caption}</figcaption></figure>")


def kind_report_html(kind, summary, files):
    """A report's charts, its summary and the links to its files."""
    parts = [f'<section id="report-{kind}"><h3>The {kind} report</h3>']
    for name, data in files.items():
        if name.endswith(".svg"):
            parts.append(chart_html(data, f"chart-{name.removesuffix('.svg')}", name, name))
    links = ", ".join(f'<a href="{escape(name)}">{escape(name)}</a>' for name in files)
    parts.append(f"<p>Files: {links}. Written with this page from results.json; "
                 f"<code>faultlab report {kind} DIR</code> writes them alone.</p>")
    parts.append(f"<h4>Summary ({escape(kind)}_summary.txt)</h4>{preformatted(summary)}")
    parts.append("</section>")
    return "\n".join(parts)


def fault_charts_html(run):
    parts = []
    for case, data in fault.distribution_charts(run):
        if data is None:
            parts.append(f'<p class="note">fault/{escape(case)}: no chart, every row skipped '
                         "(the reasons are in the table below).</p>")
        else:
            parts.append(chart_html(data, f"chart-fault-{case}",
                                    f"fault/{case}: single faults, mean and percentiles"))
    return "\n".join(parts)


def suite_html(run, suite, placed, reports):
    """A suite's section. placed: {kind: the suite whose section has its report}."""
    benches = [bench for bench in run.benchmarks if bench.suite == suite]
    title = f"{suite}: {SUITES[suite]}" if suite in SUITES else suite
    parts = [f'<section id="suite-{escape(suite)}"><h2>{escape(title)}</h2>',
             f"<p>{escape(counts_text(benches))}</p>"]
    if suite == "fault":
        parts.append(fault_charts_html(run))
    for kind, (summary, files) in reports.items():
        if placed[kind] == suite:
            parts.append(kind_report_html(kind, summary, files))
        elif suite in KIND_SUITES[kind]:
            parts.append(f'<p class="note">The <a href="#report-{kind}">{kind} report</a> (in '
                         f"the {escape(placed[kind])} section) covers this suite's rows "
                         "too.</p>")
    parts.append(f"<h3>Rows of the {escape(suite)} suite</h3>")
    parts.append("<p>Figures: mean over the repetitions; cv: the time column's standard "
                 "deviation across repetitions over its mean.</p>")
    parts.append(rows_table(suite, benches))
    parts.append("</section>")
    return "\n".join(parts)


def files_html(run, report_files, comparison):
    items = []
    for name, what in RUN_FILES:
        if (run.directory / name).is_file():
            items.append(f'<li><a href="{name}">{name}</a>: {escape(what)}</li>')
    if comparison is not None:
        items.append(f'<li><a href="{COMPARISON_CSV}">{COMPARISON_CSV}</a>: the comparison '
                     f"against {escape(baseline_name(comparison))}, one row per figure "
                     "compared and one per benchmark not compared</li>")
    for kind, files in report_files.items():
        for name in files:
            what = REPORT_FILE_KINDS.get(name[name.rfind("."):], "")
            items.append(f'<li><a href="{escape(name)}">{escape(name)}</a>: the {kind} report'
                         f"{', ' + what if what else ''}</li>")
    return f'<section id="files"><h2>Files of this run</h2><ul>{"".join(items)}</ul></section>'


def flamegraphs_html(run):
    """Links to each benchmark's flame graph and folded stacks when the run was recorded with
    --flamegraph (flamegraphs/index.json); empty otherwise."""
    index = flamegraph.load_index(run.directory)
    if index is None:
        return ""
    recording = index.get("recording", {})
    folder = flamegraph.DIRECTORY
    cost = flamegraph.recording_cost(run)
    cost_rows = {}
    for row in cost.rows if cost else []:
        cost_rows.setdefault(row.name, {})[row.figure] = row

    def cost_cells(name):
        """Recorded against plain repetitions: the time column's and p50's change, and the
        time's U test."""
        if cost is None:
            return ""
        figures = cost_rows.get(name, {})
        cells = [flamegraph.percent(figures[figure].ratio) if figure in figures else "-"
                 for figure in (TIME, "p50_ns")]
        time = figures.get(TIME)
        if time is None:
            cells.append("-")
        else:
            p_text = "-" if time.p_value is None else significant(time.p_value, 2)
            cells.append(f"{time.verdict} (p {p_text})")
        return "".join(f'<td class="num">{escape(cell)}</td>' for cell in cells)

    rows = "".join(
        f"<tr><td>{escape(entry['name'])}</td>"
        f'<td><a href="{folder}/{escape(entry["html"])}">flame graph</a></td>'
        f'<td><a href="{folder}/{escape(entry["folded"])}">folded stacks</a></td>'
        f"<td>{entry['samples']}</td>{cost_cells(entry['name'])}</tr>"
        for entry in index.get("benchmarks", []))
    cost_header = ("<th>recorded vs plain: time</th><th>p50</th><th>time: U test</th>"
                   if cost else "")
    cost_text = ""
    if cost:
        lines = " ".join(flamegraph.recording_cost_lines(cost))
        cost_text = (f"<p>{escape(lines)} Every figure of the run includes the recorded "
                     f'repetitions; <a href="{folder}/{flamegraph.RECORDING_COST}">'
                     f"{folder}/{flamegraph.RECORDING_COST}</a> has both halves' medians.</p>")
    kernel = ("kernel frames included" if recording.get("kptr_restrict") == 0 else
              f"kernel frames may be unnamed (kptr_restrict {recording.get('kptr_restrict')})")
    return ('<section id="flamegraphs"><h2>Flame graphs</h2>'
            f"<p>The run was profiled with perf ({escape(str(recording.get('event')))} at "
            f"{escape(str(recording.get('frequency')))} Hz, call graphs by "
            f"{escape(str(recording.get('call_graph')))}; {escape(kernel)}); each benchmark's "
            f"samples{' (its recorded repetitions)' if cost else ', from its setup to its last row,'} "
            "are one flame graph (a self-contained "
            "page) and one file of folded stacks (for FlameGraph, speedscope or inferno). "
            f'The whole profile is <a href="{folder}/{flamegraph.PERF_DATA}">'
            f"{folder}/{flamegraph.PERF_DATA}</a> (perf report -i).</p>"
            f"{cost_text}"
            '<div class="scroll"><table><tr><th>benchmark</th><th>page</th><th>stacks</th>'
            f"<th>samples</th>{cost_header}</tr>{rows}</table></div></section>")


def baseline_name(comparison):
    """The baseline run's directory name (resolved: reports/out/latest names a run by its
    link)."""
    return comparison.a.directory.resolve().name


def comparison_html(comparison):
    """The comparison against the baseline (`--baseline A`): compare.py's, as its own page shows
    it, one heading level down."""
    from . import compare  # here only: it imports scipy (the caller had it compare already)
    name = escape(baseline_name(comparison))
    return (f'<section id="comparison"><h2>Against {name}</h2>'
            f"<p>Each benchmark of this run (B) against the same benchmark of the baseline run "
            f"{name} (A), as <code>faultlab compare A B</code> shows it; the rows are also in "
            f'<a href="{COMPARISON_CSV}">{COMPARISON_CSV}</a>.</p>\n' +
            compare.comparison_html(comparison, 3, "comparison-warnings", "comparison-figures") +
            "</section>")


def toc_html(run, suites, has_summary, comparison):
    entries = [("warnings", f"Warnings ({len(run.warnings())})"),
               ("environment", "Environment")]
    if comparison is not None:
        entries.append(("comparison", f"Against {baseline_name(comparison)}"))
    if has_summary:
        entries.append(("run-summary", "Summary of the fault and model suites"))
    for suite in suites:
        count = sum(bench.suite == suite for bench in run.benchmarks)
        entries.append((f"suite-{suite}", f"{suite} ({count} rows)"))
    if flamegraph.load_index(run.directory) is not None:
        entries.append(("flamegraphs", "Flame graphs"))
    entries.append(("files", "Files of this run"))
    items = "".join(f'<li><a href="#{escape(anchor)}">{escape(text)}</a></li>'
                    for anchor, text in entries)
    return f'<nav class="toc" id="contents"><h2>Contents</h2><ol>{items}</ol></nav>'


def index_html(run, reports, comparison=None):
    """The page, as text. reports: {kind: (summary, {file name: bytes})}; comparison: the run
    (B) against its baseline (A), a compare.RunComparison, or None."""
    suites = suites_of(run)
    placed = {kind: next(suite for suite in KIND_SUITES[kind] if suite in suites)
              for kind in reports}
    summary = run_summary_html(run)
    body = [header_html(run), warnings_html(run),
            toc_html(run, suites, bool(summary), comparison), environment_html(run),
            "" if comparison is None else comparison_html(comparison), summary]
    body += [suite_html(run, suite, placed, reports) for suite in suites]
    body.append(flamegraphs_html(run))
    body.append(files_html(run, {kind: files for kind, (_, files) in reports.items()},
                           comparison))
    title = f"faultlab run {run.directory.resolve().name}: {run.machine()}"
    return frame(title, "\n".join(part for part in body if part))


def report_files(run, comparison=None):
    """Every report the run has rows for, and the page; with a comparison (compare.RunComparison,
    this run as B), its CSV too and its text table among the summaries: (the summaries joined,
    {file name: bytes}). Raises BadInput."""
    reports = {kind: module.report_files(run)
               for kind, module in KINDS.items() if module.applies(run)}
    files = {}
    for _, kind_files in reports.values():
        files.update(kind_files)
    files[INDEX] = index_html(run, reports, comparison).encode()
    summaries = [summary for summary, _ in reports.values()]
    if comparison is not None:
        from . import compare  # here only: it imports scipy
        files[COMPARISON_CSV] = compare.csv_report(comparison).encode()
        summaries.append(compare.text_report(comparison))
    return "\n".join(summaries), files


def load_comparison(run, baseline):
    """The run (B) against the run directory baseline (A). Raises BadInput, naming the
    baseline when it is the one at fault."""
    from . import compare  # here only: it imports scipy, which a page without one skips
    try:
        base = load_run(baseline)
    except BadInput as error:
        raise BadInput(f"--baseline {error}") from None
    return compare.compare_runs(base, run)


def write_report(directory, baseline=None):
    """Writes the page and the run's reports into directory, all or none; with baseline (a run
    directory), the comparison against it on the page and in comparison.csv. Returns the
    reports' summaries and the files written. Raises BadInput."""
    run = load_run(directory)
    comparison = None if baseline is None else load_comparison(run, baseline)
    summaries, files = report_files(run, comparison)
    write_files(run.directory, files)
    return summaries, sorted(files)
