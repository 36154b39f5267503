"""The agent file `mnist_agent.pt`: weights, the run's settings and its final metrics."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from .config import RunConfig
from .model import MLP

AGENT_FILENAME = "mnist_agent.pt"
FORMAT = "mnist-agent/1"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


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


class AgentFileError(ValueError):
    """A file that is not a readable agent: empty, truncated, not a PyTorch file, or not ours."""


def _read_payload(path: Path, device) -> dict:
    if path.stat().st_size == 0:
        raise AgentFileError(f"{path}: the file is empty")
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:
            raise AgentFileError(f"{path}: not an agent file (not a PyTorch zip archive)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise AgentFileError(f"{path}: refused: it holds Python objects other than tensors and plain "
                             f"values (agents are read with torch.load(weights_only=True))") from None
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, KeyError... on damaged files
        raise AgentFileError(f"{path}: truncated or corrupt PyTorch file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AgentFileError(f"{path}: not an mnist-sweep agent file (format {FORMAT!r})")
    return payload


def load_agent(path: str | os.PathLike, device: str | torch.device = "cpu") -> MLP:
    """A ready model in eval mode; `model.config` and `model.metrics` say what it is and how it did.
    AgentFileError (a ValueError) names the file and what is wrong with it."""
    path = Path(path)
    payload = _read_payload(path, device)
    try:
        config = RunConfig(**payload["config"])
        model = MLP.from_config(config).to(device)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise AgentFileError(f"{path}: invalid agent: {str(exc).splitlines()[0]}") from None
    model.config = config
    model.metrics = payload.get("metrics", {})
    return model.eval()
