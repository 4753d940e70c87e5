"""`faultlab report numa DIR`: where memory should live, from the numa suite's rows in
DIR/results.json. Writes into DIR:

- numa.csv: one row per numa benchmark with the fields a reader filters on (case, policy,
  backing, cpu_node, mem_node, nodes, batch, from, to), whether it was measured, skipped or
  failed and why, its main figures, then every other counter;
- numa_latency.svg, numa_bandwidth.svg, numa_first_touch.svg: heatmaps of the matrix, CPU node
  rows by memory node columns, a panel per backing, every measured cell annotated;
- numa_summary.txt: the matrices as text, the placement advice (for each workload shape and CPU
  node, the option measured best and each other option's penalty), migration rates, what NUMA
  balancing did in the hinting rows (faults and migrations per page, convergence), the trap
  against the software path (the kernel's hinting fault, its user-space PROT_NONE analogue and
  the model's hinting fault and migration, p50 each, from the same run), and which rows were
  skipped or failed and why (also returned, for printing).

The advice is for 4 KiB anonymous memory, the backing the policy rows use. Its options are the
policy rows of a CPU node and the matrix's cells for that node. "bind node M" is the matrix's
cell (N, M) (the matrix binds strictly), or the bind policy row where the matrix has no figure.
The other options' figures are their policy rows' own counters; where a row does not measure a
shape (local has no chase of its own), the matrix cell with its placement: local is the cell
(N, N), since the local row verified every page on node N, and it is then one option with bind
node N. Only measured rows give a figure; every option that has none is listed with the reason.

Every number comes from the run. Under software emulation (faultlab vm) the summary and the
charts say that the timings are not performance figures.
"""

import csv
import io
from dataclasses import dataclass

from . import charts
from .results import TIME, BadInput, write_kind_report
from .text import format_ns, format_percent, significant, wrap

BACKINGS = ("anon4k", "thp", "hugetlb2m")
MATRIX_CASES = ("first_touch", "latency", "bandwidth")
POLICIES = ("local", "bind", "preferred", "interleave", "weighted_interleave")
MOVE_CASES = ("move_pages", "mbind_move", "migrate_pages")
# The backing of the policy rows, and so of the advice.
ADVICE_BACKING = "anon4k"

RUN_COMMAND = "./scripts/faultlab run --quick --suite numa"
VM_COMMAND = "./scripts/faultlab vm -- run --quick --suite numa"

# The figures numa.csv puts first, after the fields to filter on.
MAIN_FIGURES = ("ns_per_fault", "ns_per_load", "gb_per_s", "pages_per_s", "ns_per_page")
# Named arguments that size a row rather than say what it measures: left out of short names.
SIZE_ARGS = ("region_mib", "rounds", "chase_mib", "iterations", "repeats")


def format_gbps(value):
    return f"{significant(value)} GB/s"


