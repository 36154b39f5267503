"""Check the comparison in the MLflow UI for real, in headless Chromium, and save screenshots.

Starts `mlflow server` on 127.0.0.1 (a free port) over the project's store, opens the sweep's
experiment, expands the parent run to show its training runs, then opens MLflow's run-compare
page for the best run of each activation. Saves experiment.png and compare.png, and exits 1 if
the runs are not shown.

    python scripts/mlflow_ui_check.py [SPEC] [--tracking-uri URI] [--out DIR] [--chromium PATH]

Needs Debian's `chromium` (apt-get install chromium) and `pip install playwright` (its own
browser download is not needed: this script drives the system Chromium).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from sweep import tracking
from sweep.store import store_uri
from sweep.best import best_by
from sweep.results import fetch_results
from sweep.spec import load_spec

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", uri, "--workers", "1"],
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


def dismiss_panels(page) -> None:
    for label in ("Close", "Got it"):
        for button in page.get_by_role("button", name=label).all():
            try:
                button.click(timeout=1000)
            except Exception:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", default="sweeps.yaml")
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
    results = fetch_results(spec, uri)
    runs = results.by_outcome("done", "diverged", "stopped")
    best = best_by(results.runs, ["activation"]).table
    names = list(runs["name"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    proc, url = start_server(uri)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.goto(f"{url}/#/experiments/{experiment_id}/runs")
            page.get_by_text(f"sweep:{spec.name}").first.wait_for(timeout=60000)
            dismiss_panels(page)
            parent_row = page.locator("[role=row]", has_text=f"sweep:{spec.name}").first
            parent_row.locator("button[data-component-id*='runnamecellrenderer']").first.click(timeout=10000)
            page.get_by_text(names[0], exact=True).first.wait_for(timeout=30000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "experiment.png"))
            shown = [n for n in names if page.get_by_text(n, exact=True).count()]
            print(f"experiment page: {len(shown)} of {len(names)} training runs visible under the parent run")
            if len(shown) < min(5, len(names)):
                failures.append("the experiment page does not show the sweep's training runs")

            ids = list(best["run_id"])
            query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([experiment_id])})
            page.goto(f"{url}/#/compare-runs?{query}")
            winners = [runs.loc[runs["run_id"] == i, "name"].item() for i in ids]
            page.get_by_text(winners[0]).first.wait_for(timeout=60000)
            dismiss_panels(page)
            page.wait_for_timeout(2500)
            page.screenshot(path=str(out / "compare.png"), full_page=True)
            compared = [n for n in winners if page.get_by_text(n).count()]
            has_params = page.get_by_text("activation").count() > 0 and page.get_by_text("test_error").count() > 0
            print(f"compare page: {len(compared)} of {len(winners)} runs, params and metrics shown: {has_params}")
            if len(compared) < len(winners) or not has_params:
                failures.append("the compare page does not show the runs with their params and metrics")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(f"screenshots: {out / 'experiment.png'}, {out / 'compare.png'}")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
