"""faultlab's report writers in Python: they read a run's results.json (never console text) and
write charts, CSV and a plain-text summary beside it.

- results: load results.json, one aggregated row per benchmark, figures with their spread
  across repetitions, and writing a report's files so that none is ever half-written.
- charts: the shared matplotlib style and chart helpers (byte-identical SVG for the same input).
- fork: `faultlab report fork`, the fork suite against the model's fork and COW-PTE.
- uffd: `faultlab report uffd`, userfaultfd round trips and guard regions, the model beside them.
- numa: `faultlab report numa`, the numa suite's matrices as heatmaps and the placement advice.
- compare: `faultlab compare A B`, each benchmark of one run against another's, with a U test
  over the repetitions; compare_runs() returns the rows as data for other reports.
- html: `faultlab report DIR`, the whole run as one page (index.html), written with every report
  above that the run has rows for; fault: the fault suite's charts it draws.
- page: the frame of the HTML pages (index.html, `faultlab compare --html`): self-contained,
  offline, no JavaScript.
"""
