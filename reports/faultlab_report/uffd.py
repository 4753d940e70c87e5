"""`faultlab report uffd DIR`: userfaultfd round trips on the real kernel (suite uffd) beside the
model's, and guard regions against mprotect (suite guard), from DIR/results.json. Writes into DIR:

- uffd.csv: one row per benchmark of suites uffd and guard and of the model cases beside them;
- uffd_round_trip.svg: the median round trip of each case and memory type, one bar per handler
  mode and one for the model;
- uffd_summary.txt: the round trips and where their time goes, continue against copy, faults on
  markers a zap left against faults on none entries, write-protecting unpopulated ranges, move
  against copy, the faults the kernel answers without a handler (poison, async wp), the handler
  against its floor and against the minimal handler, the kernel against the model, guard regions against mprotect, and what was
  skipped (also returned, for printing).

Every number comes from the run; the only constants are the names of the cases and the issue's
target for the handler (at most 10% over its floor), which the report also applies to the handler
against the minimal handler.
"""

from dataclasses import dataclass

from . import charts
from .results import BadInput, benchmarks_csv, write_kind_report
from .text import format_ns, format_percent, significant, skipped_lines, times, with_spread, wrap

# The kernel's cases in the order the chart and the summary show them, with the memory types
# each runs on.
CASES = (("missing_copy", ("anon4k", "shmem", "hugetlb2m")),
         ("missing_zeropage", ("anon4k", "shmem", "hugetlb2m")),
         ("minor_continue", ("shmem", "hugetlb2m")),
         ("wp", ("anon4k", "shmem", "hugetlb2m")),
         ("wp_marker", ("shmem", "hugetlb2m")),
         ("wp_unpopulated", ("anon4k", "shmem", "hugetlb2m")),
         ("move", ("anon4k",)))
MODES = ("same_cpu", "other_cpu", "sigbus")
MODE_COLORS = {"same_cpu": "C0", "other_cpu": "C1", "sigbus": "C2"}
MODEL_COLOR = "C7"

# The model case that does what a kernel case does, without the trap: (case, memory) ->
# (model case, variant, detail). The model's uffd handler runs in the faulting thread.
MODEL_BESIDE = {
    ("missing_copy", "anon4k"): ("uffd", "missing_copy", "anon4k"),
    ("missing_copy", "shmem"): ("uffd", "missing_copy", "shmem"),
    ("missing_zeropage", "anon4k"): ("uffd", "missing_zeropage", "anon4k"),
    ("missing_zeropage", "shmem"): ("uffd", "missing_zeropage", "shmem"),
    ("minor_continue", "shmem"): ("uffd", "minor_continue", "shmem"),
    ("wp_marker", "shmem"): ("marker_fault", "uffd_wp", ""),
}
# The model's cases that suites uffd and guard run beside theirs (bench/model_suite.h).
MODEL_CASES = ("uffd", "uffd_wp", "marker_fault", "marker_scan", "zap", "guard", "zeropage_read",
               "write_after_zeropage")

# The target: a thread handler adds at most 10% over the floor of its mode; the same bound
# for the handler against the minimal handler (a blocking read(), nothing else).
HANDLER_TARGET = 1.10

RUN_COMMAND = "./scripts/faultlab run --suite uffd,guard"


@dataclass
class RoundTrip:
    """One kernel row: its case, memory, mode, and the benchmark."""
    case: str
    memory: str
    mode: str
    bench: object


def median_round_trip(bench):
    """A kernel row's median event per repetition (p50_ns), mean and spread over the
    repetitions; the time column's mean where a row has no p50_ns."""
    return bench.measure("p50_ns") or bench.measure()


def model_median(bench):
    """A model row's median per operation (median_ns), or its time column's mean."""
    return bench.measure("median_ns") or bench.measure()


def round_trips(run):
    """Every uffd row that ran, keyed by (case, memory, mode)."""
    found = {}
    for bench in run.benchmarks:
        if bench.suite == "uffd" and not bench.skipped and bench.args.get("handler") in MODES:
            found[(bench.case, bench.variant, bench.args["handler"])] = bench
    return found


