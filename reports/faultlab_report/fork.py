"""`faultlab report fork DIR`: the fork suite (the real kernel) beside the model's classic and
COW-PTE fork, from DIR/results.json. Writes into DIR:

- fork.csv: one row per benchmark, aggregated over its repetitions;
- fork_latency.svg: fork latency against RSS, per backing and per model variant;
- fork_write_cost.svg: the cost per 2 MiB region of fork plus k writes after it, and where
  COW-PTE stops paying;
- fork_summary.txt: the figures set against each other and against what the COW-PTE series
  reported (also returned, for printing).

Every number comes from the run; the only constants are units, the x86-64 page-table geometry,
and the COW-PTE series' own published figures, which are labelled as such.
"""

import math
from dataclasses import dataclass

from . import charts
from .results import TIME, BadInput, Measure, benchmarks_csv, write_kind_report
from .text import (format_ns, format_percent, significant, skipped_lines, times, with_spread,
                   wrap)

# x86-64 geometry: one PTE table (4 KiB, 512 entries) maps a 2 MiB region of 4 KiB pages.
REGION_MIB = 2
PAGES_PER_REGION = 512
PAGES_PER_MIB = 256
PTE_TABLE_KB = 4
KB_PER_MIB = 1024

# What Chih-En Lin's COW-PTE series reported ("Introduce Copy-On-Write to Page Table"):
# RFC v2 (lazy accounting) cut the fork of a 512 MB process by about 93%, from about 10 ms to
# 0.6 ms, measured in QEMU; v3-v5 (eager accounting) left fork latency about unchanged; the page
# tables of the child of a 1 GB process fell from 2096 kB to 44 kB.
SERIES_FORK_RSS_MIB = 512
SERIES_V2_FORK_MS = (10.0, 0.6)
SERIES_V2_CUT = 0.93
SERIES_PT_RSS_MIB = 1024
SERIES_CHILD_PT_KB = (2096, 44)

# How close counts as agreeing. The series measured other machines under QEMU, so absolute times
# agree when within a factor of two; ratios and table sizes are machine-independent and must be
# closer.
TIME_AGREES_WITHIN = 2.0
UNCHANGED_WITHIN = 0.25      # eager fork "about unchanged": speedup within 1 +- 25%
PT_KB_AGREES_WITHIN = 0.10   # page-table memory within 10%

# Fork figures that repeat within this cv are called repeatable in the summary.
REPEATABLE_CV = 0.10

# Model cases the fork report uses: fork itself, the COW faults after it, their floors.
MODEL_CASES = ("fork", "cow_copy", "cow_reuse", "cow_pte_break", "baseline")

KERNEL_RUN_COMMAND = "./scripts/faultlab run --suite fork"
MODEL_RUN_COMMAND = ("./scripts/faultlab run --suite model "
                     "--filter 'model/(fork|cow_copy|cow_reuse|cow_pte_break|baseline)/'")


@dataclass(frozen=True)
class Line:
    """A series of benchmarks that differ only in RSS, drawn as one line."""
    label: str
    suite: str
    case: str
    variant: str
    color: str

    @property
    def dashed(self):
        return self.suite == "model"


KERNEL_ANON4K = Line("kernel anon4k", "fork", "latency", "anon4k", "C0")
KERNEL_THP = Line("kernel thp", "fork", "latency", "thp", "C1")
KERNEL_HUGETLB = Line("kernel hugetlb2m", "fork", "latency", "hugetlb2m", "C2")
KERNEL_COW_PTE = Line("kernel anon4k, COW-PTE (prctl)", "fork", "latency_cow_pte", "anon4k", "C3")
MODEL_CLASSIC = Line("model classic", "model", "fork", "classic", "C7")
MODEL_EAGER = Line("model COW-PTE eager", "model", "fork", "cow_pte_eager", "C6")
MODEL_LAZY = Line("model COW-PTE lazy", "model", "fork", "cow_pte_lazy", "C9")
LATENCY_LINES = (
    KERNEL_ANON4K, KERNEL_THP, KERNEL_HUGETLB,
    Line("kernel shmem", "fork", "latency", "shmem", "C4"),
    Line("kernel file_ro", "fork", "latency", "file_ro", "C5"),
    KERNEL_COW_PTE, MODEL_CLASSIC, MODEL_EAGER, MODEL_LAZY)

# Single-size fork cases: the variants of the anon4k fork, and the floors.
VARIANTS = (("latency_dontfork", "anon4k", "MADV_DONTFORK"),
            ("latency_wipeonfork", "anon4k", "MADV_WIPEONFORK"),
            ("latency_threads", "anon4k", "idle threads"))
FLOORS = (("latency_floor", "fork", "fork of faultlab's own process, no region"),
          ("latency_floor", "vfork", "vfork"),
          ("latency_floor", "posix_spawn", "posix_spawn of /bin/true, exec included"))


# ---------------------------------------------------------------------------------------------
# Numbers: formatting, points along RSS, slopes and interpolation.

def kb(measure):
    return with_spread(measure, lambda value: f"{value:.0f} kB")


