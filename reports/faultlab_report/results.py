"""Reading a faultlab run: results.json as one aggregated Benchmark per benchmark name, each figure
with its spread across repetitions; and writing a report's files atomically.

Google Benchmark writes every repetition as an "iteration" row and adds "aggregate" rows (mean,
median, stddev, cv). The aggregates are left out here and computed again from the iteration rows,
so that every counter, not only the time column, gets its mean and spread the same way.
"""

import csv
import io
import json
import math
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


class BadInput(Exception):
    """Input a report cannot use; the message is one line, shown after 'faultlab: '."""


# Keys of a Google Benchmark row that are not counters.
RUN_FIELDS = frozenset({
    "name", "family_index", "per_family_instance_index", "run_name", "run_type",
    "repetitions", "repetition_index", "threads", "iterations", "real_time", "cpu_time",
    "time_unit", "label", "error_occurred", "error_message", "aggregate_name",
    "aggregate_unit", "big_o", "rms"})

# Named arguments Google Benchmark adds for the harness; they do not say what was measured.
HARNESS_ARGS = ("iterations", "repeats")
# Plain pieces Google Benchmark appends for the clock a benchmark reports.
HARNESS_SUFFIXES = ("manual_time", "real_time", "process_time")

NS_PER_TIME_UNIT = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}

# The name under which a row's time column (real_time, converted to ns) is read.
TIME = "time_ns"


@dataclass(frozen=True)
class Measure:
    """A figure and its spread: for a measured figure, the sample standard deviation of its
    repetitions (what Google Benchmark's stddev aggregate reports); for a derived one, its
    inputs' spreads combined in quadrature, as if independent."""
    value: float
    spread: float = 0.0

    @property
    def cv(self):
        """The spread as a fraction of the value."""
        return self.spread / abs(self.value) if self.value else 0.0

    def __sub__(self, other):
        return Measure(self.value - other.value, math.hypot(self.spread, other.spread))

    def __mul__(self, factor):
        """Scaled by a plain number (a unit or a count, which carries no spread)."""
        return Measure(self.value * factor, self.spread * abs(factor))

    def __truediv__(self, other):
        if isinstance(other, Measure):
            value = self.value / other.value
            return Measure(value, abs(value) * math.hypot(self.cv, other.cv))
        return Measure(self.value / other, self.spread / abs(other))


def parse_arg_value(text):
    """'256' -> 256, '0.5' -> 0.5, anything else stays text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class Benchmark:
    """One benchmark of the run: its name split into parts, and its repetitions."""
    name: str                   # Google Benchmark's run_name
    suite: str
    case: str
    variant: str
    detail: str                 # plain pieces after the variant ("shmem" in model/uffd/x/shmem)
    args: dict                  # named arguments, e.g. {"rss_mib": 256, "iterations": 16}
    rows: list = field(default_factory=list)  # the iteration rows, one per repetition
    skipped: str = ""           # why it did not run, or empty

    @property
    def half(self):
        """'kernel' for the suites that time the real kernel, 'model' for the model."""
        return "model" if self.suite == "model" else "kernel"

    @property
    def rss_mib(self):
        return self.args.get("rss_mib")

    @property
    def short_name(self):
        """The name without the harness's arguments: fork/latency/anon4k/rss_mib:256."""
        parts = [self.suite, self.case, self.variant, self.detail]
        parts += [f"{key}:{value}" for key, value in self.args.items() if key not in HARNESS_ARGS]
        return "/".join(part for part in parts if part != "")

    @property
    def repetitions(self):
        return len(self.rows)

    def label_field(self, key):
        """A `key=value` field of the first labelled repetition (e.g. nodes=0,1,2), or None."""
        for row in self.rows:
            for item in str(row.get("label", "")).split():
                name, _, value = item.partition("=")
                if name == key:
                    return value
        return None

    @property
    def failed(self):
        """Errored without the 'skipped: ' of a row that cannot run here: a premise or a data
        check that did not hold."""
        return any(row.get("error_occurred") and
                   not str(row.get("error_message", "")).startswith("skipped: ")
                   for row in self.rows)

    @property
    def status(self):
        """'measured', 'skipped' or 'failed'."""
        if not self.skipped:
            return "measured"
        return "failed" if self.failed else "skipped"

    @property
    def label(self):
        """The label of the first repetition that has one (they say how the row was set up:
        backing, CPUs, verified premise), or empty."""
        return next((str(row["label"]) for row in self.rows if row.get("label")), "")

    def counter_names(self):
        """Every counter any repetition carries, in the order first seen."""
        names = {}
        for row in self.rows:
            for key in row:
                if key not in RUN_FIELDS:
                    names[key] = True
        return list(names)

    def values(self, counter):
        """The counter's value in each repetition that has it (TIME: real_time in ns)."""
        if counter == TIME:
            return [row["real_time"] * NS_PER_TIME_UNIT[row.get("time_unit", "ns")]
                    for row in self.rows if isinstance(row.get("real_time"), (int, float))]
        return [row[counter] for row in self.rows if isinstance(row.get(counter), (int, float))]

    def measure(self, counter=TIME):
        """The counter's mean over repetitions with its spread, or None if it has no values."""
        values = self.values(counter)
        if self.skipped or not values:
            return None
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return Measure(statistics.fmean(values), spread)


