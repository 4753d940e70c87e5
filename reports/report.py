#!/usr/bin/python3
"""faultlab's reports from a run directory: report.py KIND DIR (kinds: fork, uffd, numa); and
the comparison of two runs: report.py compare A B [--csv FILE].

Reads DIR/results.json and writes the report's files into DIR; prints the summary. Bad input
(no such directory, no results.json, not faultlab's JSON, no rows for the report) is one line on
stderr and exit code 2, with nothing written.

compare prints, for each benchmark of both runs, B's figures against A's with a U test over
the repetitions (faultlab_report/compare.py), and with --csv writes the same rows to FILE. Bad
input (either directory, no benchmark in both, FILE's directory missing) is one line on stderr
and exit code 2, with nothing written.

Runs with Debian's /usr/bin/python3, which has python3-matplotlib (the `python3` on PATH may be
another install without it).
"""

import os
import sys

# The source tree's .gitignore does not cover __pycache__: write none there.
sys.dont_write_bytecode = True

from faultlab_report import fork, numa, uffd  # noqa: E402
from faultlab_report.results import BadInput, write_files  # noqa: E402

KINDS = {"fork": fork.write_report, "uffd": uffd.write_report, "numa": numa.write_report}


COMPARE_USAGE = "faultlab compare A B [--csv FILE]"


def csv_target(path):
    """(directory, file name) to write the CSV as; BadInput if it cannot be a new file there."""
    directory, name = os.path.split(os.path.abspath(path))
    if not name or os.path.isdir(path):
        raise BadInput(f"--csv {path}: a directory, not a file name")
    if not os.path.isdir(directory):
        raise BadInput(f"--csv {path}: no such directory {directory}")
    return directory, name


def compare_main(args):
    """report.py compare A B [--csv FILE]."""
    # Imported here: only compare needs scipy, which the other reports should not wait for.
    from faultlab_report import compare
    csv_path, runs, rest = None, [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--csv" and rest:
            csv_path = rest.pop(0)
        elif arg.startswith("--csv="):
            csv_path = arg.removeprefix("--csv=")
        elif arg.startswith("-"):
            what = "--csv takes a file name" if arg == "--csv" else f"unknown option '{arg}'"
            print(f"faultlab: {what}: {COMPARE_USAGE}", file=sys.stderr)
            return 2
        else:
            runs.append(arg)
    if len(runs) != 2 or csv_path == "":
        what = "--csv takes a file name" if csv_path == "" else "compare takes two run directories"
        print(f"faultlab: {what}: {COMPARE_USAGE}", file=sys.stderr)
        return 2
    try:
        target = csv_target(csv_path) if csv_path is not None else None
        comparison = compare.load_and_compare(*runs)
    except BadInput as error:
        print(f"faultlab: {error}", file=sys.stderr)
        return 2
    if target is not None:
        try:
            write_files(target[0], {target[1]: compare.csv_report(comparison).encode()})
        except OSError as error:
            print(f"faultlab: cannot write {csv_path}: {error}", file=sys.stderr)
            return 1
    sys.stdout.write(compare.text_report(comparison))
    if target is not None:
        print(f"faultlab: wrote {csv_path}", file=sys.stderr)
    return 0


def main(argv):
    if len(argv) > 1 and argv[1] == "compare":
        return compare_main(argv[2:])
    if len(argv) != 3 or argv[1] not in KINDS:
        kind = argv[1] if len(argv) > 1 else ""
        what = f"unknown report '{kind}'" if kind and kind not in KINDS else "usage"
        print(f"faultlab: {what}: report.py KIND DIR (kinds: {', '.join(KINDS)}), or "
              f"{COMPARE_USAGE}", file=sys.stderr)
        return 2
    directory = argv[2]
    try:
        summary, written = KINDS[argv[1]](directory)
    except BadInput as error:
        print(f"faultlab: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"faultlab: cannot write the report into {directory}: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(summary)
    print(f"faultlab: wrote {directory.rstrip('/')}/{{{','.join(written)}}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