def model_row(run, case, memory, skipped=False):
    """The model's row beside a kernel case, if it ran (or, with skipped, also if it skipped)."""
    beside = MODEL_BESIDE.get((case, memory))
    if beside is None:
        return None
    model_case, variant, detail = beside
    for bench in run.benchmarks:
        if (bench.suite, bench.case, bench.variant, bench.detail) == ("model", model_case, variant,
                                                                       detail):
            return bench if skipped or not bench.skipped else None
    return None


def categories(run, found):
    """(case, memory) pairs that have a kernel row or a model row, in CASES order."""
    pairs = []
    for case, memories in CASES:
        for memory in memories:
            if any((case, memory, mode) in found for mode in MODES) or model_row(run, case, memory):
                pairs.append((case, memory))
    return pairs


# ---------------------------------------------------------------------------------------------
# uffd_round_trip.svg

def round_trip_chart(run, found, pairs):
    """Median round trip per case and memory, a bar per handler mode and for the model; the error
    bars span the repetitions' medians."""
    if not pairs:
        return None
    bars = []
    for mode in MODES:
        values, low, high = [], [], []
        for case, memory in pairs:
            bench = found.get((case, memory, mode))
            medians = bench.values("p50_ns") if bench else []
            values.append(median_round_trip(bench).value / 1e3 if medians else None)
            low.append(min(medians) / 1e3 if medians else None)
            high.append(max(medians) / 1e3 if medians else None)
        if any(value is not None for value in values):
            bars.append(charts.Bars(f"kernel, handler {mode}", values, low, high,
                                    color=MODE_COLORS[mode]))
    model_values = []
    for case, memory in pairs:
        bench = model_row(run, case, memory)
        measure = model_median(bench) if bench else None
        model_values.append(measure.value / 1e3 if measure else None)
    if any(value is not None for value in model_values):
        bars.append(charts.Bars("model (no trap; handler in the faulting thread)", model_values,
                                color=MODEL_COLOR, hatched=True))
    notes = [f"Kernel bars: the median fault of each repetition, averaged over repetitions; "
             f"error bars span the repetitions. {run.machine()}.",
             "same_cpu / other_cpu: a handler thread polling the descriptor on the faulting "
             "thread's CPU or another; sigbus: UFFD_FEATURE_SIGBUS, resolved in the faulting "
             "thread's signal handler."]
    if any(value is not None for value in model_values):
        notes.append("Model: the same resolution as a function call in the faulting thread "
                     "(median per fault): what the fast path costs without the trap, the "
                     "wake-ups and the syscalls.")
    chart = charts.bar_chart(
        [f"{case} {memory}" for case, memory in pairs], bars, log=True,
        title="userfaultfd round trip: fault, handler, ioctl, the faulting thread resumes",
        value_label="µs per fault (median; log scale)", notes=notes)
    return charts.svg_bytes(chart)


# ---------------------------------------------------------------------------------------------
# uffd_summary.txt

def summary_header(run):
    date = run.context.get("date")
    return [f"faultlab uffd report: {run.machine()}" + (f"; run {date}" if date else "") +
            ". Round trips: the median fault of a repetition, mean over repetitions ± their cv."]


def round_trip_lines(run, found, pairs):
    if not pairs:
        return []
    lines = ["", "Round trip per fault (kernel), by handler mode; the model beside it:"]
    for case, memory in pairs:
        parts = []
        for mode in MODES:
            bench = found.get((case, memory, mode))
            if bench:
                parts.append(f"{mode} {with_spread(median_round_trip(bench))}")
        model = model_row(run, case, memory)
        model_measure = model_median(model) if model else None
        if model_measure:
            text = f"model {format_ns(model_measure.value)}"
            fastest = min((median_round_trip(found[(case, memory, mode)]).value
                           for mode in MODES if (case, memory, mode) in found), default=None)
            if fastest:
                text += f" (the fastest kernel mode is {significant(fastest / model_measure.value)}x)"
            parts.append(text)
        elif model_row(run, case, memory, skipped=True) and parts:
            # The kernel ran what the model refuses: the model is wrong there, say so.
            parts.append(f"the model skipped it ({model_row(run, case, memory, True).skipped}), "
                         "which the kernel does not")
        lines.append(f"  {case} {memory}: " + ("; ".join(parts) if parts else "no row ran") + ".")
    return lines