def format_rate(value):
    """Pages per second: '12.3k', '1.05M'."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{significant(value / scale)}{unit}"
    return significant(value)


@dataclass(frozen=True)
class Shape:
    """A workload shape: the counter that measures it, the matrix case that has it, and whether
    lower is better."""
    name: str
    counter: str
    matrix_case: str
    lower_is_better: bool
    measures: str
    formatter: object


SHAPES = (
    Shape("latency-bound", "ns_per_load", "latency", True,
          "a dependent-load chase over the region; ns per load, lower is better", format_ns),
    Shape("bandwidth-bound", "gb_per_s", "bandwidth", False,
          "a streaming read of the region; GB/s, higher is better", format_gbps),
    Shape("fault-heavy", "ns_per_fault", "first_touch", True,
          "first touch, mean ns per 4 KiB fault, lower is better", format_ns),
)
SHAPE_OF_CASE = {shape.matrix_case: shape for shape in SHAPES}
CHART_FILES = {"latency": "numa_latency.svg", "bandwidth": "numa_bandwidth.svg",
               "first_touch": "numa_first_touch.svg"}


# ---------------------------------------------------------------------------------------------
# Reading the rows

def why_not(bench):
    """'skipped: <reason>' or 'failed: <reason>'."""
    return f"{bench.status}: {bench.skipped}"


def short_name(bench):
    """The name without the arguments that only size the row:
    numa/policy/bind/anon4k/cpu_node:0/target:1."""
    parts = [bench.suite, bench.case, bench.variant, bench.detail]
    parts += [f"{key}:{value}" for key, value in bench.args.items() if key not in SIZE_ARGS]
    return "/".join(part for part in parts if part != "")


def backing_of(bench):
    return bench.detail if bench.case == "policy" else bench.variant


def policy_of(bench):
    """The policy a row places its memory with: the matrix binds strictly."""
    if bench.case == "policy":
        return bench.variant
    if bench.case in MATRIX_CASES:
        return "bind"
    return ""


def mem_node_of(bench):
    """The node a row's memory is placed on, if one: the matrix's, the hinting rows' and the
    protnone analogue's mem_node, bind's and preferred's target, local's CPU node."""
    if "mem_node" in bench.args:
        return bench.args["mem_node"]
    if bench.case == "policy":
        if bench.variant == "local":
            return bench.args.get("cpu_node")
        return bench.args.get("target")
    return None


def numa_rows(run):
    return [bench for bench in run.benchmarks if bench.suite == "numa"]


def matrix(benchmarks, case, backing):
    """{(cpu_node, mem_node): bench} of one matrix case and backing."""
    return {(bench.args.get("cpu_node"), bench.args.get("mem_node")): bench
            for bench in benchmarks
            if (bench.case, bench.variant) == (case, backing)
            and isinstance(bench.args.get("cpu_node"), int)
            and isinstance(bench.args.get("mem_node"), int)}


def nodes_of(cells):
    """The CPU nodes and the memory nodes a matrix names, sorted."""
    return (sorted({cpu for cpu, _ in cells}), sorted({mem for _, mem in cells}))


def emulation_lines(emulator):
    if not emulator:
        return []
    return ["", f"SOFTWARE EMULATION ({emulator}): every timing below is NOT a performance "
                "figure. Only what the kernel did is real: where pages went (checked on every "
                "page), which rows ran and which skipped. The advice shows how the report "
                "reads a run; do not place memory by it."]


# ---------------------------------------------------------------------------------------------
# numa.csv

def numa_csv(benchmarks):
    counters = sorted({name for bench in benchmarks for name in bench.counter_names()}
                      - set(MAIN_FIGURES))
    header = (["case", "policy", "backing", "cpu_node", "mem_node", "nodes", "batch", "from",
               "to", "region_mib", "chase_mib", "repetitions", "status", "reason"] +
              list(MAIN_FIGURES) + [f"{name}_cv" for name in MAIN_FIGURES] +
              ["time_ns_mean"] + counters + ["benchmark"])
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(header)

    def cell(value):
        return "" if value is None else value

    for bench in benchmarks:
        nodes = bench.label_field("nodes") if bench.variant in ("interleave",
                                                                  "weighted_interleave") else None
        cells = [bench.case, policy_of(bench), backing_of(bench),
                 cell(bench.args.get("cpu_node")), cell(mem_node_of(bench)), cell(nodes)]
        cells += [cell(bench.args.get(key)) for key in ("batch", "from", "to", "region_mib",
                                                        "chase_mib")]
        cells += [bench.repetitions, bench.status, bench.skipped]
        measures = [bench.measure(name) for name in MAIN_FIGURES]
        cells += ["" if measure is None else repr(measure.value) for measure in measures]
        cells += ["" if measure is None else repr(measure.cv) for measure in measures]
        time = bench.measure(TIME)
        cells.append("" if time is None else repr(time.value))
        for name in counters:
            measure = bench.measure(name)
            cells.append("" if measure is None else repr(measure.value))
        cells.append(bench.name)
        writer.writerow(cells)
    return output.getvalue()


# ---------------------------------------------------------------------------------------------
# The heatmaps

def cell_text(bench, shape):
    measure = bench.measure(shape.counter)
    return shape.formatter(measure.value) if measure is not None else None


def heatmap_chart(run, benchmarks, case, emulator):
    """The matrix of one case: a panel per backing with a measured cell; None if none has."""
    shape = SHAPE_OF_CASE[case]
    grids, notes = [], []
    for backing in BACKINGS:
        cells = matrix(benchmarks, case, backing)
        measured = {key: bench for key, bench in cells.items()
                    if bench.measure(shape.counter) is not None}
        if not measured:
            if cells:
                reasons = sorted({why_not(bench) for bench in cells.values()})
                notes.append(f"{backing}: no cell measured ({'; '.join(reasons)}).")
            continue
        cpus, mems = nodes_of(cells)
        values, texts, ids = [], [], []
        for cpu in cpus:
            values.append([]), texts.append([]), ids.append([])
            for mem in mems:
                bench = cells.get((cpu, mem))
                measure = bench.measure(shape.counter) if bench else None
                values[-1].append(measure.value if measure else None)
                texts[-1].append(cell_text(bench, shape) if measure else
                                 bench.status if bench else None)
                ids[-1].append(f"cell-{backing}-cpu{cpu}-mem{mem}")
        grids.append(charts.Grid(backing, [f"{cpu}" for cpu in cpus], [f"{mem}" for mem in mems],
                                 values, texts, ids))
    if not grids:
        return None
    titles = {"latency": "Load latency by CPU node and memory node (dependent-load chase)",
              "bandwidth": "Read bandwidth by CPU node and memory node (streaming read)",
              "first_touch": "First-touch fault cost by CPU node and memory node"}
    labels = {"latency": "ns per load", "bandwidth": "GB/s", "first_touch": "ns per fault"}
    measured_as = {"latency": "the median pass of each repetition, mean over repetitions",
                   "bandwidth": "mean over passes and repetitions",
                   "first_touch": "the mean fault, per 2 MiB page for thp and hugetlb2m"}
    title = titles[case]
    if emulator:
        title += f"\nSOFTWARE EMULATION ({emulator}): NOT performance figures"
    notes = [f"{run.machine()}. Memory bound strictly to the column's node (mbind MPOL_BIND), "
             f"every page's node checked; {labels[case]}: {measured_as[case]}. Brighter is "
             "better in every numa heatmap; grey cells did not run (skipped) or failed a check."
             ] + notes
    chart = charts.heatmap(grids, title=title, row_label="CPU node", column_label="memory node",
                           value_label=labels[case], reverse=shape.lower_is_better,
                           notes=notes)
    return charts.svg_bytes(chart)


# ---------------------------------------------------------------------------------------------
# The summary: matrices as text

def matrix_lines(benchmarks, case):
    shape = SHAPE_OF_CASE[case]
    heads = {"first_touch": "First touch, mean per fault (per 2 MiB page: thp, hugetlb2m)",
             "latency": "Load latency per dependent load",
             "bandwidth": "Read bandwidth"}
    lines = []
    for backing in BACKINGS:
        cells = matrix(benchmarks, case, backing)
        if not cells:
            continue
        cpus, mems = nodes_of(cells)
        lines.append(f"  {backing:<12}" + "".join(f"{'mem ' + str(mem):>12}" for mem in mems))
        for cpu in cpus:
            texts = []
            for mem in mems:
                bench = cells.get((cpu, mem))
                texts.append((cell_text(bench, shape) or bench.status) if bench else "-")
            lines.append(f"    cpu {cpu:<6}" + "".join(f"{text:>12}" for text in texts))
    if not lines:
        return []
    return ["", f"{heads[case]} (rows: CPU node; columns: memory node):", *lines]


# ---------------------------------------------------------------------------------------------
# The advice

@dataclass
class Option:
    """One way to place a CPU node's memory, with its figure for a shape (None: not measured)."""
    name: str            # "bind node 1", "interleave nodes 0,1,2"
    measure: object      # Measure or None
    source: str          # "policy row", "matrix cell (0, 1)"
    why_not: str = ""    # why there is no figure


