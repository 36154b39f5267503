import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from .common import reports_errors, tracking_option


@click.command("ui")
@click.argument("spec", type=click.Path(dir_okay=False), required=False)
@click.option("--experiment", default=None, help="Experiment name. [default: the SPEC's experiment]")
@tracking_option
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; keep it local.")
@click.option("--no-browser", is_flag=True, help="Print the address only; open no browser.")
@reports_errors
def command(spec, experiment, tracking_uri, port, host, no_browser):
    """Serve the MLflow UI on the project's store and open the sweep's runs there: in model-training
    mode, ranked as `sweep best` ranks them (final validation error when every run holds images out,
    else final test error; lowest first), with both errors, the swept settings, the data and the
    models in view. The best agent of each question (grid or search) is logged as a model of its run
    first (once per winner), so that the Models column shows it.

    SPEC (default ./sweeps.yaml when present) or --experiment names the experiment. A browser is
    opened when one can show the page (a desktop session, or $BROWSER); else only the address is
    printed. With a tracking server as the store, its own UI's address is printed and nothing is started."""
    from .. import interrupts, tracking
    from ..spec import load_spec
    from ..tracking import location as store

    uri = store.existing_store(tracking_uri, "run `sweep run` first")
    if not spec and not experiment and Path("sweeps.yaml").exists():
        spec = "sweeps.yaml"
    name = experiment or (load_spec(spec).experiment if spec else None)
    server = uri.rstrip("/") if store.is_server(uri) else f"http://{_reachable(host)}:{port}"
    experiment_id = tracking.find_experiment(uri, name) if name else None
    if experiment_id:
        tracking.ensure_runs_view(uri, experiment_id)
        best_agents_as_models(load_spec(spec) if spec else None, uri, name, experiment_id)
        url = tracking.runs_page(server, experiment_id)
    else:
        url = server
        if name:
            click.echo(f"no experiment '{name}' in {uri} yet: the UI opens on its list of experiments")
    browse = not no_browser and _can_browse()
    if store.is_server(uri):
        click.echo(f"MLflow UI of {uri}: {url}")
        if browse:
            _open(url)
        return
    mlflow_bin = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    click.echo(f"MLflow UI for {uri}:\n  {url}\n(Ctrl-C to stop)")
    proc = subprocess.Popen([mlflow_bin, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
                             "--uvicorn-opts", "--no-access-log"])  # not a line per HTTP request
    try:
        with interrupts.signals_stop():  # SIGTERM and SIGHUP end the server too, as Ctrl-C does
            if browse and _wait_until_up(server, proc):
                _open(url)
            code = proc.wait()
    except KeyboardInterrupt as exc:  # the terminal sent Ctrl-C to the server as well; make sure it is gone
        proc.terminate()
        proc.wait()
        if interrupts.signum_of(exc) != signal.SIGINT:
            click.echo("interrupted", err=True)
            sys.exit(128 + interrupts.signum_of(exc))  # 143 for SIGTERM, as a shell reports it
        raise
    sys.exit(code)


def best_agents_as_models(sweep, uri: str, name: str, experiment_id: str) -> dict:
    """Each question's best agent as a logged model of its run (tracking.registry.log_best_agents),
    said when one is logged now; returns question -> the winning run's id."""
    from ..results import fetch_results
    from ..results.best import best_by, overall_winner

    results = fetch_results(sweep, uri, experiment=name)
    questions = results.grids or tuple(dict.fromkeys(
        q for names in results.runs["grids"].dropna() for q in names.split(",") if q))
    winners = {}
    for question in questions:
        best = best_by(results.grid_runs(question), [])
        if not best.table.empty:
            winners[question] = overall_winner(best)["run_id"]
    if not winners:
        return winners
    from ..queue.base import TrackingError
    from ..tracking.registry import log_best_agents
    from .best import example_pixels

    try:
        logged = log_best_agents(uri, experiment_id, winners, example_pixels(None))
    except TrackingError as exc:  # the UI is worth having without them
        click.echo(f"note: the best agents are not in the Models column: {exc}", err=True)
        return winners
    if logged:
        click.echo(f"logged the best agent of {', '.join(logged)} as a model of its run (the Models column)")
    return winners


def _reachable(host: str) -> str:
    """The address a browser on this machine reaches the server at."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _can_browse() -> bool:
    """A browser can show the page: not a terminal-only session (where webbrowser would start a text browser)."""
    return (sys.platform in ("darwin", "win32") or
            any(os.environ.get(name) for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")))


def _wait_until_up(server: str, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    import urllib.request

    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{server}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def _open(url: str) -> None:
    import webbrowser

    try:
        webbrowser.open(url)
    except webbrowser.Error:
        pass  # no browser after all: the address is printed
