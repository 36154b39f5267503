import os
import shutil
import subprocess
import sys

import click

from .common import fail, reports_errors, tracking_option


@click.command("ui")
@tracking_option
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; keep it local.")
@reports_errors
def command(tracking_uri, port, host):
    """Open the MLflow UI on the project's store."""
    from .. import store

    uri = store.open_store(tracking_uri)
    if store.is_server(uri):
        fail(f"{uri} is a tracking server: open it in a browser instead")
    mlflow_bin = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    click.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl-C to stop)")
    sys.exit(subprocess.call([mlflow_bin, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]))
