"""The report as a PDF to read: a title, the sections in order, each figure beside its conclusions,
tables as real tables (split across pages under a repeated header) and "page N of M" in the footer.

`render_pdf` takes the report's blocks: objects with `kind` (h1, h2, p, answer, table, figure) and
`content` (text, a (question, answer) pair, a pandas DataFrame, or a (PNG path, caption) pair).
"""
from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape

import pandas as pd
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    CondPageBreak,
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

MARGIN = 2 * cm
FONT, BOLD = "Helvetica", "Helvetica-Bold"
TABLE_FONT_SIZES = (9, 8.5, 8, 7.5, 7, 6.5, 6, 5.5, 5)  # tried in turn until the table fits the page width
WRAP_FROM = 7  # rather than go below this size, cells wrap at a space where every word still fits
CELL_PAD = 4  # points left and right of a cell's text
ZEBRA = colors.HexColor("#f2f4f7")
HEADER = colors.HexColor("#dde3ea")
RULE = colors.HexColor("#9aa5b1")
NUMBER = re.compile(r"[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?%?", re.I)


def _styles() -> dict[str, ParagraphStyle]:
    sheet = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=sheet["Title"], alignment=0),
        "h1": sheet["Heading1"],
        "h2": ParagraphStyle("h2", parent=sheet["Heading2"], spaceBefore=14),
        "p": ParagraphStyle("p", parent=sheet["BodyText"], leading=13.5, spaceAfter=5),
        "caption": ParagraphStyle("caption", parent=sheet["BodyText"], fontName="Helvetica-Oblique", fontSize=9,
                                  leading=11, alignment=TA_CENTER, textColor=colors.HexColor("#444444"),
                                  spaceBefore=3, spaceAfter=10),
    }


