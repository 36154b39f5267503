"""The agent as an MLflow pyfunc model in the model registry (imported only when registering)."""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from .. import tracking

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


@tracking.store_errors
def register_agent(uri: str, run_id: str, name: str, example_pixels) -> str:
    """Log the run's agent as a pyfunc model (signature and input example included) of the run's
    experiment, made by the run (its source run, and an output of the run: what the MLflow UI's runs
    table and run page read), and register it as `name`; returns the registered version. The run
    itself is not reopened: its status and end time stay as they were."""
    import tempfile
    from types import SimpleNamespace

    import mlflow
    import pandas as pd
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(uri)
    c = tracking.client(uri)
    run = c.get_run(run_id)
    example = pd.DataFrame(example_pixels, columns=PIXELS).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        agent = c.download_artifacts(run_id, "mnist_agent.pt", tmp)
        model = AgentModel()
        model.load_context(SimpleNamespace(artifacts={"agent": agent}))  # as MLflow will call it
        signature = infer_signature(example, model.predict(None, example))
        logged = c.create_logged_model(run.info.experiment_id, name="mnist-agent", source_run_id=run_id,
                                       params=run.data.params, model_type="mnist-mlp")
        c.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        info = mlflow.pyfunc.log_model(name="mnist-agent", model_id=logged.model_id, python_model=AgentModel(),
                                       artifacts={"agent": agent}, signature=signature, input_example=example,
                                       pip_requirements=["mnist-sweep", "torch", "pandas"],
                                       registered_model_name=name)
    version = str(info.registered_model_version)
    error = run.data.metrics.get(tracking.RANKED_BY)
    c.update_model_version(name, version, f"The agent of run {run.info.run_name} ({run_id})" +
                           (f": final test error {error:.2%}" if error is not None else ""))
    return version