def option_name(bench):
    policy = bench.variant
    if policy == "local":
        return f"local (node {bench.args.get('cpu_node')})"
    if policy in ("bind", "preferred"):
        return f"{policy} node {bench.args.get('target')}"
    nodes = bench.label_field("nodes")
    return f"{policy} nodes {nodes}" if nodes else f"{policy} over {bench.args.get('nodes')} nodes"


def options_for(benchmarks, cpu, shape):
    """Every option for CPU node `cpu`: the policy rows of that node, then the matrix's cells.
    Bind to M is the matrix's cell (N, M) wherever it has a figure, so that the advice and the
    matrix above it agree (the bind policy row measures the same placement again)."""
    cells = matrix(benchmarks, shape.matrix_case, ADVICE_BACKING)
    options, named = [], set()
    policy_rows = [bench for bench in benchmarks
                   if bench.case == "policy" and bench.detail == ADVICE_BACKING
                   and bench.args.get("cpu_node") == cpu]
    policy_rows.sort(key=lambda bench: (POLICIES.index(bench.variant)
                                        if bench.variant in POLICIES else len(POLICIES),
                                        bench.args.get("target", -1)))
    for bench in policy_rows:
        name = option_name(bench)
        if bench.variant == "bind":
            cell = cells.get((cpu, bench.args.get("target")))
            if cell is not None and cell.measure(shape.counter) is not None:
                continue
        if bench.skipped:
            options.append(Option(name, None, "policy row", why_not(bench)))
            named.add(name)
            continue
        measure = bench.measure(shape.counter)
        if measure is not None:
            options.append(Option(name, measure, "policy row"))
            named.add(name)
            continue
        # The row ran but does not measure this shape: the matrix cell with its placement.
        placed_on = mem_node_of(bench)
        cell = cells.get((cpu, placed_on)) if placed_on is not None else None
        if cell is None:
            options.append(Option(name, None, "", f"no {shape.matrix_case} row measures it"))
        elif cell.skipped:
            options.append(Option(name, None, "", f"the matrix cell ({cpu}, {placed_on}) "
                                                  f"{why_not(cell)}"))
        else:
            options.append(Option(name, cell.measure(shape.counter),
                                  f"matrix cell ({cpu}, {placed_on})"))
        named.add(name)
    for (cell_cpu, mem), cell in sorted(cells.items()):
        name = f"bind node {mem}"
        if cell_cpu != cpu or name in named:
            continue
        if cell.skipped:
            options.append(Option(name, None, "", f"the matrix cell ({cpu}, {mem}) "
                                                  f"{why_not(cell)}"))
        else:
            options.append(Option(name, cell.measure(shape.counter), f"matrix cell ({cpu}, {mem})"))
    return merge_same_cell(options)


