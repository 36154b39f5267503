"""sweep: expand sweeps.yaml into runs, dispatch them through joblib, track them in MLflow."""
