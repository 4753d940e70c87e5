"""The fault suite's charts for the HTML report: for each case (write, read_zeropage,
write_after_zeropage), the distribution of single faults of every row (backing, and workers for
the scaling rows) as its percentiles.

results.json holds no per-fault samples: each repetition records the percentiles of its single
faults (p50_ns, p90_ns, p99_ns, p999_ns, max_ns) beside the steady-state mean (the time column).
A chart shows, per row, each percentile's mean over the repetitions with bars from the lowest to
the highest repetition: the distribution's shape, and how far it repeats.

Every number comes from the run; a skipped row keeps its place in the chart, with its reason
below it.
"""

from . import charts
from .results import TIME

# The figures drawn, in order along a row: the steady-state mean, then the percentiles.
FIGURES = ((TIME, "mean"), ("p50_ns", "p50"), ("p90_ns", "p90"), ("p99_ns", "p99"),
           ("p999_ns", "p99.9"), ("max_ns", "max"))
# The mean is not a percentile: a black cross, apart from the percentiles' colours and shapes.
MEAN_STYLE = {"color": "black", "marker": "x"}


def row_name(bench):
    """'anon4k', or 'anon4k, threads:2' / 'anon4k, procs:2' for a scaling row."""
    workers = [f"{key}:{bench.args[key]}" for key in ("threads", "procs")
               if bench.args.get(key, 1) != 1]
    return ", ".join([bench.variant, *workers])


def cases(run):
    """{case: [fault benchmarks of that case]}, in the order of the run."""
    found = {}
    for bench in run.benchmarks:
        if bench.suite == "fault":
            found.setdefault(bench.case, []).append(bench)
    return found


def distribution_chart(run, case, benches):
    """The case's chart as SVG bytes, or None when none of its rows ran."""
    ran = [bench for bench in benches if not bench.skipped]
    if not ran:
        return None
    categories = [row_name(bench) + (": skipped" if bench.skipped else "") for bench in benches]
    points = []
    for index, (counter, label) in enumerate(FIGURES):
        values, low, high = [], [], []
        for bench in benches:
            measure = bench.measure(counter)
            samples = bench.values(counter)
            values.append(None if measure is None else measure.value / 1e3)
            low.append(min(samples) / 1e3 if measure is not None else None)
            high.append(max(samples) / 1e3 if measure is not None else None)
        if any(value is not None for value in values):
            style = MEAN_STYLE if counter == TIME else {"color": f"C{index - 1}"}
            points.append(charts.Points(label, values, low, high, **style))
    repetitions = "/".join(str(count) for count in sorted({bench.repetitions for bench in ran}))
    notes = [f"Per row: the mean per fault and the percentiles of single faults in the "
             f"steady-state rounds, each the mean of {repetitions} repetitions; bars: the lowest "
             "and highest repetition. One fault maps one page of the backing: 4 KiB, or 2 MiB "
             "(thp, hugetlb2m), or 1 GiB (hugetlb1g)."]
    notes += [f"{row_name(bench)} skipped: {bench.skipped}" for bench in benches if bench.skipped]
    emulator = run.emulator()
    title = f"fault/{case}: single faults, mean and percentiles\n{run.machine()}"
    if emulator:
        title += f"\nSOFTWARE EMULATION ({emulator}): NOT performance figures"
    chart = charts.range_chart(categories, points, title=title,
                               value_label="time per fault (µs, log scale)", log=True,
                               notes=notes)
    return charts.svg_bytes(chart)


def distribution_charts(run):
    """[(case, SVG bytes or None)] for every fault case in the run."""
    return [(case, distribution_chart(run, case, benches))
            for case, benches in cases(run).items()]