def split_name(run_name):
    """'fork/latency/anon4k/rss_mib:256/iterations:16/repeats:3/manual_time' ->
    ('fork', 'latency', 'anon4k', '', {'rss_mib': 256, 'iterations': 16, 'repeats': 3});
    'model/uffd/missing_copy/shmem/iterations:8' -> ('model', 'uffd', 'missing_copy', 'shmem',
    {'iterations': 8}): plain pieces after the variant are its detail."""
    plain, args = [], {}
    for piece in run_name.split("/"):
        key, colon, value = piece.partition(":")
        if colon:
            args[key] = parse_arg_value(value)
        elif piece not in HARNESS_SUFFIXES:
            plain.append(piece)
    plain += ["", "", ""]
    return plain[0], plain[1], plain[2], "/".join(plain[3:]).strip("/"), args


@dataclass
class Run:
    """A run's context and its benchmarks, in the order results.json first lists them."""
    directory: Path
    context: dict
    benchmarks: list

    def find(self, suite, case, variant, **args):
        """The benchmark with these parts and named arguments, or None."""
        for bench in self.benchmarks:
            if (bench.suite, bench.case, bench.variant) == (suite, case, variant) and all(
                    bench.args.get(key) == value for key, value in args.items()):
                return bench
        return None

    def select(self, suite, case, variant):
        """All benchmarks with these parts (e.g. one per RSS), sorted by RSS."""
        found = [bench for bench in self.benchmarks
                 if (bench.suite, bench.case, bench.variant) == (suite, case, variant)]
        return sorted(found, key=lambda bench: bench.rss_mib or 0)

    def environment(self):
        faultlab = self.context.get("faultlab")
        environment = faultlab.get("environment") if isinstance(faultlab, dict) else None
        return environment if isinstance(environment, dict) else {}

    def warnings(self):
        """The environment's warnings: conditions that distort the run's figures."""
        faultlab = self.context.get("faultlab")
        warnings = faultlab.get("warnings") if isinstance(faultlab, dict) else None
        return [str(warning) for warning in warnings] if isinstance(warnings, list) else []

    def options(self):
        """The options the run was given (suites, filter, CPUs, ...); {} if not recorded."""
        faultlab = self.context.get("faultlab")
        options = faultlab.get("options") if isinstance(faultlab, dict) else None
        return options if isinstance(options, dict) else {}

    def emulator(self):
        """The emulator's name when the run was under software emulation, else None."""
        recorded = self.environment().get("emulation")
        if isinstance(recorded, dict) and recorded.get("emulated"):
            return str(recorded.get("emulator") or "an emulator")
        if any(warning.startswith("SOFTWARE EMULATION") for warning in self.warnings()):
            return "an emulator"
        return None

    def run_cpus(self):
        """The CPUs the run's workers were given (--cpu, or all it was allowed); [] if unknown."""
        cpus = self.options().get("cpus")
        return cpus if isinstance(cpus, list) else []

    def machine(self):
        """Host, kernel, CPU and hypervisor in one line, from the run's context."""
        environment = self.environment()
        kernel = environment.get("kernel") or {}
        cpu = environment.get("cpu") or {}
        hypervisor = environment.get("hypervisor") or {}
        host = self.context.get("host_name") or environment.get("hostname") or "unknown host"
        parts = [host]
        if kernel.get("release"):
            parts.append(f"Linux {kernel['release']}")
        if cpu.get("model_name"):
            parts.append(cpu["model_name"])
        cpus = cpu.get("allowed") or self.context.get("num_cpus")
        if cpus:
            parts.append(f"{cpus} CPUs")
        if hypervisor.get("present"):
            parts.append(f"{hypervisor.get('vendor') or 'VM'} guest")
        return ", ".join(parts)


