"""Check the sweep in the MLflow UI for real, as a new user sees it, in headless Chromium; save screenshots.

Starts `mlflow ui` on 127.0.0.1 (a free port) over the project's store (plain `mlflow ui`, as a
user types it, when the store is ./mlflow.db) and opens, in a fresh browser profile (nothing
remembered from an earlier visit), the page `sweep ui` opens, after doing what `sweep ui` does first:

- experiment.png: the runs page. Checks that it is in model-training mode (the GenAI / Model
  training switch and the experiment's menu), that the runs are ranked as `sweep best` ranks them
  (final validation error, else final test error) with that column and the swept settings in view
  (no "Show more columns"), that every training run in view lists its datasets (name and digest,
  as logged) in the Dataset column, that the registered model (--model) shows in the Models column
  of its run, and so does each question's best agent (a logged model, `QUESTION-best`).
- compare.png: MLflow's run-compare page for the best run of each activation.
- model.png: the registered model's newest version: its source run, its logged model and its
  description (the run's name and final test error).

Exits 1 if any check fails.

    python scripts/mlflow_ui_check.py [SPEC] [--model NAME] [--tracking-uri URI] [--out DIR] [--chromium PATH]

Needs Debian's `chromium` (apt-get install chromium) and `pip install -e '.[ui-check]'` (Playwright;
its own browser download is not needed: this script drives the system Chromium).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from sweep import tracking
from sweep.cli.ui import best_agents_as_models
from sweep.queue import schema
from sweep.results import fetch_results
from sweep.results.best import best_by
from sweep.spec import load_spec
from sweep.tracking.location import found_by_mlflow, store_uri

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 900}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    store = [] if found_by_mlflow(uri) else ["--backend-store-uri", uri]
    proc = subprocess.Popen([mlflow_bin, "ui", "--host", "127.0.0.1", "--port", str(port), *store],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("error: mlflow server did not start")


def close_assistant(page) -> None:
    """MLflow 3.17 opens its assistant panel on a new user's first visit; close it, as a user would."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)


def model_training_mode(page, experiment_id: str) -> bool:
    """The switch at the top left shows Model training (its label in the strong colour, GenAI's in the
    faint one) and the experiment's menu is the model-training one (Runs, Models, Traces)."""
    colour = {label: page.locator("div[role=button]", has_text=label).first.evaluate(
        "e => getComputedStyle(e.firstElementChild || e).color") for label in ("GenAI", "Model training")}
    runs_link = page.locator(f"a[href*='/experiments/{experiment_id}/runs']", has_text="Runs")
    genai_menu = page.locator("a", has_text="Training runs").count() + page.locator("a", has_text="Overview").count()
    return colour["GenAI"] != colour["Model training"] and _darker(colour["Model training"], colour["GenAI"]) \
        and runs_link.count() > 0 and genai_menu == 0


def _darker(a: str, b: str) -> bool:
    rgb = lambda c: [int(x) for x in c[c.index("(") + 1:c.index(")")].split(",")[:3]]  # noqa: E731
    return sum(rgb(a)) < sum(rgb(b))


def table_rows(page) -> list[tuple[str, str]]:
    """(run id, row text) of each row the runs table shows, top to bottom (pinned and scrolling parts)."""
    rows = []
    for index in range(page.locator("[role=row][row-index]").count()):
        parts = page.locator(f"[role=row][row-index='{index}']")
        link = parts.locator("a[href*='/runs/']")
        if not parts.count() or not link.count():
            break
        run_id = link.first.get_attribute("href").rstrip("/").split("/runs/")[1].split("?")[0]
        rows.append((run_id, " | ".join(r.inner_text() for r in parts.all())))
    return rows


def load_all(page, most: int = 50) -> int:
    """Click the table's "Load more" until every run is loaded, as a user would; how many times."""
    clicks = 0
    for _ in range(most):
        page.wait_for_timeout(2000)  # the loading overlay of the last click is gone
        more = page.get_by_role("button", name="Load more")
        if not more.count():
            break
        try:
            more.first.click(timeout=15000)
            clicks += 1
        except Exception:  # the button went while the next page loaded: look again
            continue
    return clicks


def in_view(locator, viewport=VIEWPORT) -> bool:
    """The element starts inside the browser window: seen without scrolling."""
    box = locator.bounding_box() if locator.count() else None
    return bool(box) and 0 <= box["x"] < viewport["width"] and 0 <= box["y"] < viewport["height"]