def points(run, line, counter=TIME):
    """[(rss_mib, Measure)] of the line's benchmarks that ran and carry the counter."""
    found = []
    for bench in run.select(line.suite, line.case, line.variant):
        measure = bench.measure(counter)
        if measure is not None and bench.rss_mib is not None:
            found.append((bench.rss_mib, measure))
    return found


@dataclass
class Slope:
    """A marginal cost per MiB between two sizes: it leaves out what every size pays alike."""
    per_mib: Measure
    low_mib: float
    high_mib: float


def slope(sized, min_mib=0):
    """The slope between the smallest size of at least min_mib and the largest, or None."""
    usable = [(mib, measure) for mib, measure in sized if mib >= min_mib]
    if len(usable) < 2:
        return None
    (low_mib, low), (high_mib, high) = usable[0], usable[-1]
    return Slope((high - low) / (high_mib - low_mib), low_mib, high_mib)


@dataclass
class Estimate:
    """A figure at a size the run may not have measured, and how it was had."""
    measure: Measure
    how: str        # measured, interpolated or extrapolated
    sizes: tuple    # the sizes it came from (MiB)

    def source(self):
        """'measured', or 'extrapolated from 64 and 256 MiB'."""
        if self.how == "measured":
            return self.how
        return f"{self.how} from {self.sizes[0]:g} and {self.sizes[1]:g} MiB"


def at_size(sized, target_mib):
    """The figure at target_mib: measured; interpolated log-log between the measured sizes
    around it; or extrapolated linearly in RSS from the nearest two. The spread is the larger
    relative spread of the two sizes used: interpolating adds no knowledge of the noise. None
    with fewer than two sizes."""
    for mib, measure in sized:
        if mib == target_mib:
            return Estimate(measure, "measured", (mib,))
    if len(sized) < 2:
        return None
    below = [point for point in sized if point[0] < target_mib]
    above = [point for point in sized if point[0] > target_mib]
    if below and above:
        (x0, y0), (x1, y1) = below[-1], above[0]
        how = "interpolated"
        if y0.value > 0 and y1.value > 0:
            t = math.log(target_mib / x0) / math.log(x1 / x0)
            value = math.exp(math.log(y0.value) + t * math.log(y1.value / y0.value))
        else:
            value = y0.value + (y1.value - y0.value) * (target_mib - x0) / (x1 - x0)
    else:
        (x0, y0), (x1, y1) = (sized[-2], sized[-1]) if not above else (sized[0], sized[1])
        how = "extrapolated"
        value = y0.value + (y1.value - y0.value) * (target_mib - x0) / (x1 - x0)
    return Estimate(Measure(value, abs(value) * max(y0.cv, y1.cv)), how, (x0, x1))


def size_text(mib):
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib:g} MiB"


# ---------------------------------------------------------------------------------------------
# fork_latency.svg

def skipped_sizes(run, line):
    return [bench for bench in run.select(line.suite, line.case, line.variant) if bench.skipped]


def latency_chart(run, lines_present):
    """Fork latency (the time column) in ms against RSS, log-log; bars span the repetitions."""
    series, notes = [], []
    repetitions = set()
    for line in lines_present:
        benches = [bench for bench in run.select(line.suite, line.case, line.variant)
                   if not bench.skipped and bench.rss_mib is not None]
        skipped = skipped_sizes(run, line)
        if not benches:
            if skipped:
                notes.append(f"Left out, skipped at every size: {line.label} (at "
                             f"{size_text(skipped[-1].rss_mib)}: {skipped[-1].skipped}; every "
                             "reason in fork_summary.txt).")
            continue
        if skipped:
            notes.append(f"{line.label}: skipped at "
                         f"{', '.join(size_text(bench.rss_mib) for bench in skipped)}.")
        repetitions.update(bench.repetitions for bench in benches)
        series.append(charts.Series(
            line.label,
            x=[bench.rss_mib for bench in benches],
            y=[bench.measure(TIME).value / 1e6 for bench in benches],
            low=[min(bench.values(TIME)) / 1e6 for bench in benches],
            high=[max(bench.values(TIME)) / 1e6 for bench in benches],
            color=line.color, dashed=line.dashed))
    if not series:
        return None
    unshared = [bench for line in (MODEL_EAGER, MODEL_LAZY)
                for bench in run.select(line.suite, line.case, line.variant)
                if not bench.skipped and bench.measure("child_shared_pte_tables") is not None
                and bench.measure("child_shared_pte_tables").value == 0]
    if unshared:
        sizes = sorted({size_text(bench.rss_mib) for bench in unshared})
        notes.append(f"model COW-PTE at {', '.join(sizes)} shares no table "
                     "(child_shared_pte_tables 0): COW-PTE shares only whole tables, and a "
                     "smaller region forks classic.")
    counts = "/".join(str(count) for count in sorted(repetitions))
    notes = [
        "Kernel (solid): the parent's fork() call plus the child's _exit() and the parent's "
        "wait4(), wall time. Model (dashed): fork plus the child's exit as function calls in "
        "one process, no trap.",
        f"Points: mean of {counts} repetitions; bars: the lowest and highest repetition.",
    ] + notes
    sizes = sorted({x for line in series for x in line.x})
    chart = charts.line_chart(
        series, title=f"fork latency (fork + child exit + wait) against RSS\n{run.machine()}",
        x_label="RSS written before fork (MiB)", y_label="fork latency (ms)",
        log_x=True, log_y=True, x_ticks=sizes, notes=notes)
    return charts.svg_bytes(chart)