def merge_same_cell(options):
    """Options whose figure is the same matrix cell (local and bind to the CPU's node) as one,
    named by both: one measurement is one alternative."""
    merged, by_source = [], {}
    for option in options:
        first = by_source.get(option.source) if option.source.startswith("matrix") else None
        if first is None:
            by_source[option.source] = option
            merged.append(option)
        else:
            first.name += f" = {option.name}"
    return merged


def penalty_ratio(option, best, shape):
    """How many times longer the same work takes with `option` than with `best` (a Measure, with
    the spread of both): figure / best for times, best / figure for bandwidth."""
    if shape.lower_is_better:
        return option.measure / best.measure
    return best.measure / option.measure


def cpu_nodes_of(benchmarks):
    return sorted({bench.args["cpu_node"] for bench in benchmarks
                   if isinstance(bench.args.get("cpu_node"), int)
                   and (bench.case in MATRIX_CASES or bench.case == "policy")})


def advice(benchmarks):
    """{shape name: {cpu node: (best Option or None, [measured alternatives with their penalty
    ratio, best first], [unmeasured options])}}."""
    table = {}
    for shape in SHAPES:
        per_cpu = {}
        for cpu in cpu_nodes_of(benchmarks):
            options = options_for(benchmarks, cpu, shape)
            measured = [option for option in options if option.measure is not None]
            unmeasured = [option for option in options if option.measure is None]
            if not measured:
                per_cpu[cpu] = (None, [], unmeasured)
                continue
            sign = 1 if shape.lower_is_better else -1
            measured.sort(key=lambda option: sign * option.measure.value)
            best = measured[0]
            others = [(option, penalty_ratio(option, best, shape)) for option in measured[1:]]
            per_cpu[cpu] = (best, others, unmeasured)
        table[shape.name] = per_cpu
    return table


