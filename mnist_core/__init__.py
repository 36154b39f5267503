"""mnist_core: the MNIST MLP, its trainer and its agent file. Knows nothing of MLflow or sweeps.

Names are loaded on first use, so that `from mnist_core.config import RunConfig` (all a sweep file
needs) does not import torch.
"""
import importlib

_HOMES = {
    "agent": ("AGENT_FILENAME", "AgentFileError", "load_agent", "save_agent"),
    "config": ("ACTIVATIONS", "SCHEDULES", "RunConfig"),
    "data": ("MnistTensors", "load_mnist", "normalise"),
    "files": ("MnistDataError", "MnistDataMissing", "check_mnist"),
    "model": ("MLP",),
    "schedule": ("lr_at", "lr_schedule"),
    "trainer": ("EpochResult", "TrainResult", "resolve_device", "train"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)


def __getattr__(name):
    if name not in _HOME_OF:
        raise AttributeError(f"module 'mnist_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