def split_lines(found, pairs):
    """Where a same_cpu round trip goes: to the handler, the ioctl alone, back."""
    lines = []
    for case, memory in pairs:
        bench = found.get((case, memory, "same_cpu"))
        if not bench:
            continue
        figures = {name: bench.measure(name) for name in
                   ("to_handler_ns", "ioctl_alone_ns", "to_resume_ns", "trap_ns", "resumed_first")}
        if figures["to_handler_ns"] is None or figures["ioctl_alone_ns"] is None:
            continue
        text = (f"  {case} {memory}: to the handler {format_ns(figures['to_handler_ns'].value)}, "
                f"the ioctl alone {format_ns(figures['ioctl_alone_ns'].value)}")
        if figures["to_resume_ns"] is not None:
            text += f", back to the faulting thread {format_ns(figures['to_resume_ns'].value)}"
        if figures["resumed_first"] is not None and figures["resumed_first"].value > 0.5:
            text += (f" (the faulting thread ran before the handler's stamp in "
                     f"{format_percent(figures['resumed_first'].value)} of faults: the split is "
                     "blurred, the ioctl alone is not)")
        lines.append(text + ".")
    if lines:
        lines.insert(0, "")
        lines.insert(1, "Split of the same_cpu round trip (medians):")
    return lines


def titled(heading, lines):
    """A summary section: a blank line, its heading, its lines; nothing when it has no lines."""
    return ["", heading, *lines] if lines else []


def against_copy(found, case, memory, counter):
    """'same_cpu 0.886x ±1.4% (11% saved)' per mode: a case's round trip over the copy rounds
    beside it (counter: continue_vs_copy, move_vs_copy)."""
    parts = []
    for mode in MODES:
        bench = found.get((case, memory, mode))
        ratio = bench.measure(counter) if bench else None
        if ratio is not None and ratio.value > 0:
            change = 1 - ratio.value
            parts.append(f"{mode} {times(ratio)} ({format_percent(abs(change))} "
                         f"{'saved' if change >= 0 else 'more'})")
    return parts


def continue_lines(found):
    """minor_continue against missing_copy on the same memory, per mode."""
    lines = [f"  {memory}: " + ", ".join(parts) + "."
             for memory in ("shmem", "hugetlb2m")
             if (parts := against_copy(found, "minor_continue", memory, "continue_vs_copy"))]
    return titled("UFFDIO_CONTINUE against UFFDIO_COPY on the same pages, same run (round trip "
                  "medians): the page is in the cache already, so no copy and no allocation, the "
                  "saving the minor-fault series was written for.", lines)


def zeropage_lines(found):
    """UFFDIO_ZEROPAGE's round trip against a plain read fault that maps the zero page (trap_ns:
    measured in the same benchmark run)."""
    lines = []
    for memory in ("anon4k", "shmem"):
        trap = next((bench.measure("trap_ns") for (case, mem, _), bench in found.items()
                     if (case, mem) == ("missing_zeropage", memory)
                     and bench.measure("trap_ns") is not None), None)
        parts = []
        for mode in MODES:
            bench = found.get(("missing_zeropage", memory, mode))
            if bench and trap is not None:
                parts.append(f"{mode} {times(median_round_trip(bench) / trap)}")
        if parts:
            text = (f"  {memory}: a read fault mapping the zero page takes "
                    f"{format_ns(trap.value)}; the round trip takes " + ", ".join(parts) + " that")
            after = found.get(("missing_zeropage", memory, "same_cpu"))
            write_after = after.measure("write_after_ns") if after else None
            if write_after is not None:
                text += f"; a write to the page afterwards {format_ns(write_after.value)}"
            lines.append(text + ".")
    return titled("UFFDIO_ZEROPAGE round trip against a read fault that maps the zero page without "
                  "userfaultfd (same run):", lines)