def leaves(value, path):
    """{path/key...: leaf} of a nested object (a leaf is anything but a dict)."""
    if not isinstance(value, dict):
        return {path: value}
    found = {}
    for key, inner in value.items():
        found.update(leaves(inner, f"{path}/{key}"))
    return found


def load_run(directory):
    """Reads DIR/results.json; raises BadInput with one line saying what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInput(f"{directory}: no such directory")
    path = directory / "results.json"
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file (the directory is not a faultlab run)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: cannot read: {error}") from None
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}: not valid JSON: {error}") from None
    context = document.get("context") if isinstance(document, dict) else None
    if not isinstance(context, dict) or "schema_version" not in context:
        raise BadInput(f"{path}: no context.schema_version: not written by faultlab run")
    rows = document.get("benchmarks")
    if not isinstance(rows, list):
        raise BadInput(f"{path}: no benchmarks list")
    try:
        benchmarks = aggregate_rows(rows)
    except BadInput as error:
        raise BadInput(f"{path}: {error}") from None
    return Run(directory, context, benchmarks)


def aggregate_rows(rows):
    """Groups the iteration rows by benchmark; a benchmark any of whose repetitions errored is
    kept as skipped, with the reason ('skipped: ' taken off)."""
    benchmarks = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("run_type", "iteration") != "iteration":
            continue
        name = row.get("run_name") or row.get("name")
        if not isinstance(name, str):
            continue
        bench = benchmarks.get(name)
        if bench is None:
            bench = Benchmark(name, *split_name(name))
            benchmarks[name] = bench
        if row.get("error_occurred"):
            message = str(row.get("error_message", "error"))
            bench.skipped = bench.skipped or message.removeprefix("skipped: ")
        elif not isinstance(row.get("real_time"), (int, float)) or \
                row.get("time_unit", "ns") not in NS_PER_TIME_UNIT:
            raise BadInput(f"{name}: a repetition without a real_time in ns, us, ms or s")
        bench.rows.append(row)
    return list(benchmarks.values())


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_kind_report(report_files, directory):
    """Loads the run in directory and writes one kind's report into it, all files or none:
    report_files(run) gives (summary, {name: bytes}). Returns the summary and the names written.
    Raises BadInput."""
    run = load_run(directory)
    summary, files = report_files(run)
    write_files(run.directory, files)
    return summary, sorted(files)


def write_files(directory, files):
    """Writes {name: bytes} into directory: every file goes to a temporary file there first, and
    only when all are complete are they renamed into place, each rename atomic. A failure leaves
    no temporary file behind, and each file either as it was or whole and new."""
    temporaries = []
    try:
        for name, data in files.items():
            handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial",
                                                 dir=directory)
            temporaries.append((temporary, name))
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            # mkstemp creates 0600; a report gets the mode any new file would.
            os.chmod(temporary, 0o666 & ~current_umask())
        for temporary, name in temporaries:
            os.replace(temporary, Path(directory) / name)
    except OSError:
        for temporary, _ in temporaries:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass  # already renamed into place
        raise


def benchmarks_csv(benchmarks, first_args=()):
    """One row per benchmark: its name's parts (with a detail column when a name has one) and
    arguments (first_args first, then the others sorted), the time column's mean, cv, min and max over the repetitions, the mean of every
    counter, and why it was skipped."""
    arg_names = {key for bench in benchmarks for key in bench.args}
    args = [name for name in first_args if name in arg_names]
    args += sorted(arg_names - set(args))
    counters = sorted({name for bench in benchmarks for name in bench.counter_names()})
    details = ["detail"] if any(bench.detail for bench in benchmarks) else []
    header = (["half", "suite", "case", "variant"] + details + args +
              ["repetitions", "time_ns_mean", "time_ns_cv", "time_ns_min", "time_ns_max",
               "skipped"] + counters + ["benchmark"])
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(header)
    for bench in benchmarks:
        time = bench.measure(TIME)
        cells = [bench.half, bench.suite, bench.case, bench.variant]
        cells += [bench.detail for _ in details]
        cells += [bench.args.get(name, "") for name in args]
        cells.append(bench.repetitions)
        if time is None:
            cells += ["", "", "", ""]
        else:
            times_ns = bench.values(TIME)
            cells += [repr(time.value), repr(time.cv), repr(min(times_ns)), repr(max(times_ns))]
        cells.append(bench.skipped)
        for name in counters:
            measure = bench.measure(name)
            cells.append("" if measure is None else repr(measure.value))
        cells.append(bench.name)
        writer.writerow(cells)
    return output.getvalue()