def advice_lines(benchmarks, emulator):
    table = advice(benchmarks)
    if not any(table.values()):
        return ["", "Placement advice: none, the run has no policy or matrix row."]
    chase = next((bench.args.get("chase_mib") or bench.args.get("region_mib")
                  for bench in benchmarks if bench.case == "latency"), None)
    lines = ["", "Placement advice for 4 KiB anonymous memory (anon4k), per workload shape and CPU "
                 "node: the option measured best, then each other option with its figure and its "
                 "penalty, how much longer the same work takes with it (figure / best; for "
                 "bandwidth best / figure), marked (within the spread) when the repetitions' "
                 "spread is as large. From measured rows only: an option without a figure says "
                 "why." + (f" Chase and read regions: {chase} MiB." if chase else "")]
    if emulator:
        lines.append(f"  (SOFTWARE EMULATION, {emulator}: NOT performance figures.)")
    for shape in SHAPES:
        lines += ["", f"{shape.name[0].upper()}{shape.name[1:]} ({shape.measures}):"]
        rows = table[shape.name].values()
        width = 2 + max((len(option.name) for best, others, unmeasured in rows
                         for option in [best, *(other for other, _ in others), *unmeasured]
                         if option is not None), default=10)
        for cpu, (best, others, unmeasured) in table[shape.name].items():
            if best is None:
                lines.append(f"  CPU node {cpu}: no option measured.")
            else:
                lines.append(f"  CPU node {cpu}: use {best.name}: "
                             f"{shape.formatter(best.measure.value)} ({best.source}).")
                for option, ratio in others:
                    extra = ratio.value - 1
                    noise = " (within the spread)" if extra <= ratio.spread else ""
                    lines.append(f"    {option.name:<{width}}"
                                 f"{shape.formatter(option.measure.value):>10}  "
                                 f"+{format_percent(extra)}{noise}; {option.source}")
            for option in unmeasured:
                lines.append(f"    {option.name:<{width}}not measured: {option.why_not}")
    return lines


def missing_lines(benchmarks):
    """What a run whose matrix measured fewer than two memory nodes cannot say, and why (from its
    skip rows)."""
    if not any(bench.case in MATRIX_CASES for bench in benchmarks):
        return []
    measured_mems = {mem_node_of(bench) for bench in benchmarks
                     if bench.case in MATRIX_CASES and not bench.skipped}
    measured_mems.discard(None)
    if len(measured_mems) > 1:
        return []
    reason = next((bench.skipped for bench in benchmarks if bench.skipped and
                   ("target" in bench.args or "to" in bench.args)
                   and not bench.failed), None)
    nodes = ", ".join(str(node) for node in sorted(measured_mems)) or "none"
    return ["", f"Missing from this run: only memory node {nodes} was measured, so the matrix is "
                "one column, every option places the same pages on the same node (their "
                "differences are the spread between repetitions, not placement), and remote "
                "memory, preferred, interleave across nodes and migration are not measured" +
                (f" ({reason})" if reason else "") + f". A multi-node run: {VM_COMMAND} "
                "(emulated: placement, not timing)."]


# ---------------------------------------------------------------------------------------------
# Migration

def migration_lines(benchmarks):
    groups = {}
    for bench in benchmarks:
        if bench.case not in MOVE_CASES or bench.skipped:
            continue
        rate = bench.measure("pages_per_s")
        if rate is None:
            continue
        key = (bench.case, bench.variant, bench.args.get("batch"))
        groups.setdefault(key, []).append(
            f"{bench.args.get('from')}->{bench.args.get('to')} {format_rate(rate.value)}")
    if not groups:
        return []
    lines = ["", "Migration, pages moved per second (mean over repetitions; a page is 2 MiB for "
                 "thp and hugetlb2m), by call, backing and batch, for each pair from->to:"]
    for (case, backing, batch), pairs in sorted(
            groups.items(), key=lambda item: (MOVE_CASES.index(item[0][0]), item[0][1],
                                              item[0][2] or 0)):
        what = f"{case} {backing}" + (f" batch {batch}" if batch is not None else "")
        lines.append(f"  {what}: " + ", ".join(pairs) + ".")
    return lines


