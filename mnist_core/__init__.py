"""mnist_core: the MNIST MLP, its trainer and its agent file. Knows nothing of MLflow or sweeps."""
from .agent import AGENT_FILENAME, AgentFileError, load_agent, save_agent
from .config import ACTIVATIONS, SCHEDULES, RunConfig
from .data import MnistDataError, MnistDataMissing, MnistTensors, check_mnist, load_mnist, normalise
from .model import MLP
from .schedule import lr_at, lr_schedule
from .train import EpochResult, TrainResult, resolve_device, train

__all__ = [
    "ACTIVATIONS", "AGENT_FILENAME", "MLP", "AgentFileError", "MnistDataError", "MnistDataMissing",
    "MnistTensors", "RunConfig", "SCHEDULES", "EpochResult", "TrainResult", "check_mnist", "load_agent",
    "load_mnist", "lr_at", "lr_schedule", "normalise", "resolve_device", "save_agent", "train",
]
