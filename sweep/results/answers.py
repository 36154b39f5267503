"""The report's setup and its answer to each of the homework's questions, in words: what was trained,
where and how long (from the store), and per question (activation, learning rate, depth, width,
schedule) the best value with its n and p. Pure: the analysis's numbers in, strings and tables out.
"""
from __future__ import annotations

import math

import pandas as pd

from mnist_core.config import TRAIN_SAMPLE

from .analysis import QUESTION_SETTINGS, Execution, GridView, Setup, best_per
from .best import label
from .words import NAMES, format_p, in_points, p_phrase, pct, plural


def setup_words(setup: Setup) -> str:
    """What the finished runs were: networks, optimiser, data, split and seeds (the report's setup)."""
    if not setup.runs:
        return "No run has finished yet."
    v = setup.values

    def listed(setting: str) -> str:
        return _listed(v[setting])

    layers = "hidden layer" + ("" if v["depth"] == [1] else "s")
    held = [x for x in v["validation"] if x]
    split = (f"{listed('validation')} of the 60,000 training images held out for validation (the same images for "
             f"every run and seed) and the rest trained on" if held and len(held) == len(v["validation"]) else
             "trained on all 60,000 training images (no validation split)" if not held else
             f"training images held out for validation: {listed('validation')} (0: none)")
    train_eval = {"sample": f"a fixed sample of {TRAIN_SAMPLE:,} of the images trained on",
                  "full": "every image trained on"}
    measured = " or ".join(train_eval[x] for x in v["train_eval"] if x in train_eval)
    split += f"; the train error after each epoch is measured on {measured}" if measured else ""
    return (f"The runs are MLPs 784 -> {listed('depth')} {layers} of {listed('width')} units -> 10 "
            f"({listed('activation')}; log-softmax output), trained by SGD (momentum {listed('momentum')}) on the "
            f"negative log-likelihood with mini-batches of {listed('batch_size')} for {listed('epochs')} epochs, at "
            f"learning rates {listed('lr')} (schedule {listed('schedule')}); {split}; the test error is measured "
            f"on the 10,000 test images. Up to {setup.seeds} seed(s) per setting (the seed sets the initial "
            f"weights and the data order); {plural(setup.runs, 'finished run')}.")


def _listed(values) -> str:
    return ", ".join(f"{x:g}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)
                     for x in values)


def setup_table(setup: Setup) -> pd.DataFrame:
    """Per grid, the question it asks (the settings it varies) and the networks it trains: the
    values of each setting its planned runs take, its seeds, and its runs finished of planned."""
    q = setup.questions
    if q.empty:
        return pd.DataFrame(columns=["grid", "varies"])
    out = pd.DataFrame({"grid": q["grid"], "varies": q["varies"]})
    heads = {"activation": "activation", "depth": "hidden layers", "width": "units per layer", "lr": "lr",
             "schedule": "schedule"}
    for setting in QUESTION_SETTINGS:
        out[heads[setting]] = q[setting].map(_listed)
    out["seeds"] = q["seeds"]
    out["runs finished"] = [f"{f} of {p}" for f, p in zip(q["finished"], q["planned"])]
    return out