# ---------------------------------------------------------------------------------------------
# Hinting faults, and the trap against the software path

def counter(bench, name):
    """The counter's mean over repetitions, or None."""
    measure = bench.measure(name) if bench is not None else None
    return None if measure is None else measure.value


def hinting_lines(benchmarks):
    """What NUMA balancing did in each hinting row that ran: faults, migrations, convergence."""
    rows = [bench for bench in benchmarks if bench.case == "hinting" and not bench.skipped]
    if not rows:
        return []
    lines = ["", "NUMA hinting faults (kernel.numa_balancing=1 for these rows only, with "
                 "--numa-balancing; mean over repetitions):"]
    for bench in sorted(rows, key=lambda b: (b.args.get("cpu_node"), b.args.get("mem_node"))):
        cpu, mem = bench.args.get("cpu_node"), bench.args.get("mem_node")
        where = f"CPU node {cpu}, memory placed on node {mem}" + (" (local)" if cpu == mem else "")
        faults = counter(bench, "hint_faults") or 0
        per_page = counter(bench, "hint_faults_per_page") or 0
        migrated = counter(bench, "migrated_per_page") or 0
        seconds = counter(bench, "touch_s")
        took = f" in {significant(seconds)} s" if seconds else ""
        line = (f"  {where}: {significant(faults)} hinting faults{took} "
                f"({significant(per_page)} per page), {significant(migrated)} migrations per "
                f"page; a hinting fault's round trip p50 {format_ns(counter(bench, 'p50_ns') or 0)}")
        if cpu != mem:
            if counter(bench, "converged"):
                line += (f"; converged (90% on node {cpu}) in "
                         f"{format_ns((counter(bench, 'converge_ms') or 0) * 1e6)}")
            else:
                share = counter(bench, "cpu_node_share") or 0
                line += (f"; NOT converged{took}: {format_percent(share, 3)} of the pages on "
                         f"node {cpu}")
        lines.append(line + ".")
    return lines


def model_row(run, case, variant):
    """The model's one-thread row of case/variant on 4 KiB pages, or None."""
    return run.find("model", case, variant, threads=1)


def trap_lines(run, benchmarks):
    """The same events with and without the trap, p50 per event, from one run: the kernel's
    hinting fault against the user-space PROT_NONE analogue and the model's software path;
    move_pages of one page against the model's MigratePage."""
    def p50(bench):
        value = counter(bench, "p50_ns") if bench is not None and not bench.skipped else None
        return value

    def first(case, variant, **args):
        for bench in benchmarks:
            if (bench.case, bench.variant) == (case, variant) and not bench.skipped and all(
                    bench.args.get(key) == value for key, value in args.items()):
                return bench
        return None

    kernel_hint = first("hinting", "anon4k")
    for bench in benchmarks:  # the local cell: no migration in its round trip
        if bench.case == "hinting" and not bench.skipped and \
                bench.args.get("cpu_node") == bench.args.get("mem_node"):
            kernel_hint = bench
    hint = p50(kernel_hint)
    move = p50(first("move_pages", "anon4k", batch=1))
    # (what, p50, the kernel figure it is set against, that figure's name)
    entries = [
        ("kernel: NUMA hinting fault (PTE restored)", hint, None, ""),
        ("user space: PROT_NONE, SIGSEGV, mprotect back",
         p50(first("protnone_analogue", "anon4k")), hint, "the kernel's hinting fault"),
        ("model: hinting fault, restored (no trap)",
         p50(model_row(run, "numa_hint", "restore")), hint, "the kernel's hinting fault"),
        ("model: hinting fault, migrated (no trap)",
         p50(model_row(run, "numa_hint", "migrate")), None, ""),
        ("kernel: move_pages, one 4 KiB page a call", move, None, ""),
        ("model: MigratePage of one 4 KiB page",
         p50(model_row(run, "migrate", "anon4k")), move, "the kernel's move_pages"),
    ]
    measured = [entry for entry in entries if entry[1] is not None]
    if len(measured) < 2:
        return []
    lines = ["", "The trap against the software path (p50 per event, this run; the model's rows "
                 "run the kernel's logic in user space, without the trap):"]
    width = max(len(entry[0]) for entry in measured)
    for name, value, against, against_name in measured:
        versus = ""
        if against:
            ratio = value / against
            versus = (f"  {significant(ratio)}x {against_name}" if ratio >= 1 else
                      f"  {format_percent(ratio)} of {against_name}")
        lines.append(f"  {name:<{width}}  {format_ns(value):>9}{versus}")
    copy = counter(model_row(run, "migrate", "anon4k"), "copy_4k_ns")
    if copy:
        lines.append(f"  (a 4 KiB memcpy beside the model's migration: {format_ns(copy)})")
    return lines


