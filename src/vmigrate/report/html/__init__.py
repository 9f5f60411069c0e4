"""The HTML report of one run: RUN/report.html, one self-contained page a person can open offline.

It shows result.json as readable tables (migration, service, per-host resources, data moved,
verification, checks) and the whole run as one time line (plotly, every panel sharing the time
axis) drawn from RUN/series. plotly.js is inlined once, so the page needs no network and no other
file. The output depends only on the run directory: the same input gives the same bytes.

page.py puts it together: header.py (header, banner, headline cards, checks, pre-flight) and
sections.py (the detail tables), both written with formatting.py; timeline.py draws the panels of
panels.py into figure.py's figure, from the arrays of series.py. style.py is the look, which the
sweep comparison page shares.
"""
