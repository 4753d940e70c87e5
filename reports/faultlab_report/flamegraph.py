"""Per-benchmark flame graphs from one profile of a whole run (`faultlab run --flamegraph`).

scripts/faultlab records the run with `perf record -a -g -e cpu-clock -k CLOCK_MONOTONIC` into
DIR/flamegraphs/perf.data; the run's results.json has, in context.faultlab.benchmark_spans, when
each benchmark ran on that clock. For each span this cuts the profile with `perf script --time`
and writes, in DIR/flamegraphs/:

  <name>.folded  folded stacks (one line a stack: the command, then its frames root first, kernel
                 ones ending in _[k], joined by ';', then its sample count): what FlameGraph,
                 speedscope and inferno read
  <name>.html    perf's flamegraph report filled into d3-flame-graph's template: one
                 self-contained page that renders offline
  index.json     the recording (event, frequency, call graph, kptr_restrict) and, per benchmark,
                 its files and sample count; index.html's "Flame graphs" section reads it
  recording_cost.csv
                 what recording costs each benchmark, measured in the same run (below), in
                 `faultlab compare`'s CSV format with A the plain repetitions, B the recorded ones

perf records only half of each benchmark's repetitions (bench/profile_control.h: twice the
repetitions, 1 and 2 of every 4 recorded; each span's recorded_repetitions lists them), so the
samples are those repetitions' and recording_cost() sets their figures against the plain ones'
with compare's ratio of medians and U test.

<name> is the benchmark's name with every character but letters, digits, '.', '_' and '-' made
'_' (a suffix tells apart two names that would collide).
"""

import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from .results import BadInput, load_run, write_files

DIRECTORY = "flamegraphs"
INDEX = "index.json"
PERF_DATA = "perf.data"
# perf's own report scripts (Debian's linux-perf), run through `perf script -s`.
PERF_SCRIPTS = Path("/usr/lib/perf-core/scripts/python")
# The perf scripts/faultlab recorded with.
PERF = os.environ.get("FAULTLAB_PERF", "perf")
RECORDING_COST = "recording_cost.csv"
# The profile is system-wide (every CPU, every process: see scripts/faultlab); a benchmark's
# samples are those of the run's threads and the children they fork, which keep the name the
# run gave them (context.faultlab.profile_control.comm: faultlab-<pid in hex>, unique to the
# run); a run that names none is comm faultlab.
DEFAULT_COMM = "faultlab"
# The bound on what recording may add to a benchmark's own figures.
COST_BOUND = 1.10


def safe_name(name, taken):
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def time_range(span):
    """perf script's --time START,STOP (seconds.microseconds on the recorded clock), widened to
    whole microseconds so no sample at either edge is lost."""
    start = int(span["start"] * 1e6) / 1e6
    end = (int(span["end"] * 1e6) + 1) / 1e6
    return f"{start:.6f},{end:.6f}"


def perf_script(directory, span, comm, script, *script_args):
    """Runs one of perf's report scripts over span's samples of `comm` in directory/perf.data
    (the flamegraph script reads the header from ./perf.data, hence the working directory)."""
    command = [PERF, "script", "-i", PERF_DATA, "--time", time_range(span), "--comms", comm,
               "-s", str(PERF_SCRIPTS / script)]
    if script_args:
        command += ["--", *script_args]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"perf script {script} failed for {span['name']}: "
                           f"{done.stderr.strip()}")
    return done.stdout


def recording(directory):
    """What the profile was recorded with, from perf.data's header."""
    done = subprocess.run([PERF, "report", "-i", PERF_DATA, "--header-only"], cwd=directory,
                          capture_output=True, text=True)
    command = re.search(r"^# cmdline : (.*)$", done.stdout, re.M)
    return {"perf_cmdline": command.group(1) if command else None,
            "kptr_restrict": int(Path("/proc/sys/kernel/kptr_restrict").read_text()),
            "perf_event_paranoid": int(
                Path("/proc/sys/kernel/perf_event_paranoid").read_text())}


def recording_cost(run):
    """What recording cost each benchmark perf recorded half of, as compare.RunComparison (A:
    the plain repetitions, B: the recorded ones; time and p50 where the row has it); None when
    the run switched no recording (a run recorded whole, by an older faultlab)."""
    spans = {span["name"]: span for span in
             run.context.get("faultlab", {}).get("benchmark_spans", [])
             if "recorded_repetitions" in span}
    if not spans:
        return None
    # Imported here: compare needs scipy, which reports of runs without flame graphs skip.
    from . import compare
    rows = []
    for bench in run.benchmarks:
        span = spans.get(bench.name)
        if span is None or bench.skipped:
            continue
        recorded = set(span["recorded_repetitions"])
        plain_bench = dataclasses.replace(
            bench, rows=[row for row in bench.rows if row.get("repetition_index") not in recorded])
        recorded_bench = dataclasses.replace(
            bench, rows=[row for row in bench.rows if row.get("repetition_index") in recorded])
        for figure in compare.FIGURES:
            row = compare.compare_figure(plain_bench, recorded_bench, figure)
            if row is not None:
                rows.append(row)
    return compare.RunComparison(run, run, rows)


