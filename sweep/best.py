"""Tidy tables of tracked runs, and the best run per group. Pure pandas over search_runs output."""
from __future__ import annotations

from typing import Iterable, Optional

import pandas as pd

from mnist_core.config import SETTING_NAMES, SETTING_TYPES

from .lease import DIVERGED, GRIDS, KEY

METRICS = ("test_error", "train_error", "test_loss", "train_loss", "best_test_error", "training_seconds")


def tidy_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per MLflow training run: settings typed, final metrics, state and agent URI."""
    columns = ["run_id", "key", "name", "status", "diverged", "grids", "start_time", "end_time",
               *SETTING_NAMES, *METRICS, "agent_uri"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame({
        "run_id": frame["run_id"],
        "key": frame.get(f"tags.{KEY}"),
        "name": frame.get("tags.mlflow.runName"),
        "status": frame["status"],
        "diverged": frame.get(f"tags.{DIVERGED}", pd.Series("false", index=frame.index)).eq("true"),
        "grids": frame.get(f"tags.{GRIDS}", pd.Series("", index=frame.index)).fillna(""),
        "start_time": frame["start_time"],
        "end_time": frame["end_time"],
    })
    for name in SETTING_NAMES:
        raw = frame.get(f"params.{name}", pd.Series(pd.NA, index=frame.index))
        out[name] = pd.to_numeric(raw, errors="coerce") if SETTING_TYPES[name] != "str" else raw
    for metric in METRICS:
        out[metric] = frame.get(f"metrics.{metric}", pd.Series(float("nan"), index=frame.index)).astype(float)
    out["agent_uri"] = frame["artifact_uri"].astype(str) + "/mnist_agent.pt"
    return out[columns].reset_index(drop=True)


def finished_runs(runs: pd.DataFrame, keys: Optional[Iterable[str]] = None,
                  grids: Iterable[str] = ()) -> pd.DataFrame:
    """FINISHED runs, one per key (the latest), narrowed to `keys` or to runs tagged with `grids`."""
    done = runs[runs["status"] == "FINISHED"]
    if keys is not None:
        done = done[done["key"].isin(set(keys))]
    grids = list(grids)
    if grids:
        done = done[done["grids"].str.split(",").apply(lambda gs: bool(set(gs) & set(grids)))]
    return done.sort_values("end_time").drop_duplicates("key", keep="last").reset_index(drop=True)


def as_percent(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with the error columns written as percentages, for people to read."""
    out = frame.copy()
    for col in ("test_error", "train_error", "best_test_error"):
        if col in out:
            out[col] = out[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}%")
    return out


def varied(runs: pd.DataFrame) -> list[str]:
    return [s for s in SETTING_NAMES if runs[s].nunique(dropna=True) > 1]


def best_by(runs: pd.DataFrame, by: list[str], metric: str = "test_error") -> pd.DataFrame:
    """Per group of `by`, the finished, non-diverged run with the lowest `metric`."""
    unknown = [b for b in by if b not in SETTING_NAMES]
    if unknown:
        raise ValueError(f"cannot group by {unknown[0]!r}: not a setting; settings: {', '.join(SETTING_NAMES)}")
    if metric not in runs.columns:
        raise ValueError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    ok = runs[~runs["diverged"] & runs[metric].notna()]
    others = [s for s in ["lr", *varied(ok)] if s not in by]
    columns = [*by, *dict.fromkeys(others), "test_error", "train_error", "epochs", "run_id", "agent_uri"]
    if metric not in columns:
        columns.insert(len(by) + len(dict.fromkeys(others)), metric)
    if ok.empty:
        return pd.DataFrame(columns=columns)
    winners = ok.loc[ok.groupby(by, dropna=False)[metric].idxmin()] if by else ok.loc[[ok[metric].idxmin()]]
    return winners[columns].sort_values(by or metric).reset_index(drop=True)