# ---------------------------------------------------------------------------------------------
# fork_write_cost.svg: the cost of one 2 MiB region, fork's share plus k writes after fork.

@dataclass
class RegionCost:
    """Cost of a 2 MiB region for k 4 KiB pages written after fork:
    fork + (k >= 1: first) + max(k - 1, 0) * later."""
    line: Line
    fork: Measure          # F: the marginal fork latency of one region
    fork_slope: Slope
    first: Measure         # the first write in the region
    later: Measure         # each further write
    first_name: str        # what the first write is, when not simply the later writes' cost
    later_source: str

    def cost_ns(self, k):
        if k <= 0:
            return self.fork.value
        return self.fork.value + self.first.value + (k - 1) * self.later.value

    def legend(self):
        """'model COW-PTE lazy: 0.0679 + 9.92 break + (k−1) × 0.421' (µs)."""
        us = lambda measure: significant(measure.value / 1e3)  # noqa: E731
        if not self.first_name:
            return f"{self.line.label}: {us(self.fork)} + k × {us(self.later)}"
        text = f"{self.line.label}: {us(self.fork)} + {us(self.first)} {self.first_name}"
        if self.later.value:
            text += f" + (k−1) × {us(self.later)}"
        return text


def region_fork_cost(run, line):
    """F: the slope of the line's fork latency between the smallest RSS of at least one region
    and the largest, times a region. A smaller size fills no whole page table, and COW-PTE only
    shares whole tables (the model's 1 MiB fork is a classic fork); the slope also leaves out the
    cost of creating and reaping a process, which every size pays alike."""
    fitted = slope(points(run, line), min_mib=REGION_MIB)
    if fitted is None:
        return None, None
    return fitted.per_mib * REGION_MIB, fitted


def write_cost(run, case, variant, counter=TIME):
    """Mean cost per page written (the time column), or a counter of a model row."""
    bench = run.find("fork" if case.startswith(("parent_", "child_")) else "model", case, variant)
    return None if bench is None else bench.measure(counter)


def region_costs(run):
    """The lines of the write-cost chart that this run has the figures for."""
    costs = []
    anon4k_write = write_cost(run, "parent_write", "anon4k")

    def add(line, first, later, first_name, later_source):
        fork, fitted = region_fork_cost(run, line)
        if fork is not None and first is not None and later is not None:
            costs.append(RegionCost(line, fork, fitted, first, later, first_name, later_source))

    add(KERNEL_ANON4K, anon4k_write, anon4k_write, "", "parent_write/anon4k")
    add(KERNEL_THP, write_cost(run, "parent_write", "thp"), anon4k_write, "first",
        "parent_write/anon4k")
    add(KERNEL_HUGETLB, write_cost(run, "parent_write", "hugetlb2m"), Measure(0.0),
        "2 MiB copy", "")
    cow_pte_write = write_cost(run, "parent_write_cow_pte", "anon4k")
    add(KERNEL_COW_PTE, cow_pte_write, cow_pte_write, "", "parent_write_cow_pte/anon4k")
    cow_copy = write_cost(run, "cow_copy", "anon4k")
    add(MODEL_CLASSIC, cow_copy, cow_copy, "", "model/cow_copy")
    add(MODEL_EAGER, write_cost(run, "cow_pte_break", "copy_eager", "break_fault_ns"), cow_copy,
        "break", "model/cow_copy")
    add(MODEL_LAZY, write_cost(run, "cow_pte_break", "copy_lazy", "break_fault_ns"), cow_copy,
        "break", "model/cow_copy")
    return costs


def crossing(cow_pte, classic):
    """The k (0..512) from which the COW-PTE line is no cheaper than classic, or None. Both
    lines step at k = 1 (the first write) and are straight from there to 512."""
    at_fork, first, full = (cow_pte.cost_ns(k) - classic.cost_ns(k)
                            for k in (0, 1, PAGES_PER_REGION))
    if at_fork < 0 <= first:
        return 1
    if first < 0 <= full:
        return 1 + (PAGES_PER_REGION - 1) * first / (first - full)
    return None


def break_even(cow_pte, classic):
    """COW-PTE saves F_classic - F_cowpte on every region and pays B - W more on each region
    written at least once (B: its first write; W: classic's), whatever k: for k >= 1 the lines
    run parallel. It pays while the fraction of regions written before the child exits is below
    (F_classic - F_cowpte) / (B - W). None when the break costs no more than a copy."""
    saved = classic.fork - cow_pte.fork
    extra = cow_pte.first - classic.first
    if extra.value <= 0:
        return None
    return saved / extra