def rank(error: float | None) -> float:
    """Where MLflow's order by a metric puts a value: numbers, then NaN, then runs without the metric."""
    return math.inf if error is None else sys.float_info.max if math.isnan(error) else error


def check_runs_page(page, url, uri, experiment_id, ranked_by, model, questions, out, failures) -> None:
    page.goto(tracking.runs_page(url, experiment_id))
    page.wait_for_url("**orderByKey=*", timeout=60000)  # the saved view is applied
    page.locator("[role=row][row-index='0'] a[href*='/runs/']").first.wait_for(timeout=60000)
    close_assistant(page)
    page.wait_for_timeout(2000)
    page.screenshot(path=str(out / "experiment.png"))

    mode = model_training_mode(page, experiment_id)
    print(f"runs page: model-training mode: {mode}")
    if not mode:
        failures.append("the experiment does not open in model-training mode")

    loaded = load_all(page)
    print(f"runs page: the table loads 100 runs at a time; after 'Load more' x{loaded}: "
          f"{page.get_by_text('matching runs').first.inner_text()}")
    c = tracking.client(uri)
    rows = [(c.get_run(run_id), text) for run_id, text in table_rows(page)]
    errors = [rank(run.data.metrics.get(ranked_by)) for run, _ in rows]
    lowest = c.search_runs([experiment_id], f"metrics.`{ranked_by}` >= 0", max_results=1,
                           order_by=[f"metrics.`{ranked_by}` ASC"])
    header = page.locator(".ag-header-cell", has_text=ranked_by).first
    ranked = bool(rows) and bool(lowest) and errors == sorted(errors) and \
        errors[0] == lowest[0].data.metrics[ranked_by]
    print(f"runs page: {len(rows)} runs in the table, ranked by {ranked_by} from the lowest "
          f"({errors[0] if rows else '-'}): {ranked}; its column in view: {in_view(header)}")
    if not ranked or not in_view(header):
        failures.append(f"the runs are not ranked by {ranked_by} with that column in view")
    headers = [page.locator(".ag-header-cell", has_text=s).count() > 0 for s in tracking.SWEPT]
    print(f"runs page: swept settings as columns: {dict(zip(tracking.SWEPT, headers))}")
    if not all(headers):
        failures.append("the swept settings are not all columns of the runs table")
    for question, run_id in questions.items():  # a Models cell shows one model, and "+N" for the others
        shown = any(run.info.run_id == run_id and (f"{question}-best" in text or re.search(r"\+\d", text))
                    for run, text in rows)
        print(f"runs page: the Models column shows {question}-best (or +N more) in its run's row: {shown}")
        if not shown:
            failures.append(f"the Models column does not show {question}-best at its run")

    trained = [(run, text) for run, text in rows if run.data.tags.get(schema.KIND) == "train"]
    unlisted = {run.info.run_name: [label for label in labels if label not in text]
                for run, text in trained
                for labels in [[f"{d.dataset.name} ({d.dataset.digest})" for d in run.inputs.dataset_inputs]]
                if not labels or any(label not in text for label in labels)}
    example = ", ".join(f"{d.dataset.name} ({d.dataset.digest})" for d in trained[0][0].inputs.dataset_inputs) \
        if trained else "-"
    print(f"runs page: {len(trained) - len(unlisted)} of {len(trained)} training runs in the table list their "
          f"datasets (first: {example})")
    if not trained or unlisted or not in_view(page.locator(".ag-header-cell", has_text="Dataset").first):
        failures.append(f"the Dataset column does not show the runs' datasets: {unlisted or 'no runs in view'}")

    if model is not None:
        name, version, run_id = model
        link = page.locator(f"a[href*='#/models/{urllib.parse.quote(name)}/versions/{version}']")
        in_row = any(run.info.run_id == run_id and name in text and f"v{version}" in text for run, text in rows)
        shown = in_row and link.count() > 0  # its row may be below the fold: the runs are ranked by error
        print(f"runs page: the Models column shows {name} v{version} in its run's row: {shown}")
        if not shown:
            failures.append(f"the Models column does not show registered model {name} v{version} at its run")


