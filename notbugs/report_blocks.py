"""The report's document blocks (heading, paragraph, note, bullets, table, figure; the sample grid is in
notbugs/report_samples.py) and their two renderings: one HTML page with inline CSS, SVG and base64 PNGs, and
Markdown with its figures as files beside it. The report is one list of blocks rendered twice, so the two
can never disagree."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from notbugs.report_samples import SampleGrid, grid_png, png_bytes


@dataclass(frozen=True)
class Flag:
    """A coloured badge in HTML, bold text in Markdown. kind: bad | warn | ok | missing."""

    text: str
    kind: str


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Note:
    """Something is missing (not run yet, not built yet): shown as a visible box, never hidden."""

    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple


@dataclass(frozen=True)
class Table:
    headers: tuple
    rows: tuple  # of tuples of str | Flag


@dataclass(frozen=True)
class Figure:
    name: str  # file stem for the Markdown side (name.svg)
    svg: str
    caption: str


def esc(text) -> str:
    return html.escape(str(text), quote=True)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 24px auto; padding: 0 20px; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.3em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 10px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #d5d5d5; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; }
tr:nth-child(even) td { background: #fafafa; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 0.85em; white-space: nowrap; }
.badge.bad { background: #fde2e1; color: #9b1c1c; border: 1px solid #e9a5a3; font-weight: 600; }
.badge.warn { background: #fff1d6; color: #8a5300; border: 1px solid #e8c27a; font-weight: 600; }
.badge.ok { background: #e3f4e5; color: #1f6b2a; border: 1px solid #a9d8b0; }
.badge.missing { background: #eee; color: #555; border: 1px solid #ccc; }
.note { background: #fff8e1; border-left: 4px solid #e0a800; padding: 6px 12px; margin: 8px 0; }
figure { margin: 12px 0 20px; }
figcaption { font-size: 0.85em; color: #555; }
table.samples td { text-align: center; padding: 3px; background: #fff; }
table.samples th[scope=row] { vertical-align: middle; }
table.samples img { image-rendering: pixelated; display: block; margin: 0 auto; }
table.samples .label { font-size: 0.8em; color: #333; }
"""


def _html_cell(value) -> str:
    if isinstance(value, Flag):
        return f'<span class="badge {value.kind}">{esc(value.text)}</span>'
    return esc(value)


def _html_samples(grid: SampleGrid) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in ("set", *grid.columns))
    rows = []
    for label, cells in grid.rows:
        tds = []
        for image, caption in cells:
            img = "—" if image is None else (
                f'<img src="data:image/png;base64,{base64.b64encode(png_bytes(image)).decode()}" '
                f'width="{image.shape[1]}" height="{image.shape[0]}" alt="{esc(label)}: {esc(caption)}">')
            tds.append(f'<td>{img}<div class="label">{esc(caption)}</div></td>')
        rows.append(f'<tr><th scope="row">{esc(label)}</th>{"".join(tds)}</tr>')
    return f'<table class="samples"><tr>{head}</tr>{"".join(rows)}</table>'


def render_html(blocks: list) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Note):
            parts.append(f'<div class="note"><strong>Not available:</strong> {esc(block.text)}</div>')
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_html_cell(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            parts.append(f"<figure>{block.svg}<figcaption>{esc(block.caption)}</figcaption></figure>")
        elif isinstance(block, SampleGrid):
            parts.append(_html_samples(block))
    title = "notbugs reproduction report"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def _md_cell(value) -> str:
    text = f"**{value.text}**" if isinstance(value, Flag) and value.kind in ("bad", "warn") else (
        value.text if isinstance(value, Flag) else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(blocks: list) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the figure files it links to (name -> bytes)."""
    parts, files = [], {}
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Para):
            parts.append(block.text)
        elif isinstance(block, Note):
            parts.append(f"> **Not available:** {block.text}")
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {_md_cell(item)}" for item in block.items))
        elif isinstance(block, Table):
            parts.append(_md_table(block.headers, block.rows))
        elif isinstance(block, Figure):
            files[f"{block.name}.svg"] = block.svg.encode()
            parts.append(f"![{block.caption}]({block.name}.svg)\n\n*{block.caption}*")
        elif isinstance(block, SampleGrid):
            files["samples.png"] = grid_png(block)
            labels = tuple((label, *(caption for _, caption in cells)) for label, cells in block.rows)
            parts.append("![Samples: rows " + ", ".join(r[0] for r in block.rows) + "](samples.png)\n\n"
                         + _md_table(("set", *block.columns), labels))
    return "\n\n".join(parts) + "\n", files
