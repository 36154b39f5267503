"""sweep: expand sweeps.yaml into runs, train them through joblib, track them in MLflow, and answer
which settings are best and how sure that is.

The packages, each of which may import only those before it (tests/sweep/test_layout.py checks it):

- errors.py, interrupts.py  the errors a user can cause; Ctrl-C and signals
- stats.py    how sure an answer is: means, intervals, Welch, Holm, P(ahead), power (pure numbers)
- spec/       the sweep file -> a validated spec -> its planned runs
- queue/      a run's life in the store: the stored run's schema, claims, leases, the change feed
- tracking/   MLflow: where the store is, the calls, the queue's store on it, the model registry
- adaptive/   where runs go: searches' samplers (Optuna), early stopping, adaptive seeds
- execute/    running a sweep: settings, jobs, the loop, the workers
- results/    the read side: fetch once -> numbers -> words -> figures -> the report
- handin/     the student's zip and its standalone mnist.py
- cli/        the `sweep` command, one module per subcommand
"""