def break_even_text(cow_pte, classic, fraction):
    name = cow_pte.line.label
    if fraction is None:
        return (f"{name}: its first write costs no more than classic's, so it is never dearer "
                "than classic after the fork.")
    formula = (f"(F_classic − F) / (B − W) = ({format_ns(classic.fork.value)} − "
               f"{format_ns(cow_pte.fork.value)}) / ({format_ns(cow_pte.first.value)} − "
               f"{format_ns(classic.first.value)}) = {significant(fraction.value)} "
               f"± {format_percent(fraction.cv)}")
    return f"{name} pays {pays_when(fraction.value)}: break-even fraction {formula}."


def pays_when(fraction):
    """When COW-PTE pays, from its break-even fraction of regions written (break_even)."""
    if fraction >= 1:
        return "always (even when every 2 MiB region is written)"
    if fraction <= 0:
        return "never (its fork is not cheaper than classic's)"
    return (f"while under {format_percent(fraction)} of the 2 MiB regions are written before "
            "the child exits")


def cow_pte_pairs(costs):
    """(COW-PTE line, its classic counterpart) for each pair this run has both of."""
    by_line = {cost.line: cost for cost in costs}
    pairs = ((MODEL_EAGER, MODEL_CLASSIC), (MODEL_LAZY, MODEL_CLASSIC),
             (KERNEL_COW_PTE, KERNEL_ANON4K))
    return [(by_line[cow], by_line[classic]) for cow, classic in pairs
            if cow in by_line and classic in by_line]