def recording_cost_lines(cost):
    """The cost as lines of text, over each benchmark's primary figure (its p50 where it has
    one: the single event's median, which a preempted repetition hardly moves; else its time
    column): the median change, how many stay within COST_BOUND, the largest, and how many the
    U test calls slower."""
    primary = {}
    for row in cost.rows:
        if row.figure == "p50_ns" or row.name not in primary:
            primary[row.name] = row
    rows = list(primary.values())
    from . import compare  # scipy: only for a recorded run, as in recording_cost
    if not rows:
        return ["Recording's cost: no benchmark measured both ways."]
    median = statistics.median(row.ratio for row in rows)
    worst = max(rows, key=lambda row: row.ratio)
    within = sum(row.ratio <= COST_BOUND for row in rows)
    slower = sum(row.verdict == compare.SLOWER for row in rows)
    reps = min(min(len(row.a_values), len(row.b_values)) for row in rows)
    tested = sum(row.verdict != compare.TOO_FEW for row in rows)
    test = (f"{slower} of {tested} significantly slower (U test, p < 0.05)" if tested else
            f"with {reps} repetitions a side no U test can call one slower (run --repetitions 4 "
            f"or more: a recorded run has twice that many, half of them recorded)")
    return [
        f"Recording's cost, measured in this run (each benchmark's recorded repetitions against "
        f"its plain ones, interleaved; p50 where the row has one, else the time column): median "
        f"{percent(median)} over {len(rows)} benchmarks; {within} of {len(rows)} within "
        f"{(COST_BOUND - 1) * 100:.0f}%; the largest {percent(worst.ratio)} "
        f"({worst.short_name}, {worst.label}); {test}.",
    ]


def percent(ratio):
    """1.042 -> '+4.2%'."""
    return f"{(ratio - 1) * 100:+.1f}%"


def write_flamegraphs(run_directory, template, recorded):
    """Writes each benchmark's .folded and .html and index.json into run_directory/flamegraphs,
    all or none.
    recorded: what scripts/faultlab recorded with (event, frequency, call graph), for index.json.
    Raises BadInput when the run has no spans or no profile."""
    run_directory = Path(run_directory)
    directory = run_directory / DIRECTORY
    if not (directory / PERF_DATA).is_file():
        raise BadInput(f"{directory / PERF_DATA}: no profile of the run")
    results = json.loads((run_directory / "results.json").read_text())
    spans = results.get("context", {}).get("faultlab", {}).get("benchmark_spans")
    if not spans:
        raise BadInput(f"{run_directory}/results.json: no benchmark_spans to cut the profile by")
    comm = (results["context"]["faultlab"].get("profile_control") or {}).get("comm") or \
        DEFAULT_COMM
    taken, entries, files = set(), [], {}
    for span in spans:
        name = safe_name(span["name"], taken)
        # --kernel: kernel frames end in _[k], as FlameGraph's and inferno's colours expect.
        folded = perf_script(directory, span, comm, "stackcollapse.py", "--kernel")
        files[f"{name}.folded"] = folded.encode()
        files[f"{name}.html"] = perf_script(directory, span, comm, "flamegraph.py", "--template",
                                            str(template), "-o", "-").encode()
        samples = sum(int(line.rsplit(" ", 1)[1]) for line in folded.splitlines() if line)
        entries.append({"name": span["name"], "folded": f"{name}.folded",
                        "html": f"{name}.html", "samples": samples,
                        "seconds": span["end"] - span["start"]})
    index = {"recording": {**recorded, **recording(directory)}, "benchmarks": entries}
    cost = recording_cost(load_run(run_directory))
    if cost is not None:
        from . import compare
        files[RECORDING_COST] = compare.csv_report(cost).encode()
        index["recording_cost"] = recording_cost_lines(cost)
    files[INDEX] = (json.dumps(index, indent=2) + "\n").encode()
    # All or none: index.html links them only once index.json is there.
    write_files(directory, files)
    return index


def load_index(run_directory):
    """index.json of the run's flame graphs, or None when the run has none."""
    path = Path(run_directory) / DIRECTORY / INDEX
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def main(argv):
    """report.py flamegraphs DIR TEMPLATE EVENT FREQUENCY CALL_GRAPH."""
    if len(argv) != 5:
        raise BadInput("flamegraphs takes DIR TEMPLATE EVENT FREQUENCY CALL_GRAPH")
    directory, template, event, frequency, call_graph = argv
    if not os.path.isfile(template):
        raise BadInput(f"{template}: no flame graph template")
    recorded = {"event": event, "frequency": int(frequency), "call_graph": call_graph}
    # Absolute: perf script runs in DIR/flamegraphs.
    index = write_flamegraphs(directory, os.path.abspath(template), recorded)
    for line in index.get("recording_cost", []):
        print(line)
    print(f"faultlab: wrote the flame graphs of {len(index['benchmarks'])} benchmarks into "
          f"{Path(directory) / DIRECTORY}", file=sys.stderr)
