"""The agent file `mnist_agent.pt`: weights, the run's settings and its final metrics."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import RunConfig
from .model import MLP

AGENT_FILENAME = "mnist_agent.pt"
FORMAT = "mnist-agent/1"


def save_agent(path: str | os.PathLike, model: MLP, config: RunConfig, metrics: dict) -> Path:
    """Write the agent to `path` (a file, or a folder that gets `mnist_agent.pt`); return the file."""
    path = Path(path)
    if path.is_dir():
        path = path / AGENT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "config": config.as_params(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated agent behind
    return path


def load_agent(path: str | os.PathLike, device: str | torch.device = "cpu") -> MLP:
    """A ready model in eval mode; `model.config` and `model.metrics` say what it is and how it did."""
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an mnist-sweep agent file (format {FORMAT!r})")
    config = RunConfig(**payload["config"])
    model = MLP.from_config(config).to(device)
    model.load_state_dict(payload["state_dict"])
    model.config = config
    model.metrics = payload["metrics"]
    return model.eval()
