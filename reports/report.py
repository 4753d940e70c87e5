#!/usr/bin/python3
"""faultlab's reports from a run directory: report.py DIR [--baseline A] (every report the run has
rows for and DIR/index.html, the whole run as one page; with --baseline, the comparison against
run directory A in the page and in DIR/comparison.csv); report.py KIND DIR (one report; kinds: fork, uffd,
numa); report.py flamegraphs DIR ... (scripts/faultlab's, after `run --flamegraph`: the
per-benchmark flame graphs from DIR/flamegraphs/perf.data); and the comparison of two runs:
report.py compare A B [--csv FILE] [--html FILE].

Reads DIR/results.json and writes the reports' files into DIR, all or none; prints the reports'
summaries (with --baseline, compare's table too). Bad input (no such directory, no results.json,
not faultlab's JSON, no rows for the report; a baseline that is not a run or has no benchmark
that ran in both) is one line on stderr and exit code 2, with nothing written.

compare prints, for each benchmark of both runs, B's figures against A's with a U test over
the repetitions (faultlab_report/compare.py); --csv writes the same rows to FILE, --html a
self-contained page of them. Bad input (either directory, no benchmark in both, a FILE's
directory missing) is one line on stderr and exit code 2, with nothing written.

Runs with Debian's /usr/bin/python3, which has python3-matplotlib (the `python3` on PATH may be
another install without it).
"""

import os
import sys

# The source tree's .gitignore does not cover __pycache__: write none there.
sys.dont_write_bytecode = True

from faultlab_report import html  # noqa: E402
from faultlab_report.results import BadInput, write_files  # noqa: E402

KINDS = {kind: module.write_report for kind, module in html.KINDS.items()}


COMPARE_USAGE = "faultlab compare A B [--csv FILE] [--html FILE]"
REPORT_USAGE = (f"report.py DIR [--baseline A], report.py KIND DIR (kinds: {', '.join(KINDS)}), "
                f"or {COMPARE_USAGE}")
# compare's options that name a file to write, and how each formats the comparison.
COMPARE_OUTPUTS = ("--csv", "--html")


def output_target(option, path):
    """(directory, file name) to write an output as; BadInput if it cannot be a new file
    there."""
    directory, name = os.path.split(os.path.abspath(path))
    if not name or os.path.isdir(path):
        raise BadInput(f"{option} {path}: a directory, not a file name")
    if not os.path.isdir(directory):
        raise BadInput(f"{option} {path}: no such directory {directory}")
    return directory, name


def split_options(args, takes, usage):
    """args as ({option: value}, [the other arguments]): each option of `takes` (option -> what
    its value is) given as `OPTION VALUE` or `OPTION=VALUE`. BadInput, naming `usage`, for an
    unknown option or one without its value."""
    values, positional, rest = {}, [], list(args)
    while rest:
        arg = rest.pop(0)
        option, equals, value = arg.partition("=")
        if option in takes and (equals or rest):
            values[option] = value if equals else rest.pop(0)
            if values[option] == "":
                raise BadInput(f"{option} takes {takes[option]}: {usage}")
        elif arg.startswith("-"):
            what = f"{arg} takes {takes[arg]}" if arg in takes else f"unknown option '{arg}'"
            raise BadInput(f"{what}: {usage}")
        else:
            positional.append(arg)
    return values, positional


def compare_main(args):
    """report.py compare A B [--csv FILE] [--html FILE]."""
    # Imported here: only compare needs scipy, which the other reports should not wait for.
    from faultlab_report import compare
    try:
        outputs, runs = split_options(args, dict.fromkeys(COMPARE_OUTPUTS, "a file name"),
                                      COMPARE_USAGE)
    except BadInput as error:
        print(f"faultlab: {error}", file=sys.stderr)
        return 2
    if len(runs) != 2:
        print(f"faultlab: compare takes two run directories: {COMPARE_USAGE}", file=sys.stderr)
        return 2
    try:
        targets = {option: output_target(option, path) for option, path in outputs.items()}
        comparison = compare.load_and_compare(*runs)
    except BadInput as error:
        print(f"faultlab: {error}", file=sys.stderr)
        return 2
    formats = {"--csv": compare.csv_report, "--html": compare.html_report}
    contents = {option: formats[option](comparison).encode() for option in targets}
    for option, (directory, name) in targets.items():
        try:
            write_files(directory, {name: contents[option]})
        except OSError as error:
            print(f"faultlab: cannot write {outputs[option]}: {error}", file=sys.stderr)
            return 1
    sys.stdout.write(compare.text_report(comparison))
    for option in targets:
        print(f"faultlab: wrote {outputs[option]}", file=sys.stderr)
    return 0


def write_and_say(write_report, directory):
    """Runs a report writer on directory: prints its summary and what it wrote; the exit
    code."""
    try:
        summary, written = write_report(directory)
    except BadInput as error:
        print(f"faultlab: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"faultlab: cannot write the report into {directory}: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(summary)
    print(f"faultlab: wrote {directory.rstrip('/')}/{{{','.join(written)}}}", file=sys.stderr)
    return 0


def run_report_main(args):
    """report.py DIR [--baseline A]: the page and every report the run has rows for, with the
    comparison against A when given."""
    try:
        options, directories = split_options(args, {"--baseline": "a run directory"},
                                             REPORT_USAGE)
    except BadInput as error:
        print(f"faultlab: {error}", file=sys.stderr)
        return 2
    baseline = options.get("--baseline")
    if len(directories) != 1:
        kind = directories[0] if directories else ""
        what = f"unknown report '{kind}'" if kind and len(directories) > 1 else "usage"
        print(f"faultlab: {what}: {REPORT_USAGE}", file=sys.stderr)
        return 2
    return write_and_say(lambda directory: html.write_report(directory, baseline),
                         directories[0])


def flamegraphs_main(args):
    """report.py flamegraphs DIR TEMPLATE EVENT FREQUENCY CALL_GRAPH: scripts/faultlab's, after
    a `run --flamegraph` (faultlab_report/flamegraph.py)."""
    from faultlab_report import flamegraph
    try:
        flamegraph.main(args)
    except BadInput as error:
        print(f"faultlab: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as error:
        print(f"faultlab: flame graphs: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv):
    if len(argv) > 1 and argv[1] == "compare":
        return compare_main(argv[2:])
    if len(argv) > 1 and argv[1] == "flamegraphs":
        return flamegraphs_main(argv[2:])
    if len(argv) > 1 and argv[1] not in KINDS:
        return run_report_main(argv[1:])
    if len(argv) != 3:
        print(f"faultlab: usage: {REPORT_USAGE}", file=sys.stderr)
        return 2
    return write_and_say(KINDS[argv[1]], argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
