"""The agent as an MLflow pyfunc model, for the model registry (imported only when registering)."""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

PIXELS = [f"pixel_{i}" for i in range(784)]


class AgentModel(mlflow.pyfunc.PythonModel):
    """An mnist_agent.pt as an MLflow pyfunc model: 784 grey values (0-255, light digit on dark)
    per row in, the digit and its 10 class probabilities out."""

    def load_context(self, context):
        from mnist_core import load_agent

        self.model = load_agent(context.artifacts["agent"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import numpy as np
        import torch

        from mnist_core import normalise

        with torch.no_grad():
            probs = self.model(normalise(np.asarray(model_input, dtype=np.float32))).exp().numpy()
        out = pd.DataFrame(probs, columns=[f"p{d}" for d in range(10)])
        out.insert(0, "digit", probs.argmax(1))
        return out
