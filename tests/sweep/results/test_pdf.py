"""The PDF report: read back from the file's own bytes (page streams decoded with the standard library)."""
import base64
import re
import shutil
import subprocess
import zlib

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sweep.results.pdf import render_pdf
from sweep.results.report import Block


def page_streams(pdf: bytes) -> dict[int, bytes]:
    """Each page's decoded content stream, by page number (read from its "page N of M" footer)."""
    pages = {}
    for head, body in re.findall(rb"<<((?:(?!>>\s*stream).)*?)>>\s*stream\r?\n(.*?)endstream", pdf, re.S):
        if b"/Subtype /Image" in head:
            continue
        if b"/ASCII85Decode" in head:
            body = base64.a85decode(body.strip(), adobe=True)
        if b"/FlateDecode" in head:
            body = zlib.decompress(body)
        footer = re.search(rb"\(page (\d+) of (\d+)\) Tj", body)
        if footer:
            pages[int(footer.group(1))] = body
    return pages


def page_count(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b(?!s)", pdf))


def shown(text: str) -> bytes:
    """How the page stream draws `text`: as a PDF string shown with Tj."""
    return b"(" + text.replace("(", "\\(").replace(")", "\\)").encode() + b") Tj"


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ax.plot([1, 2, 3], [3, 1, 2], "o-")
    path = tmp_path_factory.mktemp("figure") / "curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def test_title_sections_table_figure_and_page_numbers(png, tmp_path):
    table = pd.DataFrame({"activation": ["relu", "tanh"], "lr": [0.1, 0.003], "test_error": ["2.54%", "3.10%"],
                          "epochs": [10, 10], "note": ["best", None]})
    blocks = [Block("h1", "Sweep report: tiny"), Block("p", "Two runs."),
              Block("h2", "Grid one"), Block("p", "Relu wins."), Block("figure", (png, "Error against lr.")),
              Block("table", table), Block("h2", "Missing runs"), Block("p", "None.")]
    path = render_pdf(blocks, tmp_path / "report.pdf", title="CSE4152 homework 5")
    pdf = path.read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    pages = page_streams(pdf)
    total = page_count(pdf)
    assert sorted(pages) == list(range(1, total + 1))
    assert all(shown(f"page {n} of {total}") in body for n, body in pages.items())
    text = b"".join(pages[n] for n in sorted(pages))
    order = ["CSE4152 homework 5", "Sweep report: tiny", "Two runs.", "Grid one", "Relu wins.", "Error against lr.",
             "activation", "test_error", "relu", "2.54%", "0.003", "Missing runs", "None."]
    positions = [text.find(shown(s)) for s in order]
    assert -1 not in positions, [s for s, p in zip(order, positions) if p == -1]
    assert positions == sorted(positions)  # in the order of the blocks
    assert b"/Title (CSE4152 homework 5)" in pdf


def test_long_table_splits_across_pages_under_a_repeated_header(tmp_path):
    rows = pd.DataFrame({"run_name": [f"run-{i:03d}" for i in range(120)], "lr": [0.01] * 120,
                         "test_error": [f"{i / 10:.2f}%" for i in range(120)]})
    blocks = [Block("h1", "Long"), Block("h2", "Every run"), Block("table", rows)]
    pdf = render_pdf(blocks, tmp_path / "long.pdf").read_bytes()
    pages = page_streams(pdf)
    assert len(pages) >= 2
    for body in pages.values():
        assert body.count(shown("run_name")) == 1  # the header, once on every page the table reaches
    text = b"".join(pages[n] for n in sorted(pages))
    assert all(text.count(shown(f"run-{i:03d}")) == 1 for i in range(120))
    assert text.index(shown("run-119")) > text.index(shown("run-000"))


def test_a_figure_keeps_its_caption_and_a_heading_its_first_line(png, tmp_path):
    moved = shrunk = 0
    for filler in range(14, 40, 2):  # push the section further down page 1 each time
        blocks = [Block("h1", "Report"), *[Block("p", f"Filler line {i}.") for i in range(filler)],
                  Block("h2", "Section with a figure"), Block("p", "Its conclusion."),
                  Block("figure", (png, "The figure's caption."))]
        pages = page_streams(render_pdf(blocks, tmp_path / f"f{filler}.pdf").read_bytes())
        heading = next(n for n, body in pages.items() if shown("Section with a figure") in body)
        assert shown("Its conclusion.") in pages[heading], filler
        figure = next(n for n, body in pages.items() if b" Do" in body)
        assert shown("The figure's caption.") in pages[figure], filler
        moved += figure == 2
        width = float(re.search(rb"q\s+([\d.]+) 0 0 ([\d.]+) [\d.]+ [\d.]+ cm\s+/\S+ Do", pages[figure]).group(1))
        shrunk += width < 460  # drawn smaller to end page 1 rather than leave its foot empty
    assert 0 < moved < 13 and shrunk  # some figures fitted on page 1, some smaller, the others moved to page 2


def test_a_table_section_never_leaves_its_heading_alone(tmp_path):
    rows = pd.DataFrame({"run_name": [f"run-{i}" for i in range(30)], "test_error": ["1.00%"] * 30})
    for filler in range(20, 50, 3):
        blocks = [Block("h1", "Report"), *[Block("p", f"Filler line {i}.") for i in range(filler)],
                  Block("h2", "Section with a table"), Block("p", "Its conclusion."), Block("table", rows)]
        pages = page_streams(render_pdf(blocks, tmp_path / f"t{filler}.pdf").read_bytes())
        heading = next(n for n, body in pages.items() if shown("Section with a table") in body)
        assert shown("Its conclusion.") in pages[heading] and shown("run-0") in pages[heading], filler


def test_unknown_block_kind_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown report block kind 'chart'"):
        render_pdf([Block("chart", "x")], tmp_path / "x.pdf")


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed")
def test_text_extracts_with_pdftotext(png, tmp_path):
    wide = pd.DataFrame({f"column_number_{i}": [1000.5 * i, 2.25] for i in range(16)})
    blocks = [Block("h1", "Report"), Block("h2", "Wide"), Block("table", wide), Block("figure", (png, "Caption."))]
    path = render_pdf(blocks, tmp_path / "wide.pdf")
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout
    assert "Report" in text and "Wide" in text and "15007.5" in text and "page 1 of 1" in text
