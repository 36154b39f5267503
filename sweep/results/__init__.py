"""The read side: a sweep's results, fetched from the store once (fetch.py), then numbers (sweep/stats.py,
best.py, analysis.py: pure functions of the fetched frame), words (words.py; answers.py: the report's
setup and its answer to each homework question), figures (figures.py) and the report's renderers
(report.py: Markdown and HTML; pdf.py).

It may import the sweep's spec, queue, adaptive (searches) and tracking packages; nothing of
execute, handin or cli.
"""
__all__ = ["SweepResults", "fetch_results"]


def __getattr__(name):  # loaded on first use (pandas): `sweep --help` never needs it
    if name in __all__:
        from . import fetch

        return getattr(fetch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