# ---------------------------------------------------------------------------------------------
# Skipped and failed rows

def not_measured_lines(benchmarks):
    """The skipped rows grouped by reason, then the failed rows one by one."""
    lines = []
    skipped = {}
    for bench in benchmarks:
        if bench.skipped and not bench.failed:
            skipped.setdefault(bench.skipped, []).append(short_name(bench))
    if skipped:
        lines += ["", "Skipped (cannot run here), by reason:"]
        for reason, names in skipped.items():
            lines.append(f"  {reason}: {'; '.join(names)}.")
    failures = [bench for bench in benchmarks if bench.failed]
    if failures:
        lines += ["", "Failed (a premise or data check did not hold; no figure kept):"]
        lines += [f"  {short_name(bench)}: {bench.skipped}" for bench in failures]
    return lines


# ---------------------------------------------------------------------------------------------

def distance_lines(run):
    numa = run.environment().get("numa")
    distances = numa.get("distances") if isinstance(numa, dict) else None
    if not isinstance(distances, dict) or not distances:
        return []
    return ["NUMA distances (node: to each node): " +
            "; ".join(f"{node}: {row}" for node, row in sorted(distances.items()))]


def summary_text(run, benchmarks, emulator, left_out):
    date = run.context.get("date")
    lines = [f"faultlab numa report: {run.machine()}" + (f"; run {date}" if date else "") +
             ". Figures: mean over repetitions."]
    lines += distance_lines(run)
    lines += emulation_lines(emulator)
    for case in ("latency", "bandwidth", "first_touch"):
        lines += matrix_lines(benchmarks, case)
    lines += advice_lines(benchmarks, emulator)
    lines += missing_lines(benchmarks)
    lines += migration_lines(benchmarks)
    lines += hinting_lines(benchmarks)
    lines += trap_lines(run, benchmarks)
    lines += not_measured_lines(benchmarks)
    if left_out:
        lines += ["", *left_out]
    return "\n".join(wrap(line) for line in lines) + "\n"


def applies(run):
    """Whether the run has rows for this report."""
    return bool(numa_rows(run))


def report_files(run):
    """The numa report of a loaded run: (summary, {file name: bytes}). Raises BadInput."""
    benchmarks = numa_rows(run)
    if not benchmarks:
        raise BadInput(f"{run.directory / 'results.json'}: no numa rows (run {RUN_COMMAND})")
    emulator = run.emulator()
    files = {"numa.csv": numa_csv(benchmarks).encode()}
    left_out = []
    for case in ("latency", "bandwidth", "first_touch"):
        chart = heatmap_chart(run, benchmarks, case, emulator)
        if chart is None:
            left_out.append(f"{CHART_FILES[case]} not written: no {case} cell was measured.")
        else:
            files[CHART_FILES[case]] = chart
    summary = summary_text(run, benchmarks, emulator, left_out)
    files["numa_summary.txt"] = summary.encode()
    return summary, files


def write_report(directory):
    """Writes the numa report into directory; returns the summary and the files written. Raises
    BadInput."""
    return write_kind_report(report_files, directory)
