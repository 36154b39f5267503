"""The agent as an MLflow pyfunc model: a logged model of its run (MLflow 3), the best agent of each
question as one, and the model registry (imported only when models are logged)."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

from .. import tracking
from ..queue.schema import ENDED, QUESTION

PIXELS = [f"pixel_{i}" for i in range(784)]
AGENT_MODEL = "mnist-agent"   # the logged model a registered version comes from
CHAMPION = "champion"         # the alias `sweep best --register` moves to the version it registers


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


def _settings_of(run) -> dict:
    """A run's params but the queue's own (how its run ended): what the model was trained with."""
    return {k: v for k, v in run.data.params.items() if k != ENDED}


def _errors(run) -> str:
    """The run's final errors as people read them: 'final validation error 2.03%, final test error 2.04%'."""
    named = {tracking.VAL_RANKED: "final validation error", tracking.TEST_RANKED: "final test error"}
    return ", ".join(f"{words} {run.data.metrics[key]:.2%}" for key, words in named.items()
                     if key in run.data.metrics)


@contextlib.contextmanager
def _quiet():
    """MLflow's progress bars, its notes on pickling and integer columns, and its INFO lines say
    nothing a user of `sweep` can act on; errors still come through."""
    bar = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    before, level = os.environ.get(bar.name), logging.getLogger("mlflow").level
    os.environ[bar.name] = "false"
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            yield
    finally:
        logging.getLogger("mlflow").setLevel(level)
        if before is None:
            os.environ.pop(bar.name, None)
        else:
            os.environ[bar.name] = before


@contextlib.contextmanager
def _tracking_at(uri: str):
    """MLflow's fluent calls on this store; afterwards the tracking URI (and $MLFLOW_TRACKING_URI, which
    mlflow.set_tracking_uri sets for child processes) are what they were."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _log_agent(uri: str, run, name: str, example_pixels, tags: dict) -> str:
    """Log the run's agent as a pyfunc model (signature and input example included) of the run's
    experiment, made by the run (its source run, and an output of the run: what the MLflow UI's runs
    table and run page read); returns its model id. The run itself is not reopened: its status and
    end time stay as they were."""
    import tempfile
    from types import SimpleNamespace

    import mlflow
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import infer_signature

    c = tracking.client(uri)
    run_id = run.info.run_id
    example = pd.DataFrame(example_pixels, columns=PIXELS).astype("float32")
    with tempfile.TemporaryDirectory() as tmp, _quiet(), _tracking_at(uri):
        agent = c.download_artifacts(run_id, "mnist_agent.pt", tmp)
        model = AgentModel()
        model.load_context(SimpleNamespace(artifacts={"agent": agent}))  # as MLflow will call it
        signature = infer_signature(example, model.predict(None, example))
        logged = c.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                       params=_settings_of(run), tags=tags, model_type="mnist-mlp")
        c.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        mlflow.pyfunc.log_model(name=name, model_id=logged.model_id, python_model=AgentModel(),
                                artifacts={"agent": agent}, signature=signature, input_example=example,
                                pip_requirements=["mnist-sweep", "torch", "pandas"])
    return logged.model_id


@tracking.store_errors
def register_agent(uri: str, run_id: str, name: str, example_pixels) -> str:
    """Log the run's agent as a logged model, register it as a new version of `name`, described with
    the run's name and errors, and point the alias `champion` at it (models:/NAME@champion); returns
    the registered version."""
    import io

    c = tracking.client(uri)
    run = c.get_run(run_id)
    model_id = _log_agent(uri, run, AGENT_MODEL, example_pixels, {})
    with contextlib.redirect_stderr(io.StringIO()), _quiet(), _tracking_at(uri):  # "Successfully registered ..."
        version = str(mlflow.register_model(f"models:/{model_id}", name).version)
    errors = _errors(run)
    c.update_model_version(name, version, f"The agent of run {run.info.run_name} ({run_id})" +
                           (f": {errors}" if errors else ""))
    c.set_registered_model_alias(name, CHAMPION, version)
    return version


@tracking.store_errors
def log_best_agents(uri: str, experiment_id: str, winners: dict, example_pixels) -> list[str]:
    """Make the best agent of each question (grid or search name -> its winning run id) a logged model
    of the experiment named `QUESTION-best` and tagged with the question, so that the MLflow UI's
    Models column shows it at its run. A question's model is logged once per winner: it stays while
    the winner does, and is replaced (the old one deleted) when another run wins. Returns the
    questions whose model was logged now."""
    from mlflow.entities import LoggedModelStatus

    c = tracking.client(uri)
    current = {}
    for model in _logged_models(c, experiment_id):
        question = model.tags.get(QUESTION)
        if question is None:
            continue  # not a question's model (a registered agent's, a user's)
        if (question in winners and model.source_run_id == winners[question]
                and model.status == LoggedModelStatus.READY and question not in current):
            current[question] = model.model_id
        else:
            c.delete_logged_model(model.model_id)  # a question's former winner, or a logging cut short
    logged = []
    for question, run_id in winners.items():
        if question not in current:
            _log_agent(uri, c.get_run(run_id), f"{question}-best", example_pixels, {QUESTION: question})
            logged.append(question)
    return logged


def _logged_models(c, experiment_id: str) -> list:
    models, token = [], None
    while True:
        page = c.search_logged_models(experiment_ids=[experiment_id], page_token=token)
        models += list(page)
        token = page.token
        if not token:
            return models
