"""A small document model (headings, paragraphs, warnings, tables, figures), rendered to one self-contained
HTML page and to Markdown, and the number formats the report uses."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Figure:
    path: Path          # a PNG inside the report folder
    caption: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Document:
    """Blocks in order: ("h", level, text, anchor), ("p", text), ("warn", text), ("pre", text), Table, Figure."""
    title: str
    blocks: list = field(default_factory=list)

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        self.blocks.append(("h", level, text, anchor))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def warning(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def add(self, block) -> None:
        self.blocks.append(block)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.3em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.8em;overflow-x:auto;font-size:.8em}
.warn{background:#fff3cd;border:2px solid #d39e00;padding:.8em 1em;font-weight:600;margin:1em 0}
code{background:#f3f3f3;padding:0 .2em}
"""


def _is_number(text: str) -> bool:
    t = text.replace("±", "").replace("−", "-").replace("<", "").replace("[", "").replace("]", "").split()
    try:
        return bool(t) and all(float(x.strip("%,")) is not None for x in t)
    except ValueError:
        return False


def render_html(doc: Document) -> str:
    """The whole page, images inlined as base64 PNG."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(doc.title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for block in doc.blocks:
        if isinstance(block, Table):
            cells = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td class='num'>{esc(c)}</td>" if _is_number(c) else f"<td>{esc(c)}</td>"
                                            for c in row) + "</tr>" for row in block.rows)
            caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
            parts.append(f"<table>{caption}<thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{esc(block.caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{esc(block.caption)}</figcaption></figure>")
        elif block[0] == "h":
            _, level, text, anchor = block
            ident = f" id='{esc(anchor)}'" if anchor else ""
            parts.append(f"<h{level}{ident}>{esc(text)}</h{level}>")
        elif block[0] == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif block[0] == "warn":
            parts.append(f"<div class='warn'>⚠ {esc(block[1])}</div>")
        elif block[0] == "pre":
            parts.append(f"<pre>{esc(block[1])}</pre>")
        elif block[0] == "nav":
            items = "".join(f"<li><a href='#{esc(a)}'>{esc(t)}</a></li>" for t, a in block[1])
            parts.append(f"<nav><ul>{items}</ul></nav>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_markdown(doc: Document, root: Path) -> str:
    """The same content as Markdown; figures are linked relative to ``root`` (the report folder)."""
    def text(t: str) -> str:  # tokens like <chest_xray-normal> would read as HTML tags
        return t.replace("<", "&lt;").replace(">", "&gt;")

    def cell(t: str) -> str:
        return text(t).replace("|", "\\|").replace("\n", " ")

    out = []
    for block in doc.blocks:
        if isinstance(block, Table):
            out.append("| " + " | ".join(cell(h) for h in block.header) + " |")
            out.append("|" + "|".join("---" for _ in block.header) + "|")
            out.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows)
            if block.caption:
                out.append(f"\n*{text(block.caption)}*")
        elif isinstance(block, Figure):
            out.append(f"![{text(block.caption)}]({block.path.relative_to(root).as_posix()})\n\n*{text(block.caption)}*")
        elif block[0] == "h":
            anchor = f'<a id="{block[3]}"></a>\n\n' if block[3] else ""
            out.append(anchor + "#" * block[1] + " " + text(block[2]))
        elif block[0] == "p":
            out.append(text(block[1]))
        elif block[0] == "warn":
            out.append(f"> **Warning:** {text(block[1])}")
        elif block[0] == "pre":
            out.append("```\n" + block[1].rstrip("\n") + "\n```")
        elif block[0] == "nav":
            out.extend(f"- [{text(t)}](#{a})" for t, a in block[1])
        out.append("")
    return "\n".join(out)


# -- formatting ----------------------------------------------------------------------------------------------

def fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_count(values) -> str:
    """A count that is the same for every seed, or its range."""
    values = [v for v in values if v is not None]
    if not values:
        return "?"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"