def faults_per_round_trip(bench):
    """page-faults per round trip (counted rounds), as text, if the run counted them."""
    faults = bench.measure("page-faults") if bench else None
    return f"{faults.value:.1f}" if faults is not None else None


def marker_lines(run, found):
    """wp_marker: a write on the uffd-wp marker a zap left, against the same write on a none
    entry (marker_vs_none, none_fault_ns: rounds of the same benchmark)."""
    lines = []
    for memory in ("shmem", "hugetlb2m"):
        parts = []
        for mode in MODES:
            bench = found.get(("wp_marker", memory, mode))
            ratio = bench.measure("marker_vs_none") if bench else None
            none = bench.measure("none_fault_ns") if bench else None
            if ratio is None or none is None or ratio.value <= 0:
                continue
            text = (f"{mode} {format_ns(median_round_trip(bench).value)}, {times(ratio)} the none "
                    f"entry's {format_ns(none.value)}")
            if faults := faults_per_round_trip(bench):
                text += f" ({faults} page faults per round trip)"
            parts.append(text)
        if parts:
            lines.append(f"  {memory}: " + "; ".join(parts) + ".")
    model = model_row(run, "wp_marker", "shmem")
    if lines and model:
        lines.append(f"  Model, a write on a uffd-wp marker of shmem through its in-process "
                     f"handler: {format_ns(model_median(model).value)}.")
    return titled("Write-protection kept across MADV_DONTNEED as a PTE marker (pagemap: not present "
                  "with the uffd-wp bit, checked before every round): the next write's round trip "
                  "against the same write on a none entry (an ordinary fault mapping the cached "
                  "page, no event), same run. The marker's round trip is two faults: the first "
                  "maps the page write-protected, the retried write raises the WP fault.", lines)


def unpopulated_lines(found):
    """wp_unpopulated: UFFDIO_WRITEPROTECT of never-populated ranges (markers on none entries) and
    the first write's round trip, against wp on populated pages."""
    lines = []
    for memory in ("anon4k", "shmem", "hugetlb2m"):
        bench = found.get(("wp_unpopulated", memory, "same_cpu"))
        populated = found.get(("wp", memory, "same_cpu"))
        if bench is None:
            continue
        text = f"  {memory}: same_cpu {format_ns(median_round_trip(bench).value)}"
        if populated is not None:
            text += (f" ({times(median_round_trip(bench) / median_round_trip(populated))} wp on a "
                     "populated page)")
        protect = bench.measure("protect_ns_per_page")
        if protect is not None:
            unit = "2 MiB page" if memory == "hugetlb2m" else "4 KiB page"
            text += f"; UFFDIO_WRITEPROTECT {format_ns(protect.value)} per {unit} protected"
        if bench.label_field("markers"):
            text += f" (markers through {bench.label_field('markers')})"
        lines.append(text + ".")
    return titled("Write-protecting unpopulated ranges (a marker in each none entry): the first "
                  "write allocates and zeroes the page and maps it protected, then raises the WP "
                  "fault; both are in the round trip.", lines)


def move_lines(found):
    """move against missing_copy on the same pages, per mode (move_vs_copy)."""
    parts = against_copy(found, "move", "anon4k", "move_vs_copy")
    if not parts:
        return []
    return ["", "UFFDIO_MOVE against UFFDIO_COPY on the same anonymous pages, same run (round trip "
                "medians; the source page is moved, not copied): " + ", ".join(parts) + "."]


