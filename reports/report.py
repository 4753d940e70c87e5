#!/usr/bin/python3
"""faultlab's reports from a run directory: report.py KIND DIR (kinds: fork, uffd).

Reads DIR/results.json and writes the report's files into DIR; prints the summary. Bad input
(no such directory, no results.json, not faultlab's JSON, no rows for the report) is one line on
stderr and exit code 2, with nothing written.

Runs with Debian's /usr/bin/python3, which has python3-matplotlib (the `python3` on PATH may be
another install without it).
"""

import sys

# The source tree's .gitignore does not cover __pycache__: write none there.
sys.dont_write_bytecode = True

from faultlab_report import fork, uffd  # noqa: E402
from faultlab_report.results import BadInput  # noqa: E402

KINDS = {"fork": fork.write_report, "uffd": uffd.write_report}


def main(argv):
    if len(argv) != 3 or argv[1] not in KINDS:
        kind = argv[1] if len(argv) > 1 else ""
        what = f"unknown report '{kind}'" if kind and kind not in KINDS else "usage"
        print(f"faultlab: {what}: report.py KIND DIR (kinds: {', '.join(KINDS)})",
              file=sys.stderr)
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