class _NumberedCanvas(Canvas):
    """Keeps every page until the end so that each footer can say how many pages there are."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pages = []

    def showPage(self):
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self):
        for number, page in enumerate(self._pages, 1):
            self.__dict__.update(page)
            self.setFont(FONT, 8)
            self.setFillColor(colors.grey)
            self.drawCentredString(A4[0] / 2, MARGIN / 2, f"page {number} of {len(self._pages)}")
            super().showPage()
        super().save()


def _cell(value) -> str:
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _is_numeric(column: pd.Series, cells: list[str]) -> bool:
    """Numbers, or text that reads as numbers ("2.54%", "0.001"): right-aligned."""
    if pd.api.types.is_bool_dtype(column):
        return False
    if pd.api.types.is_numeric_dtype(column):
        return True
    filled = [c for c in cells if c]
    return bool(filled) and all(NUMBER.fullmatch(c) for c in filled)


def _table(frame: pd.DataFrame, width: float) -> Table:
    header = [str(c) for c in frame.columns]
    rows = [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    right = [_is_numeric(frame.iloc[:, i], [r[i] for r in rows]) for i in range(len(header))]

    def natural_widths(size):
        return [max([stringWidth(header[i], BOLD, size)] + [stringWidth(r[i], FONT, size) for r in rows])
                + 2 * CELL_PAD for i in range(len(header))]

    def longest_words(size):
        return [max([stringWidth(w, BOLD, size) for w in header[i].split()]
                    + [stringWidth(w, FONT, size) for r in rows for w in r[i].split()]) + 2 * CELL_PAD
                for i in range(len(header))]

    # the largest size (down to WRAP_FROM) at which the table fits, else WRAP_FROM with its cells wrapped
    # between words, else the largest smaller size at which it fits, else the smallest, its cells wrapped
    readable = [s for s in TABLE_FONT_SIZES if s >= WRAP_FROM]
    size, wrap = next(((s, False) for s in readable if sum(natural_widths(s)) <= width), (None, True))
    size = size or (WRAP_FROM if sum(longest_words(WRAP_FROM)) <= width else None)
    if size is None:
        size = next((s for s in TABLE_FONT_SIZES if sum(natural_widths(s)) <= width), TABLE_FONT_SIZES[-1])
        wrap = sum(natural_widths(size)) > width
    widths = natural_widths(size)
    data: list[list] = [header, *rows]
    if wrap:
        widths = _shared(widths, longest_words(size), width)
        cell = ParagraphStyle("cell", fontName=FONT, fontSize=size, leading=size * 1.2)
        aligned = [ParagraphStyle(f"cell{i}", parent=cell, alignment=TA_RIGHT if r else 0) for i, r in enumerate(right)]
        bold = [ParagraphStyle(f"head{i}", parent=a, fontName=BOLD) for i, a in enumerate(aligned)]
        data = [[Paragraph(escape(t), bold[i]) for i, t in enumerate(header)],
                *[[Paragraph(escape(t), aligned[i]) for i, t in enumerate(r)] for r in rows]]
    style = [
        ("FONT", (0, 0), (-1, -1), FONT, size, size * 1.2),
        ("FONT", (0, 0), (-1, 0), BOLD, size, size * 1.2),
        ("BACKGROUND", (0, 0), (-1, 0), HEADER),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, ZEBRA]),
        ("LINEBELOW", (0, 0), (-1, 0), 0.8, RULE),
        ("BOX", (0, 0), (-1, -1), 0.5, RULE),
        ("LINEBELOW", (0, "splitlast"), (-1, "splitlast"), 0.5, RULE),  # close each page's part of the table
        ("LEFTPADDING", (0, 0), (-1, -1), CELL_PAD),
        ("RIGHTPADDING", (0, 0), (-1, -1), CELL_PAD),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
    ]
    style += [("ALIGN", (i, 0), (i, -1), "RIGHT") for i, r in enumerate(right) if r]
    return Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT", style=TableStyle(style))


MIN_SHRINK = 0.8  # a figure is drawn down to this share of its size rather than leave the page's end empty
KEPT_ROWS = 3     # rows of a table kept on the page of the text that introduces it


class _Figure(Flowable):
    """An image with its caption under it, never apart: the image at the text width (less, if it
    would be taller than `max_height`), or smaller, down to MIN_SHRINK of that, where that lets it
    end the page it would otherwise leave empty."""

    def __init__(self, png: Path, caption: Paragraph, max_height: float):
        super().__init__()
        self.png, self.caption, self.max_height = str(png), caption, max_height
        self.pixels = ImageReader(self.png).getSize()

    def _sizes(self, width: float, height: float) -> tuple:
        style = self.caption.style
        caption = self.caption.wrap(width, height)[1] + style.spaceBefore + style.spaceAfter
        wide, high = self.pixels
        full = min(width / wide, self.max_height / high)
        room = (height - caption) / (high * full)
        scale = full * (room if MIN_SHRINK <= room < 1 else 1)
        return wide * scale, high * scale, caption

    def wrap(self, availWidth, availHeight):
        self.image_width, self.image_height, self.caption_height = self._sizes(availWidth, availHeight)
        self.width = availWidth
        return availWidth, self.image_height + self.caption_height

    def split(self, availWidth, availHeight):
        return []  # whole, on this page or the next

    def draw(self):
        style = self.caption.style
        self.canv.drawImage(self.png, (self.width - self.image_width) / 2, self.caption_height, self.image_width,
                            self.image_height)
        self.caption.drawOn(self.canv, 0, style.spaceAfter)


def _shared(natural: list, least: list, width: float) -> list:
    """Column widths that fill `width`: each at least its longest word (`least`) where they all fit,
    the rest of the width shared by how much more each would take; else in proportion."""
    spare, wanted = width - sum(least), sum(n - m for n, m in zip(natural, least))
    if spare < 0 or wanted <= 0:
        return [w * width / sum(natural) for w in natural]
    return [m + (n - m) * spare / wanted for n, m in zip(natural, least)]


def _figure(png: Path, caption: str, styles, max_height: float) -> _Figure:
    return _Figure(png, Paragraph(escape(caption), styles["caption"]), max_height)


def _keep_headings(flowables: list) -> list:
    """Each heading kept on the page of what follows it (its first paragraph, figure or table)."""
    out, i = [], 0
    while i < len(flowables):
        if getattr(flowables[i], "is_heading", False) and i + 1 < len(flowables):
            out.append(KeepTogether(flowables[i:i + 2]))
            i += 2
        else:
            out.append(flowables[i])
            i += 1
    return out


def _height(flowables: list, width: float, height: float) -> float:
    return sum(f.wrap(width, height)[1] + f.getSpaceBefore() + f.getSpaceAfter() for f in flowables)


def render_pdf(blocks, path: str | Path, title: str | None = None) -> Path:
    """Write `blocks` to the PDF `path`. `title`, when given, heads the first page; it (else the
    first h1) is also the document's title in its properties. Returns the path.

    The text flows from page to page; what must not be parted stays together: a heading with what
    follows it, a figure with its caption, and the paragraph just before a table (its caption) with
    the table's header and first rows (a long table goes on over the next pages under its header)."""
    path = Path(path)
    styles = _styles()
    heading = title or next((str(b.content) for b in blocks if b.kind == "h1"), "")
    doc = SimpleDocTemplate(str(path), pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                            bottomMargin=MARGIN, title=heading, creator="mnist-sweep")
    width, height = doc.width, doc.height
    story: list = [Paragraph(escape(title), styles["title"])] if title else []
    pending: list = []  # headings and paragraphs not yet placed: they go with what comes next

    for block in blocks:
        if block.kind in ("h1", "h2"):
            flowable = Paragraph(escape(str(block.content)), styles[block.kind])
            flowable.is_heading = True
            pending.append(flowable)
        elif block.kind == "p":
            pending.append(Paragraph(escape(str(block.content)), styles["p"]))
        elif block.kind == "answer":
            question, answer = block.content
            pending.append(Paragraph(f"<b>{escape(question)}.</b> {escape(answer)}", styles["p"]))
        elif block.kind == "figure":
            png, caption = block.content
            story += _keep_headings(pending + [_figure(Path(png), str(caption), styles, 0.55 * height)])
            pending = []
        elif block.kind == "table":
            frame = block.content
            cut = len(pending) - (1 if pending and not getattr(pending[-1], "is_heading", False) else 0)
            while cut and getattr(pending[cut - 1], "is_heading", False):
                cut -= 1  # the headings right above go with it too
            story += _keep_headings(pending[:cut])
            lead = pending[cut:]
            needed = _height(lead, width, height) + _table(frame.head(KEPT_ROWS), width).wrap(width, height)[1]
            story += [CondPageBreak(needed + 6), *lead, _table(frame, width), Spacer(1, 8)]
            pending = []
        else:
            raise ValueError(f"unknown report block kind {block.kind!r}")
    story += _keep_headings(pending)
    doc.build(story, canvasmaker=_NumberedCanvas)
    return path