def no_handler_lines(run):
    """The faults the kernel answers without a handler: a read of a UFFDIO_POISON marker (SIGBUS),
    and a write under UFFD_FEATURE_WP_ASYNC, with PAGEMAP_SCAN's cost."""
    lines = []
    for poison in run.select("uffd", "poison", "anon4k"):
        if poison.skipped:
            continue
        text = (f"  poison anon4k: a read of a UFFDIO_POISON marker, SIGBUS "
                f"({poison.label_field('si_code')}) to the signal handler and back "
                f"{with_spread(median_round_trip(poison))}")
        guard = next((bench for bench in run.select("guard", "fault", "anon4k")
                      if not bench.skipped), None)
        if guard is not None:
            text += f" (a guard marker's SIGSEGV: {format_ns(median_round_trip(guard).value)})"
        per_page = poison.measure("poison_ns_per_page")
        if per_page is not None:
            text += f"; UFFDIO_POISON {format_ns(per_page.value)} per page"
        model = run.find("model", "marker_fault", "poison")
        if model is not None and not model.skipped:
            text += f"; model {format_ns(model_median(model).value)}"
        lines.append(text + ".")
    for memory in ("anon4k", "shmem"):
        for bench in run.select("uffd", "wp_async", memory):
            if bench.skipped:
                continue
            text = (f"  wp_async {memory}: a write to a protected page, resolved by the kernel "
                    f"with no event {with_spread(median_round_trip(bench))}")
            handled = run.find("uffd", "wp", memory, handler="same_cpu")
            if handled is not None and not handled.skipped:
                text += (f" (wp through a same_cpu handler takes "
                         f"{times(median_round_trip(handled) / median_round_trip(bench))} that)")
            scan = bench.measure("scan_ns_per_page")
            if scan is not None:
                text += (f"; PAGEMAP_SCAN finding the written pages and protecting them again "
                         f"{format_ns(scan.value)} per page scanned")
            lines.append(text + ".")
    return titled("Faults the kernel answers itself, no handler (median per fault, mean over "
                  "repetitions ± their cv):", lines)


def ratio_rows(found, counter):
    """(key, measure) of a handler ratio per thread-mode row that has it, split into the measured
    ones and the keys of those at zero or below (which measured nothing)."""
    rows = [(key, bench.measure(counter)) for key, bench in found.items()
            if key[2] != "sigbus" and bench.measure(counter) is not None]
    return ([(key, ratio) for key, ratio in rows if ratio.value > 0],
            [key for key, ratio in rows if ratio.value <= 0])


def verdict_lines(heading, measured):
    """A heading ending in how many rows meet the handler target, then each row's ratio and
    verdict, the largest first."""
    met = [key for key, ratio in measured if ratio.value <= HANDLER_TARGET]
    lines = ["", f"{heading}: {len(met)} of {len(measured)} rows meet it."]
    for (case, memory, mode), ratio in sorted(measured, key=lambda row: -row[1].value):
        lines.append(f"  {case} {memory} {mode}: {significant(ratio.value)} "
                     f"{'met' if ratio.value <= HANDLER_TARGET else 'missed'}")
    return lines


def handler_lines(found):
    """handler_vs_floor and handler_vs_minimal per thread-mode row, against the issue's target."""
    lines = []
    # A floor ratio of zero or less means the ioctl alone took longer than the whole round trip:
    # the subtraction says nothing of the handler then.
    measured, unmeasured = ratio_rows(found, "handler_vs_floor")
    if measured or unmeasured:
        lines += verdict_lines(
            f"Handler against its floor (target <= {HANDLER_TARGET:.2f}; (round trip - the ioctl "
            "alone - a zero-page fault's trap) / an eventfd ping-pong between two threads pinned "
            "the same way, all medians of the same run)", measured)
        if unmeasured:
            lines.append("  Not measured, the ioctl alone took longer than the round trip: " +
                         ", ".join(" ".join(key) for key in sorted(unmeasured)) + ".")
        if any(mode == "same_cpu" and ratio.value > HANDLER_TARGET
               for (_, _, mode), ratio in measured):
            lines.append("  Why same_cpu misses its floor (profiled once with perf: the excess "
                         "is in the kernel's fault path, not in the handler): see README.md, "
                         "section \"The `uffd` suite\".")
    measured, _ = ratio_rows(found, "handler_vs_minimal")
    if measured:
        lines += verdict_lines(
            f"Handler against the minimal handler (target <= {HANDLER_TARGET:.2f}; the round "
            "trip / the same faults answered by a thread that only blocks in read() on the "
            "descriptor, rounds alternated on the same pages, medians of the same run)", measured)
    return lines


