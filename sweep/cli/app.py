"""The `sweep` command group: one small module per command; each parses its options, calls the
library and prints. Imports here stay light (no torch, no MLflow) so that `sweep --help` and
`sweep plan` answer at once."""
from __future__ import annotations

import click

from . import best, bundle, plan, report, run, status, ui


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mnist-sweep")
def main():
    """Tracked, resumable sweeps of an MNIST MLP over activation, learning rate, depth, width and
    schedule. Runs go to MLflow; `sweep best`, `sweep report` and `sweep ui` compare them."""


for _module in (plan, run, status, best, report, bundle, ui):
    main.add_command(_module.command)
