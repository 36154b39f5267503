"""What Optuna decides: which settings a search samples next (search.py, its studies rebuilt from the
runs in the store) and whether a run stops early (early_stop.py, judged against its grid's or
search's other runs as the store holds them).

It may import the sweep's spec and queue packages; nothing of tracking, execute, results or cli.
"""
