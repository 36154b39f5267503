"""`python -m mnist_core`: train one model, as a student's `python mnist.py --lr 0.001` would."""
from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from .agent import AGENT_FILENAME, save_agent
from .config import CHOICES, DEFAULTS, SETTING_HELP, SETTING_NAMES, SETTING_TYPES, RunConfig
from .data import ENV_VAR, MnistDataMissing, holdout, load_mnist
from .trainer import EpochResult, resolve_device, train

_CLICK_TYPES = {"int": int, "float": float, "str": str}


def setting_options(command):
    """One click option per RunConfig field, with its help text and default."""
    for name in reversed(SETTING_NAMES):
        kind = click.Choice(CHOICES[name]) if name in CHOICES else _CLICK_TYPES[SETTING_TYPES[name]]
        text = SETTING_HELP[name]
        command = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=DEFAULTS[name],
                               show_default=True, help=f"{text[0].upper()}{text[1:]}.")(command)
    return command


def format_epoch(r: EpochResult) -> str:
    val = "" if r.val_loss is None else f"  val loss {r.val_loss:.4f} err {100 * r.val_error:6.2f}%"
    return (f"epoch {r.epoch:3d}  lr {r.lr:.4g}  train loss {r.train_loss:.4f} err {100 * r.train_error:6.2f}%"
            f"{val}  test loss {r.test_loss:.4f} err {100 * r.test_error:6.2f}%  {r.seconds:.1f}s")


def data_options(command):
    command = click.option("--no-download", is_flag=True,
                           help="Never try to download MNIST; fail if the files are missing.")(command)
    command = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                           help=f"Folder with MNIST (torchvision's MNIST/raw layout or the four IDX "
                                f"files). [default: ${ENV_VAR}, else ./data]")(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@setting_options
@data_options
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help=f"Folder that receives {AGENT_FILENAME}.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads. [default: torch's choice]")
def main(data_dir, no_download, device, out_dir, threads, **settings):
    """Train the MNIST MLP (784 -> depth x width -> 10, SGD on NLL), print one line per epoch and
    save the trained agent. The reference network is the default: 2 hidden layers of 50 ReLU units."""
    try:
        config = RunConfig(**settings)
        torch_device = resolve_device(device)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if threads:
        torch.set_num_threads(threads)
    try:
        data = load_mnist(data_dir, torch_device, download=not no_download)
        holdout(data, config.validation)  # a validation size the data cannot give fails here, not mid-run
    except (MnistDataMissing, ValueError) as exc:  # broken files, a validation size over the training set
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"training {config} on {torch_device}")
    result = train(config, data, torch_device, on_epoch=lambda r: click.echo(format_epoch(r)))
    if result.diverged:
        click.echo(f"diverged in epoch {len(result.history)}: the loss became NaN or infinite")
    path = save_agent(Path(out_dir) / AGENT_FILENAME, result.model, config, result.summary())
    click.echo(f"agent saved to {path}")