def guard_lines(run):
    """Guard markers against mprotect(PROT_NONE): per page, the VMAs left, the SIGSEGV."""
    rows = [bench for bench in run.benchmarks if bench.suite == "guard" and not bench.skipped]
    if not rows:
        return []
    lines = ["", "Guard regions (MADV_GUARD_INSTALL/REMOVE) against mprotect(PROT_NONE), median per "
                 "call of one guard page (a fault: the SIGSEGV's round trip):"]
    for operation in ("install", "remove", "fault"):
        for guard in [bench for bench in rows if bench.case == operation]:
            twin = run.find("guard", f"{operation}_mprotect", guard.variant,
                            **{key: value for key, value in guard.args.items()
                               if key not in ("iterations", "repeats")})
            if twin is None or twin.skipped:
                continue
            label = "/".join(f"{key}:{value}" for key, value in guard.args.items()
                             if key not in ("iterations", "repeats", "rounds"))
            ours, theirs = median_round_trip(guard), median_round_trip(twin)
            text = (f"  {operation} {label}: guard {with_spread(ours)}, mprotect "
                    f"{with_spread(theirs)} ({times(theirs / ours)} the guard's)")
            vmas, twin_vmas = guard.measure("vmas_after"), twin.measure("vmas_after")
            if operation == "install" and vmas is not None and twin_vmas is not None:
                text += f"; VMAs left {vmas.value:.0f} against {twin_vmas.value:.0f}"
            lines.append(text + ".")
    model = {name: run.find("model", case, variant)
             for name, case, variant in (("install", "guard", "install"),
                                         ("remove", "guard", "remove"),
                                         ("a fault on a guard marker", "marker_fault", "guard"))}
    model_parts = [f"{name} {format_ns(model_median(bench).value)}"
                   for name, bench in model.items() if bench and not bench.skipped]
    if model_parts:
        lines.append("  Model, per page (no trap, no syscall): " + ", ".join(model_parts) + ".")
    return lines


def summary_text(run, benchmarks, found, pairs, left_out):
    lines = summary_header(run)
    if not found:
        lines += ["", f"No uffd row ran (run {RUN_COMMAND})."]
    lines += round_trip_lines(run, found, pairs)
    lines += split_lines(found, pairs)
    lines += continue_lines(found)
    lines += zeropage_lines(found)
    lines += marker_lines(run, found)
    lines += unpopulated_lines(found)
    lines += move_lines(found)
    lines += no_handler_lines(run)
    lines += handler_lines(found)
    lines += guard_lines(run)
    lines += skipped_lines(benchmarks, size_arg="pages")
    if left_out:
        lines += ["", *left_out]
    return "\n".join(wrap(line) for line in lines) + "\n"


# ---------------------------------------------------------------------------------------------

def report_benchmarks(run):
    """The benchmarks this report covers: suites uffd and guard, and the model cases beside."""
    return [bench for bench in run.benchmarks
            if bench.suite in ("uffd", "guard") or
            (bench.suite == "model" and bench.case in MODEL_CASES)]


def applies(run):
    """Whether the run has rows for this report."""
    return any(bench.suite in ("uffd", "guard") for bench in run.benchmarks)


def report_files(run):
    """The uffd report of a loaded run: (summary, {file name: bytes}). Raises BadInput."""
    if not applies(run):
        raise BadInput(f"{run.directory / 'results.json'}: no uffd or guard rows (run "
                       f"{RUN_COMMAND})")
    benchmarks = report_benchmarks(run)
    found = round_trips(run)
    pairs = categories(run, found)
    files = {"uffd.csv": benchmarks_csv(benchmarks, first_args=("handler", "pages")).encode()}
    left_out = []
    chart = round_trip_chart(run, found, pairs)
    if chart is None:
        left_out.append("uffd_round_trip.svg not written: no uffd round trip ran.")
    else:
        files["uffd_round_trip.svg"] = chart
    summary = summary_text(run, benchmarks, found, pairs, left_out)
    files["uffd_summary.txt"] = summary.encode()
    return summary, files


def write_report(directory):
    """Writes the uffd report into directory; returns the summary and the files written. Raises
    BadInput."""
    return write_kind_report(report_files, directory)