def _duration(seconds: float) -> str:
    """"42 s", "5 min 25 s", "2 h 03 min"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


DEVICES = {"cpu": "the CPU", "cuda": "a CUDA GPU", "mps": "an Apple GPU (MPS)"}


def execution_words(e: Execution) -> str:
    """Machine, engine and time of the finished runs, saying what the store does not record."""
    finished = sum(e.fused) + e.solo
    if not finished:
        return ("Machine and time: not recorded (the runs name no training process and no start and end time)."
                if e.unknown else "Machine and time: no run has finished yet.")
    devices = " and ".join(DEVICES.get(d, d) for d in e.devices) or "an unrecorded device"
    hosts = ", ".join(e.hosts)
    where = (f"trained on {devices} of host{'s' if len(e.hosts) > 1 else ''} {hosts} by {e.workers} worker "
             f"process{'es' if e.workers > 1 else ''} (the store records the device type, not the CPU or GPU "
             f"model)")
    day = "" if e.start.date() == e.end.date() else f" on {e.end:%Y-%m-%d}"
    when = (f"from {e.start:%Y-%m-%d %H:%M} to {e.end:%H:%M}{day} UTC: "
            f"{_duration(e.wall_seconds)} from the first run's start to the last run's end, of which "
            f"{_duration(e.training_seconds)} the networks' own training summed over the processes (data loading "
            f"and logging aside)")
    if e.fused and e.solo:
        engine = (f"{sum(e.fused)} runs trained as {plural(len(e.fused), 'fused group')} of {_span(e.fused)} "
                  f"networks (one stacked model per group), {e.solo} alone")
    elif e.fused:
        engine = (f"every run trained in a fused group ({plural(len(e.fused), 'group')} of {_span(e.fused)} "
                  f"networks, one stacked model each)")
    else:
        engine = "every run trained alone (the solo engine)"
    unknown = f"; {plural(e.unknown, 'run')} name no process or time" if e.unknown else ""
    return (f"Machine and time: {where}, {when}. Engine: {engine}, as told from the runs each process trained "
            f"over the same times with the same training time (the store has no engine tag){unknown}.")


def _span(sizes: list) -> str:
    return f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)} to {max(sizes)}"


# --- the report's conclusions: the homework's questions ------------------------------------------------

QUESTIONS = {"activation": "Activation", "lr": "Learning rate", "depth": "Depth", "width": "Width",
             "schedule": "Schedule"}  # QUESTION_SETTINGS in the homework's order


def question_answers(views, metric: str, searches=()) -> list[tuple[str, str]]:
    """(question, answer) for each of the homework's questions (QUESTION_SETTINGS), in plain words
    with n and p: the grids that sweep the setting (with lr, or alone) give its best value and
    whether that is decided against the closest rival (Holm p, P(ahead)); the learning rate is
    answered per grid that sweeps it with another setting. A question no grid asks says so."""
    answers = []
    for setting in QUESTIONS:
        answering = [v for v in views if not v.done.empty and (v.by or v.x) == setting
                     and v.kind in ("lr_by_setting", "numeric", "schedule")]
        if setting == "lr":
            answering = [v for v in views if not v.done.empty and v.kind == "lr_by_setting"] + answering
            lines = _lr_lead(answering, metric) + [_lr_answer(v, metric) for v in answering]
        else:
            lines = [_setting_answer(v, setting, metric) for v in answering]
        other = [v for v in views if setting in v.varied and v not in answering]
        sampled = [s.name for s in searches if setting in s.sampled]
        lines += [f"Grid '{v.name}' varies it but has no finished run yet." if v.done.empty else
                  f"Grid '{v.name}' varies it together with {', '.join(s for s in v.varied if s != setting)}: "
                  f"see its section." for v in other]
        if sampled:
            lines.append(f"Sampled by search {', '.join(repr(s) for s in sampled)}: see its section.")
        if not lines:
            lines = [f"Not asked: no grid of this sweep varies {setting}."]
        answers.append((QUESTIONS[setting], " ".join(lines)))
    return answers


def _ns(table: pd.DataFrame) -> str:
    low, high = int(table["n"].min()), int(table["n"].max())
    return f"n = {low} seed{'s' if high > 1 else ''} each" if low == high else f"n = {low} to {high} seeds"


def _setting_answer(view: GridView, setting: str, metric: str) -> str:
    name = NAMES.get(metric, metric)
    best = best_per(view, metric)
    table = best.table.sort_values(metric, kind="stable").reset_index(drop=True)
    top = table.iloc[0]
    at_lr = view.kind == "lr_by_setting"
    where = f"grid '{view.name}', each {setting} at its best learning rate" if at_lr else f"grid '{view.name}'"
    ranking = "; ".join(f"{label(r, [setting])}{f' at lr {r.lr:g}' if at_lr else ''}: {pct(r[metric])}"
                        for _, r in table.iterrows())
    ranked = f" By mean {name} ({where}, {_ns(table)}): {ranking}."
    c = best.across
    if c is None:
        return f"Only {label(top, [setting])} has finished runs: nothing to compare." + ranked
    tested = f"{format_p(c.holm_p).replace('p ', 'Holm p ', 1)}" if c.family > 1 else format_p(c.p)
    if c.distinguishable:
        text = (f"{c.ahead}, decided: ahead of the closest rival, {c.behind}, by {in_points(c.gap)} "
                 f"({tested}); a seed of {c.ahead} beats one of {c.behind} with probability {c.prob:.2f}.")
    elif c.distinguishable is None:
        text = (f"Open: {c.ahead} has the lowest mean, but with one seed no test can be made "
                 f"(run several seeds).")
    else:
        needed = (f"; about {c.seeds_needed:.0f} seeds each would tell them apart" if math.isfinite(c.seeds_needed)
                  else "; at the gap seen, no practical number of seeds would tell them apart"
                  if math.isinf(c.seeds_needed) else "")
        text = (f"Not decided: {c.ahead} has the lowest mean, but the sweep cannot tell it from "
                 f"{c.behind} ({pct(c.behind_summary.mean)}; {tested}; a seed of {c.ahead} beats one of "
                 f"{c.behind} with probability {c.prob:.2f}){needed}.")
    text += ranked
    if metric != "test_error" and pd.notna(top["test_error"]):
        text += f" Test error of {label(top, [setting])} (not used to choose): {pct(top['test_error'])}."
    shaky = _unstable_in(view, top)
    if shaky:
        text += (f" One of {c.ahead}'s seeds spiked in its last epochs ({shaky}): its final number may be luck.")
    return text


def _unstable_in(view: GridView, row) -> str:
    """The unstable runs among the seeds of the setting `row` stands for, named with their last errors."""
    if view.unstable.empty:
        return ""
    same = view.runs[view.varied].eq(pd.Series({s: row[s] for s in view.varied})).all(axis=1)
    names = set(view.runs.loc[same, "name"])
    shaky = view.unstable[view.unstable["name"].isin(names)]
    return "; ".join(f"{r.name}: {', '.join(pct(v) for v in r.last)}" for r in shaky.itertuples())


def _lr_lead(views, metric: str) -> list:
    """How often each learning rate was best over the settings the lr grids pair it with, and how
    many of those choices are decided."""
    choices = [(r["lr"], c) for v in views if v.kind == "lr_by_setting"
               for b in (best_per(v, metric),) for _, r in b.table.iterrows()
               for c in (b.within.get(label(r, [v.by])),)]
    if not choices:
        return []
    counts = pd.Series([lr for lr, _ in choices]).value_counts().sort_index()
    decided = sum(bool(c is not None and c.distinguishable) for _, c in choices)
    return [f"The best learning rate depends on the network it trains: over the {len(choices)} settings the grids "
            f"pair it with, " + ", ".join(f"lr {lr:g} was best for {n}" for lr, n in counts.items())
            + f"; {decided} of these {len(choices)} choices {'is' if decided == 1 else 'are'} decided."]


def _lr_answer(view: GridView, metric: str) -> str:
    if view.kind != "lr_by_setting":
        return _setting_answer(view, "lr", metric)
    best = best_per(view, metric)
    table = best.table.sort_values(metric, kind="stable")
    by_lr = table.groupby("lr", sort=True)[view.by].agg(lambda v: ", ".join(label({view.by: x}, [view.by])
                                                                          for x in v))
    picks = "; ".join(f"{lr:g} for {values}" for lr, values in by_lr.items())
    decided = [g for g, c in best.within.items() if c.distinguishable]
    tested = {g: c for g, c in best.within.items() if c.distinguishable is not None}
    text = f"In grid '{view.name}' ({_ns(table)}) the best learning rate was {picks}."
    if tested:
        text += (f" Decided for {len(decided)} of {len(best.within)} (told apart from every other lr); Holm p "
                 f"against the closest other lr: " + ", ".join(f"{g} {p_phrase(c.holm_p)}" for g, c in tested.items())
                 + ".")
    diverged = view.runs[view.runs["outcome"] == "diverged"]
    if len(diverged):
        at = diverged.groupby("lr")[view.by].agg(
            lambda v: ", ".join(label({view.by: x}, [view.by]) for x in sorted(set(v), key=str)))
        text += " Diverged: " + "; ".join(f"lr {lr:g} for {values}" for lr, values in at.items()) + "."
    return text
