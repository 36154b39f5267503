"""The report as a PDF to read: a title, the sections in order, each figure beside its conclusions,
tables as real tables (split across pages under a repeated header) and "page N of M" in the footer.

`render_pdf` takes the report's blocks: objects with `kind` (h1, h2, p, table, figure) and
`content` (text, a pandas DataFrame, or a (PNG path, caption) pair).
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
    Image,
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

    size = next((s for s in TABLE_FONT_SIZES if sum(natural_widths(s)) <= width), TABLE_FONT_SIZES[-1])
    widths = natural_widths(size)
    data: list[list] = [header, *rows]
    if sum(widths) > width:  # too wide even at the smallest size: share out the width and wrap the cells
        widths = [w * width / sum(widths) for w in widths]
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


def _figure(png: Path, caption: str, styles, width: float, max_height: float) -> list:
    """The image scaled to the text width (less, if it would be too tall), its caption under it."""
    pixels_wide, pixels_high = ImageReader(str(png)).getSize()
    scale = min(width / pixels_wide, max_height / pixels_high)
    return [Image(str(png), width=pixels_wide * scale, height=pixels_high * scale),
            Paragraph(escape(caption), styles["caption"])]


def render_pdf(blocks, path: str | Path, title: str | None = None) -> Path:
    """Write `blocks` to the PDF `path`. `title`, when given, heads the first page; it (else the
    first h1) is also the document's title in its properties. Returns the path."""
    path = Path(path)
    styles = _styles()
    heading = title or next((str(b.content) for b in blocks if b.kind == "h1"), "")
    doc = SimpleDocTemplate(str(path), pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                            bottomMargin=MARGIN, title=heading, creator="mnist-sweep")
    width, height = doc.width, doc.height
    story: list = [Paragraph(escape(title), styles["title"])] if title else []
    section: list | None = None  # the open section: its heading and what must stay on the page with it

    def close():
        nonlocal section
        if section:
            story.append(KeepTogether(section))
        section = None

    for block in blocks:
        if block.kind in ("h1", "h2"):
            close()
            section = [Paragraph(escape(str(block.content)), styles[block.kind])]
        elif block.kind == "p":
            (story if section is None else section).append(Paragraph(escape(str(block.content)), styles["p"]))
        elif block.kind == "figure":
            png, caption = block.content
            section = (section or []) + _figure(Path(png), str(caption), styles, width, 0.55 * height)
            close()
        elif block.kind == "table":
            # a table may be long: it flows on under its section, which starts on a new page only when
            # little room is left on this one (no KeepTogether: it would push a long table to a new page)
            story += [CondPageBreak(height / 4), *(section or []), _table(block.content, width), Spacer(1, 8)]
            section = None
        else:
            raise ValueError(f"unknown report block kind {block.kind!r}")
    close()
    doc.build(story, canvasmaker=_NumberedCanvas)
    return path