def write_cost_chart(run, costs):
    if not costs:
        return None
    # k counts pages: the cost at k = 0 (fork only) holds until the first write at k = 1, so the
    # line steps there. From 1 on, a point at every k: on a log y axis a straight segment between
    # distant points would not be the linear cost.
    ks = [0, 1] + list(range(1, PAGES_PER_REGION + 1))
    series = [charts.Series(cost.legend(), x=ks,
                            y=[cost.cost_ns(0) / 1e3] * 2 + [cost.cost_ns(k) / 1e3 for k in ks[2:]],
                            color=cost.line.color, dashed=cost.line.dashed, markers=False)
              for cost in costs]
    marks, break_even_notes = [], []
    for cow_pte, classic in cow_pte_pairs(costs):
        k = crossing(cow_pte, classic)
        if k is not None:
            marks.append(charts.Mark(k, classic.cost_ns(k) / 1e3, f"k = {math.ceil(k)}"))
            break_even_notes.append(f"Marked k = {math.ceil(k)}: from there {cow_pte.line.label} "
                                    f"costs as much as {classic.line.label} or more.")
        if cow_pte.line.suite == "model":
            break_even_notes.append(
                break_even_text(cow_pte, classic, break_even(cow_pte, classic)))
    ranges = {}
    for cost in costs:
        size_range = f"{cost.fork_slope.low_mib:g}–{cost.fork_slope.high_mib:g} MiB"
        ranges.setdefault(size_range, []).append(cost.line.label)
    range_text = "; ".join(f"{size_range} for {', '.join(labels)}"
                           for size_range, labels in ranges.items())
    notes = [
        "Legend: F + the writes, in µs. F: the marginal fork latency of one 2 MiB region, the "
        "slope of fork latency between the smallest RSS of at least 2 MiB (a whole page table) "
        f"and the largest ({range_text}), times 2 MiB. This leaves out the cost of creating and "
        "reaping a process, which every size pays alike.",
    ]
    drawn = {cost.line for cost in costs}
    kernel_notes = {
        KERNEL_ANON4K: "kernel writes: the parent's write fault per 4 KiB page after fork "
                       "(parent_write/anon4k).",
        KERNEL_THP: "kernel thp: the first write splits the PMD (parent_write/thp); later writes "
                    "are assumed to be 4 KiB COW faults (parent_write/anon4k).",
        KERNEL_HUGETLB: "kernel hugetlb2m: one 2 MiB copy at the first write "
                        "(parent_write/hugetlb2m).",
    }
    notes += [note for line, note in kernel_notes.items() if line in drawn]
    if any(line.suite == "model" for line in drawn):
        notes.append("model writes: a COW copy fault (model/cow_copy); COW-PTE's first write in a "
                     "region breaks the shared table (cow_pte_break, break_fault_ns), later writes "
                     "are COW copy faults. Model figures are function calls, without the trap.")
    notes += break_even_notes
    if KERNEL_COW_PTE in drawn:
        notes.append("kernel anon4k, COW-PTE: W is the mean write per page over whole regions, so "
                     "the table break is spread over 512 writes: exact at k = 512, low for small "
                     "k.")
    # A log axis shows the model's microseconds beside the kernel's milliseconds; it cannot show
    # a cost of zero or below, which noise can give F.
    log_y = all(y > 0 for line in series for y in line.y)
    chart = charts.line_chart(
        series, title="Cost of a 2 MiB region: fork's share plus the 4 KiB pages written after "
                      f"fork\n{run.machine()}",
        x_label="4 KiB pages written after fork in the 2 MiB region (k, log scale above 1)",
        y_label=f"cost per 2 MiB region (µs{', log scale' if log_y else ''})", log_y=log_y,
        # The step at the first write and the lines after it are what matters; log k shows both.
        symlog_x=True, x_ticks=[0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        marks=marks, notes=notes)
    return charts.svg_bytes(chart)


# ---------------------------------------------------------------------------------------------
# fork_summary.txt

def summary_header(run):
    date = run.context.get("date")
    return [f"faultlab fork report: {run.machine()}" + (f"; run {date}" if date else "") +
            ". ±: cv of the repetitions (combined, for derived figures)."]


def kernel_latency_lines(run):
    """Per backing at its largest size, the floors, and the variants against plain anon4k."""
    largest_runs, skipped = [], []
    for line in LATENCY_LINES:
        if line.suite != "fork":
            continue
        name = line.label.removeprefix("kernel ")
        benches = [bench for bench in run.select(line.suite, line.case, line.variant)
                   if not bench.skipped]
        if not benches:
            if run.select(line.suite, line.case, line.variant):
                skipped.append(name)
            continue
        largest_runs.append((line, name, benches[-1]))
    sizes = {bench.rss_mib for _, _, bench in largest_runs}
    parts = []
    for line, name, largest in largest_runs:
        text = name if len(sizes) == 1 else f"{name} {size_text(largest.rss_mib)}"
        text += f" {with_spread(largest.measure())}"
        fork_call = largest.measure("fork_ns")
        if line == KERNEL_ANON4K and fork_call is not None:
            text += f" (fork call {with_spread(fork_call)})"
        parts.append(text)
    lines = []
    if parts or skipped:
        where = f"at {size_text(sizes.pop())}" if len(sizes) == 1 else "at the largest size"
        text = f"Kernel fork + exit + wait {where}: " + ", ".join(parts)
        if skipped:
            text += f"; {', '.join(skipped)} skipped"
        lines.append(text + ".")
    floors = [f"{variant} {with_spread(bench.measure())}"
              for case, variant, _ in FLOORS
              for bench in [run.find("fork", case, variant)]
              if bench is not None and not bench.skipped]
    anon4k = [bench for _, _, bench in largest_runs if bench.variant == "anon4k"]
    largest_anon4k = anon4k[0].rss_mib if anon4k else None
    ratios = []
    for case, variant, what in VARIANTS:
        for bench in run.select("fork", case, variant):
            plain = run.find("fork", "latency", "anon4k", rss_mib=bench.rss_mib)
            if bench.skipped or plain is None or plain.skipped:
                continue
            threads = bench.args.get("extra_threads")
            setting = what if threads is None else f"{threads} {what}"
            ratios.append(f"{setting} {times(bench.measure() / plain.measure())}"
                          + ("" if bench.rss_mib == largest_anon4k else
                             f" ({size_text(bench.rss_mib)})"))
    if floors:
        lines.append(f"  Floors: {', '.join(floors)}.")
    if ratios:
        lines.append(f"  Against anon4k: {', '.join(ratios)}.")
    return [""] + lines if lines else []


def model_speedup_lines(run):
    lazy = {bench.rss_mib: bench for bench in run.select("model", "fork", "cow_pte_lazy")}
    eager = {bench.rss_mib: bench for bench in run.select("model", "fork", "cow_pte_eager")}
    sizes = sorted(set(lazy) | set(eager))
    if not sizes:
        return []
    lines = ["", "Model COW-PTE speedup over classic (paired, same benchmark):",
             f"  {'RSS':>8}  {'lazy fork':<15}{'lazy fork+exit':<15}"
             f"{'eager fork':<15}eager fork+exit"]

    def cell(bench, counter):
        measure = None if bench is None else bench.measure(counter)
        return f"{'-' if measure is None else times(measure):<15}"

    for mib in sizes:
        row = f"  {size_text(mib):>8}  "
        for variant in (lazy, eager):
            bench = variant.get(mib)
            row += cell(bench, "speedup_vs_classic") + cell(bench, "speedup_fork_exit_vs_classic")
        lines.append(row.rstrip())
    return lines


def verdict(agrees, text_if_agrees, text_if_differs):
    return ("Agrees: " + text_if_agrees) if agrees else ("Differs: " + text_if_differs)


def series_lines(run):
    """faultlab's counterparts of the COW-PTE series' figures, and whether they agree."""
    target = SERIES_FORK_RSS_MIB
    before_ms, after_ms = SERIES_V2_FORK_MS
    lines = []
    # Each COW-PTE benchmark times a classic fork beside its own (classic_fork_ns): paired.
    lazy = at_size(points(run, MODEL_LAZY, "fork_ns"), target)
    lazy_classic = at_size(points(run, MODEL_LAZY, "classic_fork_ns"), target)
    if lazy and lazy_classic:
        cut = 1 - lazy.measure.value / lazy_classic.measure.value
        lines.append(
            f"  RFC v2 (lazy): {target} MB fork -{SERIES_V2_CUT:.0%} ({before_ms:g} -> "
            f"{after_ms:g} ms). Model lazy, {size_text(target)} ({lazy.source()}): "
            f"{format_ns(lazy_classic.measure.value)} -> {with_spread(lazy.measure)}, "
            f"-{format_percent(cut, 3)}. " + verdict(
                cut >= SERIES_V2_CUT, "only per-table work is left, as in v2.",
                "less, though only per-table work is left, as in v2: that work is dear here."))
    eager = at_size(points(run, MODEL_EAGER, "fork_ns"), target)
    eager_classic = at_size(points(run, MODEL_EAGER, "classic_fork_ns"), target)
    if eager and eager_classic:
        speedup = eager_classic.measure / eager.measure
        lines.append(
            f"  v3-v5 (eager): about unchanged. Model eager: {times(speedup)} faster. " + verdict(
                abs(speedup.value - 1) <= UNCHANGED_WITHIN,
                "it still takes every page's reference at fork.",
                "it still takes every page's reference but copies no entries, which weigh more "
                "in the model than in the series' kernel."))
    kernel = at_size(points(run, KERNEL_ANON4K, "fork_ns"), target)
    if kernel:
        factor = kernel.measure.value / (before_ms * 1e6)
        text = (f"  Kernel before COW-PTE: ~{before_ms:g} ms; fork call here "
                f"({kernel.source()}): {with_spread(kernel.measure)}. ")
        text += verdict(1 / TIME_AGREES_WITHIN <= factor <= TIME_AGREES_WITHIN,
                        f"{significant(factor)}x; QEMU's slowdown is in the series' figure, so "
                        "only ratios compare closely.",
                        f"{significant(max(factor, 1 / factor))}x "
                        f"{'faster' if factor < 1 else 'slower'}; the series ran in QEMU (TCG or "
                        "nested paging) elsewhere, this shared VM varies: compare ratios.")
        cow = at_size(points(run, KERNEL_COW_PTE, "fork_ns"), target)
        if cow:
            text += (f" Kernel COW-PTE (prctl): {with_spread(cow.measure)}, "
                     f"-{format_percent(1 - cow.measure.value / kernel.measure.value, 3)}.")
        lines.append(text)
    lines += page_table_lines(run)
    if not lines:
        return []
    return ["", "Beside the COW-PTE series (Chih-En Lin; measured in QEMU):", *lines]


def page_table_lines(run):
    before, after = SERIES_CHILD_PT_KB
    target = SERIES_PT_RSS_MIB
    lines = []
    child = at_size(points(run, KERNEL_ANON4K, "child_vmpte_kb"), target)
    parent = at_size(points(run, KERNEL_ANON4K, "parent_vmpte_kb"), target)
    if child and parent:
        off = abs(child.measure.value / before - 1)
        region_kb = KB_PER_MIB / REGION_MIB * PTE_TABLE_KB
        why = f"VmPTE counts every table: {PTE_TABLE_KB} kB per 2 MiB = {region_kb:.0f} kB/GiB"
        own = faultlab_own_vmpte_kb(run)
        if own is not None:
            why += f" + faultlab's own {own:.0f} kB"
        lines.append(
            f"  Child page tables, 1 GB: {before} -> {after} kB. Kernel here, "
            f"{size_text(target)} ({child.source()}): child VmPTE {kb(child.measure)}, parent "
            f"{kb(parent.measure)}. " + verdict(
                off <= PT_KB_AGREES_WITHIN, f"{format_percent(off)} off; {why}.",
                f"{format_percent(off)} off; {why}, and the series' process had other mappings."))
    classic = at_size(points(run, MODEL_CLASSIC, "child_pt_bytes"), target)
    lazy_owned = at_size(points(run, MODEL_LAZY, "child_pt_owned_bytes"), target)
    if classic and lazy_owned:
        classic_kb = classic.measure / KB_PER_MIB
        owned_kb = lazy_owned.measure / KB_PER_MIB
        kept = owned_kb.value / classic_kb.value
        series_kept = after / before
        reason = "the series counts no shared table to the child"
        shared = at_size(points(run, MODEL_LAZY, "child_shared_pte_tables"), target)
        lazy_all = at_size(points(run, MODEL_LAZY, "child_pt_bytes"), target)
        if shared and lazy_all:
            unshared_kb = (lazy_all.measure.value / KB_PER_MIB -
                           shared.measure.value * PTE_TABLE_KB)
            reason += f"; so counted, {unshared_kb:.0f} kB"
        lines.append(
            f"  Model child, {size_text(target)}: {kb(classic_kb)} classic, {kb(owned_kb)} lazy "
            f"(shared tables at 1/refcount): {format_percent(kept)} kept, series "
            f"{format_percent(series_kept)}. " +
            verdict(abs(kept - series_kept) <= PT_KB_AGREES_WITHIN,
                    "about as much as the series' child.", reason + "."))
    return lines


def faultlab_own_vmpte_kb(run):
    """The child's VmPTE when the region's tables are not copied (shared memory and read-only
    files are refaulted, not copied; MADV_DONTFORK leaves the region out): faultlab's own."""
    found = [bench.measure("child_vmpte_kb") for bench in run.benchmarks
             if bench.suite == "fork" and not bench.skipped and
             (bench.case, bench.variant) in (("latency", "shmem"), ("latency", "file_ro"),
                                             ("latency_dontfork", "anon4k"))]
    found = [measure.value for measure in found if measure is not None]
    return min(found) if found else None


def per_entry_lines(run):
    """The marginal fork call per 4 KiB page, kernel against model (both: the slope between the
    smallest and the largest size)."""
    kernel = slope(points(run, KERNEL_ANON4K, "fork_ns"))
    model = slope(points(run, MODEL_CLASSIC, "fork_ns"))
    if kernel is None or model is None:
        return []
    kernel_entry = kernel.per_mib / PAGES_PER_MIB
    model_entry = model.per_mib / PAGES_PER_MIB
    head = (f"Fork call per 4 KiB entry (slope, {kernel.low_mib:g}-{kernel.high_mib:g} MiB): "
            f"kernel {with_spread(kernel_entry)}, model classic {with_spread(model_entry)}")
    if kernel_entry.value <= 0 or model_entry.value <= 0:
        return ["", head + ": no ratio, a fork call did not grow with the size."]
    ratio = kernel_entry / model_entry
    if ratio.value <= 1:
        return ["", f"{head}: {times(ratio)}. The model leaves out the kernel's rmap, locks and "
                    "struct page work, yet is not cheaper per entry: look at it."]
    return ["", f"{head}: {times(ratio)}. Not the trap (once per fork): per entry the kernel "
                "adds the PTE lock (per table), folio_try_dup_anon_rmap + folio_get, "
                "ptep_set_wrprotect on the parent (a locked RMW), rss counters and struct "
                "page/folio cache lines; the model, two atomic refcounts and plain stores. Likely "
                "sources of the ratio; this run does not split it."]


def write_cost_lines(run, costs):
    if not costs:
        return []
    terms = []
    for cost in costs:
        name = cost.line.label.removeprefix("kernel ").removeprefix("model COW-PTE ")
        text = f"{name} {with_spread(cost.fork)}"
        if not cost.first_name:
            text += f" + k×{format_ns(cost.later.value)} ±{format_percent(cost.later.cv)}"
        else:
            text += f" + {with_spread(cost.first)} {cost.first_name}"
            if cost.line == KERNEL_THP:
                text += " (assumed: it splits the PMD, later writes are 4 KiB COW faults"
                huge_after = write_cost(run, "parent_write", "thp", "thp_kb_after")
                if huge_after is not None:
                    text += f"; thp_kb_after {huge_after.value:.0f} kB"
                text += ")"
            if cost.later.value:
                text += f" + (k-1)×{format_ns(cost.later.value)}"
        terms.append(text)
    lines = ["", "Per 2 MiB region, F + k pages written after fork (F: fork latency slope from "
                 "2 MiB or more to the largest size, x 2 MiB): " + "; ".join(terms) + "."]
    fractions = []
    for cow_pte, classic in cow_pte_pairs(costs):
        k = crossing(cow_pte, classic)
        if k is not None:
            lines.append(f"  {cow_pte.line.label} costs as much as {classic.line.label} from "
                         f"k = {math.ceil(k)}.")
        fraction = break_even(cow_pte, classic) if cow_pte.line.suite == "model" else None
        if fraction is not None:
            name = cow_pte.line.label.removeprefix("model COW-PTE ")
            fractions.append((name, fraction))
    if fractions:
        text = ("  COW-PTE pays while the fraction of regions written is below (F_classic - F) "
                "/ (B - W): " + ", ".join(f"{name} {significant(f.value)} "
                                          f"±{format_percent(f.cv)}: {pays_when(f.value)}"
                                          for name, f in fractions))
        lines.append(text + ".")
    return lines


def spread_lines(run):
    """The worst cv of fork latency per series; how many fork rows repeat within REPEATABLE_CV,
    and the repetitions of those that do not (one odd repetition reads differently from a
    spread-out row)."""
    groups = [(line.label.removeprefix("model COW-PTE "),
               [bench for bench in run.select(line.suite, line.case, line.variant)
                if not bench.skipped])
              for line in LATENCY_LINES]
    groups += [(variant if case == "latency_floor" else case.removeprefix("latency_"),
                [bench for bench in run.select("fork", case, variant) if not bench.skipped])
               for case, variant, _ in VARIANTS + FLOORS]
    worst_per_group = [(label, max(benches, key=lambda bench: bench.measure().cv))
                       for label, benches in groups if benches]
    if not worst_per_group:
        return []
    texts = [f"{label} {format_percent(bench.measure().cv)}" for label, bench in worst_per_group]
    rows = [bench for _, benches in groups for bench in benches]
    missed = sorted((bench for bench in rows if bench.measure().cv > REPEATABLE_CV),
                    key=lambda bench: -bench.measure().cv)
    lines = ["", "Largest cv of fork latency: " + ", ".join(texts) + ".",
             f"fork figures repeat within {REPEATABLE_CV:.0%}: "
             f"{'no' if missed else 'yes'} ({len(rows) - len(missed)} of {len(rows)} rows)"]
    shown = 5
    for bench in missed[:shown]:
        text = (f"  {bench.short_name} {format_percent(bench.measure().cv)}: "
                + ", ".join(format_ns(value) for value in bench.values(TIME)))
        reference = bench.measure("reference_ns")
        if reference is not None:
            text += f"; reference loop ±{format_percent(reference.cv)}"
        lines.append(text)
    if len(missed) > shown:
        lines.append(f"  and {len(missed) - shown} more (fork.csv has every row's spread)")
    if any(bench.measure("reference_ns") is not None for bench in missed[:shown]):
        lines.append("  The reference loop is a fixed CPU loop timed between the forks: where it "
                     "moves as much as the row, the CPU's speed changed (in a VM, the host's load "
                     "or clock); where it stays, the variation is in the fork path or the memory "
                     "behind it.")
    model_missed = [bench for bench in missed if bench.half == "model"]
    if model_missed and len(model_missed) < len(missed):
        rows = "row" if len(model_missed) == 1 else "rows"
        lines.append(f"  The model's forks, which run no kernel code, miss too ({len(model_missed)} "
                     f"{rows}): what varies is under both halves (the memory behind them, the host), "
                     "not only the kernel's fork path.")
    if missed and len(run.run_cpus()) > 1:
        # Measured here (a KVM guest): with the child free to run on the other vCPU, small forks
        # were bimodal (~0.17 or ~0.42 ms a fork, in runs), as waking a halted vCPU costs the
        # host's wake-up or nothing, depending on its halt polling; on one CPU they repeated
        # within 0.2-7%.
        lines.append(f"  Parent and child could run on {len(run.run_cpus())} CPUs: a wake-up of an "
                     "idle CPU (in a VM, of a halted vCPU) is in child_runs_ns and exit_wait_ns and "
                     "varies. `--cpu C` keeps both on one CPU, which takes it out (child_runs_ns "
                     "then counts until the parent yields).")
    return lines


def missing_lines(run, costs):
    kernel = any(bench.suite == "fork" for bench in run.benchmarks)
    model_fork = any((bench.suite, bench.case) == ("model", "fork") for bench in run.benchmarks)
    lines = []
    if not kernel:
        lines.append("Kernel rows (the fork suite) are missing from this run: "
                     f"{KERNEL_RUN_COMMAND}")
    if not model_fork:
        lines.append(f"Model rows (model/fork) are missing from this run: {MODEL_RUN_COMMAND}")
    elif not any(cost.line.suite == "model" for cost in costs):
        lines.append("Model write costs (model/cow_copy, model/cow_pte_break) are missing, so the "
                     f"model has no line in fork_write_cost.svg: {MODEL_RUN_COMMAND}")
    return [""] + lines if lines else []


def summary_text(run, benchmarks, costs, charts_left_out):
    lines = summary_header(run)
    lines += missing_lines(run, costs)
    lines += kernel_latency_lines(run)
    lines += model_speedup_lines(run)
    lines += series_lines(run)
    lines += per_entry_lines(run)
    lines += write_cost_lines(run, costs)
    lines += spread_lines(run)
    lines += skipped_lines(benchmarks, size_arg="rss_mib")
    if charts_left_out:
        lines += ["", *charts_left_out]
    return "\n".join(wrap(line) for line in lines) + "\n"


# ---------------------------------------------------------------------------------------------

def report_benchmarks(run):
    """The benchmarks this report covers: the fork suite, and the model cases fork needs."""
    return [bench for bench in run.benchmarks
            if bench.suite == "fork" or (bench.suite == "model" and bench.case in MODEL_CASES)]


def applies(run):
    """Whether the run has rows for this report."""
    return any(bench.suite == "fork" or (bench.suite, bench.case) == ("model", "fork")
               for bench in run.benchmarks)


def report_files(run):
    """The fork report of a loaded run: (summary, {file name: bytes}). Raises BadInput."""
    if not applies(run):
        raise BadInput(f"{run.directory / 'results.json'}: no fork or model/fork rows (run "
                       f"{KERNEL_RUN_COMMAND}, or {MODEL_RUN_COMMAND})")
    benchmarks = report_benchmarks(run)
    costs = region_costs(run)
    files = {"fork.csv": benchmarks_csv(benchmarks, first_args=("rss_mib",)).encode()}
    left_out = []
    latency_svg = latency_chart(run, LATENCY_LINES)
    if latency_svg is None:
        left_out.append("fork_latency.svg not written: no fork latency row ran.")
    else:
        files["fork_latency.svg"] = latency_svg
    write_cost_svg = write_cost_chart(run, costs)
    if write_cost_svg is None:
        left_out.append("fork_write_cost.svg not written: no series has both fork latency at two "
                        "sizes of at least 2 MiB and its write cost after fork.")
    else:
        files["fork_write_cost.svg"] = write_cost_svg
    summary = summary_text(run, benchmarks, costs, left_out)
    files["fork_summary.txt"] = summary.encode()
    return summary, files


def write_report(directory):
    """Writes the fork report into directory; returns the summary and the files written. Raises
    BadInput."""
    return write_kind_report(report_files, directory)
