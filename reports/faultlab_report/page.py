"""The frame of faultlab's HTML pages (the run's index.html, `faultlab compare --html`): one
self-contained file that reads offline and without JavaScript.

- Inline CSS, no script; charts are inline SVG (inline_svg), whose text stays text and is drawn
  in a font the machine has (DejaVu Sans, else the browser's sans-serif): no font, image or
  style is fetched.
- A Content-Security-Policy meta tag holds the page to that: the browser refuses any load but
  inline styles and data: images (matplotlib embeds a heatmap's cells as a data: PNG inside
  its SVG), so a chart that pointed elsewhere would show as a refused load, not a silent fetch.
- Tables and preformatted text scroll sideways in their own box; the page itself never gets
  wider than the window.
"""

import html
import re
from dataclasses import dataclass

# No default sources at all; inline <style> and style attributes (the SVGs use both); data:
# images; no base URI or form target.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                           "base-uri 'none'; form-action 'none'")

CSS = """
body { font-family: "DejaVu Sans", Verdana, sans-serif; color: #1d1d1d; background: #fff;
       max-width: 1250px; margin: 0 auto; padding: 0.5em 1.5em 3em; line-height: 1.45; }
h1 { font-size: 1.55em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #c8c8c8; margin-top: 2.2em; padding-bottom: 0.1em; }
h3 { font-size: 1.08em; margin-top: 1.6em; }
p.lead { font-size: 1.05em; margin-top: 0; }
a { color: #0b57a4; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.15em 1em; }
dl.facts dt { font-weight: bold; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.warnings { border: 2px solid #b3261e; background: #fdeceb; padding: 0.4em 1.2em 0.6em;
            margin: 1.2em 0; }
.warnings h2, .warnings h3 { border: none; margin: 0.3em 0; color: #8c1d18; }
.warnings li { margin: 0.3em 0; }
.warnings li.emulation { font-weight: bold; }
.note { background: #f3f6fa; border-left: 4px solid #8aa4c2; padding: 0.3em 0.8em; }
nav.toc ol { columns: 2; margin-top: 0.3em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.84em; margin: 0.5em 0; }
th, td { border: 1px solid #d6d6d6; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #eef0f3; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.name { white-space: nowrap; }
td .below { font-size: 0.88em; color: #5f5f5f; white-space: normal; }
td.why { min-width: 16em; }
tr.skipped td { color: #6b6b6b; }
tr.failed td { background: #fdeceb; }
tr.slower td.verdict { color: #a11d16; font-weight: bold; }
tr.faster td.verdict { color: #176b2c; font-weight: bold; }
span.status-skipped { color: #6b6b6b; font-style: italic; }
span.status-failed { color: #a11d16; font-weight: bold; }
pre { background: #f6f6f6; border: 1px solid #e2e2e2; padding: 0.6em 0.8em; overflow-x: auto;
      font-size: 0.8em; line-height: 1.35; }
figure { margin: 1.2em 0; }
figure svg.chart { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #444; }
details > summary { cursor: pointer; }
"""


def escape(text):
    return html.escape(str(text), quote=True)


def frame(title, body):
    """The whole document around body (HTML already escaped), as text."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n'
            f'{body}\n</body>\n</html>\n')


@dataclass
class Cell:
    """A table cell with more than text: a class (as CSS knows them), a second line under the
    text (smaller, grey: a row's label), or a span over several columns."""
    text: str
    css: str = ""
    below: str = ""
    span: int = 1

    def html(self):
        attributes = (f' class="{self.css}"' if self.css else "") + \
            (f' colspan="{self.span}"' if self.span > 1 else "")
        below = f'<div class="below">{escape(self.below)}</div>' if self.below else ""
        return f"<td{attributes}>{escape(self.text)}{below}</td>"


def table(header, rows, classes=None):
    """A table, its text escaped here. rows: [(row class or "", [cell, ...])], a cell being
    text or a Cell; classes: {column: class} of the text cells, as CSS knows them: "num"
    (figures, right-aligned), "name" (benchmark names, not wrapped), "verdict"."""
    classes = classes or {}
    parts = ['<div class="scroll"><table>',
             "<thead><tr>" + "".join(f"<th>{escape(cell)}</th>" for cell in header) +
             "</tr></thead><tbody>"]
    for row_class, cells in rows:
        attribute = f' class="{row_class}"' if row_class else ""
        tds = "".join(cell.html() if isinstance(cell, Cell)
                      else Cell(cell, classes.get(column, "")).html()
                      for column, cell in enumerate(cells))
        parts.append(f"<tr{attribute}>{tds}</tr>")
    parts.append("</tbody></table></div>")
    return "\n".join(parts)


def preformatted(text):
    return f"<pre>{escape(text.rstrip())}</pre>"


# matplotlib numbers its SVG elements the same way in every chart (figure_1, patch_1, and the
# hashed ids of markers and clip paths): inside one page every id, and every reference to one,
# gets the chart's own prefix, so that no chart draws with another's definitions.
SVG_ID = re.compile(r'\bid="([^"]*)"')
SVG_URL_REFERENCE = re.compile(r"url\(#([^)]*)\)")
SVG_HREF_REFERENCE = re.compile(r'\b((?:xlink:)?href)="#([^"]*)"')
SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)


def inline_svg(data, prefix, label):
    """An SVG file's bytes as an element to put in the page: without the XML declaration and
    DOCTYPE (HTML has neither) and the RDF metadata, ids prefixed with prefix, and labelled for
    screen readers."""
    text = data.decode("utf-8")
    start = text.find("<svg")
    if start < 0:
        raise ValueError(f"{label}: not an SVG document")
    text = SVG_METADATA.sub("", text[start:])
    text = SVG_ID.sub(lambda match: f'id="{prefix}{match.group(1)}"', text)
    text = SVG_URL_REFERENCE.sub(lambda match: f"url(#{prefix}{match.group(1)})", text)
    text = SVG_HREF_REFERENCE.sub(lambda match: f'{match.group(1)}="#{prefix}{match.group(2)}"',
                                  text)
    return text.replace("<svg", f'<svg class="chart" role="img" aria-label="{escape(label)}"', 1)
