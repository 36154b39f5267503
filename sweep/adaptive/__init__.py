"""Where runs go: which settings a search samples next (search.py, Optuna's studies rebuilt from the
runs in the store), whether a run stops early (early_stop.py, judged against its grid's or search's
other runs as the store holds them), and which seeds a grid's settings get (seeds.py: the rule,
pure; wanted.py: the runs it wants, as the store holds the finished ones).

It may import the sweep's stats, spec and queue packages; nothing of tracking, execute, results or cli.
"""
