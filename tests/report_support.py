"""What the report tests share: reading fixtures, finding rows, and reading the SVGs matplotlib
writes (svg.fonttype none keeps text as text)."""

import copy
import json
import os
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
REPORT = ROOT / "reports" / "report.py"
PYTHON = "/usr/bin/python3"  # Debian's, which has python3-matplotlib
SVG = "{http://www.w3.org/2000/svg}"


def run_report(*args):
    """reports/report.py ARGS, as the front door runs it."""
    return subprocess.run([PYTHON, "-B", str(REPORT), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def check_refused(test, result, directory=None, before=None):
    """Bad input as the reports promise it: exit code 2, nothing on stdout, one line on stderr
    starting "faultlab: ", and `directory` holding what it held before (`before`, its listing).
    Returns the line."""
    test.assertEqual(result.returncode, 2, result.stderr)
    test.assertEqual(result.stdout, "")
    lines = result.stderr.splitlines()
    test.assertEqual(len(lines), 1, result.stderr)
    test.assertTrue(lines[0].startswith("faultlab: "), lines[0])
    if before is not None:
        test.assertEqual(sorted(os.listdir(directory)), before)
    return lines[0]


def listing(directory):
    """sorted(os.listdir(directory)), or None when it is not a directory."""
    return sorted(os.listdir(directory)) if Path(directory).is_dir() else None


def load_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def iteration_rows(document, run_name):
    return [row for row in document["benchmarks"]
            if row["run_name"] == run_name and row["run_type"] == "iteration"]


def run_name_of(document, prefix):
    """The one run_name starting with prefix (e.g. 'fork/latency/anon4k/rss_mib:256/')."""
    names = {row["run_name"] for row in document["benchmarks"]
             if row["run_name"].startswith(prefix)}
    assert len(names) == 1, (prefix, names)
    return names.pop()


def renamed(row, old, new):
    row = copy.deepcopy(row)
    for key in ("name", "run_name"):
        row[key] = row[key].replace(old, new, 1)
    return row


def flat(text):
    """Whitespace collapsed: the summary wraps long lines."""
    return " ".join(text.split())


def legend_texts(svg_path):
    """The text of every legend entry of an SVG written by matplotlib (svg.fonttype none)."""
    root = ElementTree.parse(svg_path).getroot()
    legends = [group for group in root.iter(f"{SVG}g")
               if group.get("id", "").startswith("legend")]
    return ["".join(text.itertext()) for legend in legends for text in legend.iter(f"{SVG}text")]


def all_texts(svg_path):
    root = ElementTree.parse(svg_path).getroot()
    return flat(" ".join("".join(text.itertext()) for text in root.iter(f"{SVG}text")))