def plot_metric(page, metric: str) -> None:
    """In the compare page's parallel-coordinates plot, show `metric` in place of the first metric MLflow
    picks, as a user would: remove its chip, type the metric's name into the Metrics box."""
    metrics = page.locator(".du-bois-light-select-multiple").nth(1)
    try:
        metrics.locator(".du-bois-light-select-selection-item-remove").first.click(timeout=5000)
        metrics.click(timeout=5000)
        page.keyboard.type(metric)
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
    except Exception as exc:  # the plot keeps MLflow's choice; the checks do not depend on it
        print(f"compare page: could not plot {metric}: {type(exc).__name__}")


def check_compare_page(page, url, experiment_id, ranked_by, runs, best, out, failures) -> None:
    ids = list(best["run_id"])
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([experiment_id]),
                                    "workflowType": "machine_learning"})
    page.goto(f"{url}/#/compare-runs?{query}")
    winners = [runs.loc[runs["run_id"] == i, "name"].item() for i in ids]
    page.get_by_text(winners[0]).first.wait_for(timeout=60000)
    close_assistant(page)
    plot_metric(page, ranked_by)
    page.wait_for_timeout(2500)
    page.screenshot(path=str(out / "compare.png"))
    compared = [n for n in winners if page.get_by_text(n).count()]
    has_values = page.get_by_text("activation").count() > 0 and page.get_by_text(ranked_by).count() > 0
    print(f"compare page: {len(compared)} of {len(winners)} runs, params and metrics shown: {has_values}")
    if len(compared) < len(winners) or not has_values:
        failures.append("the compare page does not show the runs with their params and metrics")


def check_model_page(page, url, model, run_name, out, failures) -> None:
    """The registered model's newest version: its source run, its logged model and its description."""
    name, version, _ = model
    page.goto(f"{url}/#/models/{urllib.parse.quote(name)}/versions/{version}?workflowType=machine_learning")
    page.get_by_text(f"Version {version}", exact=True).first.wait_for(timeout=60000)
    close_assistant(page)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "model.png"))
    source_run = page.locator("a[href*='/runs/']", has_text=run_name).count() > 0
    source_model = page.locator("a[href*='/models/m-']").count() > 0
    described = page.get_by_text(f"The agent of run {run_name}").count() > 0
    print(f"model page: {name} version {version}: source run {run_name} linked: {source_run}; "
          f"source (logged) model linked: {source_model}; described as that run's agent: {described}")
    if not (source_run and source_model and described):
        failures.append(f"the page of registered model {name} v{version} does not lead to its run {run_name}")


def registered(uri: str, name: str, run_ids) -> tuple | None:
    """(name, newest version, its run id) of the registered model made from one of these runs, else None."""
    versions = [v for v in tracking.client(uri).search_model_versions(f"name = {tracking.quoted(name)}")
                if v.run_id in set(run_ids)]
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    return name, newest.version, newest.run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", default="sweeps.yaml")
    parser.add_argument("--model", default="mnist-best",
                        help="registered model to look for (sweep best --register NAME)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", default="reports/ui")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    spec = load_spec(args.spec)
    uri = store_uri(args.tracking_uri)
    experiment_id = tracking.find_experiment(uri, spec.experiment)
    if experiment_id is None:
        raise SystemExit(f"error: no experiment '{spec.experiment}' in {uri}; run `sweep run {args.spec}` first")
    ranked_by = tracking.ensure_runs_view(uri, experiment_id)  # as `sweep ui` does
    questions = best_agents_as_models(spec, uri, spec.experiment, experiment_id)  # as `sweep ui` does
    results = fetch_results(spec, uri)
    runs = results.by_outcome("done", "diverged", "stopped")
    if runs.empty:
        raise SystemExit(f"error: no finished runs of {args.spec} in {uri}")
    best = best_by(results.runs, ["activation"]).table
    model = registered(uri, args.model, runs["run_id"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = [] if model else [f"no version of registered model '{args.model}' comes from this sweep's runs "
                                 f"(sweep best {args.spec} --register {args.model})"]
    proc, url = start_server(uri)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport=VIEWPORT).new_page()  # a new user: nothing stored in the browser
            check_runs_page(page, url, uri, experiment_id, ranked_by, model, questions, out, failures)
            check_compare_page(page, url, experiment_id, ranked_by, runs, best, out, failures)
            if model:
                check_model_page(page, url, model, runs.loc[runs["run_id"] == model[2], "name"].item(), out, failures)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(f"screenshots in {out}: " + ", ".join(sorted(p.name for p in out.glob("*.png"))))
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
