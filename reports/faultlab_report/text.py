"""Text every faultlab report writes the same way: numbers with their spread, wrapped lines,
and the skipped benchmarks grouped by reason."""

import math
import re
import textwrap

# The summaries' lines are wrapped to this width.
SUMMARY_WIDTH = 100


def significant(value, digits=3):
    """A number with `digits` significant digits, never in exponent form."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    # Rounded to `digits` first: 0.99996 is "1.00", not "1.000" (a digit too many).
    value = float(f"{value:.{digits - 1}e}")
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_ns(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if abs(ns) >= scale:
            return f"{significant(ns / scale)} {unit}"
    return f"{significant(ns)} ns"


def format_percent(fraction, digits=2):
    """0.0312 -> '3.1%'; with digits=3, 0.9953 -> '99.5%' (not a rounded-up '100%')."""
    return f"{significant(fraction * 100, digits)}%"


def with_spread(measure, formatter=format_ns):
    """'21.2 ms ±3.1%'."""
    return f"{formatter(measure.value)} ±{format_percent(measure.cv)}"


def times(measure):
    """A ratio with its spread: '155x ±9.1%'."""
    return with_spread(measure, lambda value: f"{significant(value)}x")


def wrap(line):
    """A long line wrapped to SUMMARY_WIDTH, continuation lines indented two more spaces."""
    if len(line) <= SUMMARY_WIDTH:
        return line
    indent = line[:len(line) - len(line.lstrip())]
    return textwrap.fill(line.strip(), SUMMARY_WIDTH, initial_indent=indent,
                         subsequent_indent=indent + "  ", break_long_words=False,
                         break_on_hyphens=False)


def skipped_lines(benchmarks, size_arg):
    """One line per reason. Reasons that differ only in their numbers (the hugetlb pages a size
    needs) are one group, shown with the largest numbers, which cover the whole group; the sizes
    (the named argument size_arg) of one benchmark are listed together."""
    groups = {}
    for bench in benchmarks:
        if bench.skipped:
            shape = re.sub(r"\d+", "N", bench.skipped)
            groups.setdefault(shape, []).append(bench)
    if not groups:
        return []
    lines = [""]
    for benches in groups.values():
        reasons = {bench.skipped for bench in benches}
        largest = max(reasons, key=lambda reason: [int(n) for n in re.findall(r"\d+", reason)])
        sizes = {}
        for bench in benches:
            size = bench.args.get(size_arg)
            base = bench.short_name.removesuffix(f"/{size_arg}:{size}")
            sizes.setdefault(base, []).append(size)
        names = "; ".join(base if None in values
                          else f"{base}/{size_arg}:{','.join(map(str, values))}"
                          for base, values in sizes.items())
        note = " (the largest need)" if len(reasons) > 1 else ""
        lines.append(f"Skipped {names}: {largest}{note}")
    return lines
