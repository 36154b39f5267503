"""The fused engine: same-shape runs trained as one batched model match their solo runs."""
import os

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from mnist_core import ACTIVATIONS, RunConfig, load_agent, train
from mnist_core.fused import FusedMLP, group_key, train_fused
from mnist_core.train import init_model
from sweep.cli import main
from sweep.runner import plan_jobs
from sweep.spec import PlannedRun, run_key, run_name

from conftest import finished_per_key, training_runs, write_spec


def planned(**settings):
    c = RunConfig(**settings)
    return PlannedRun(c, run_key(c), run_name(c), ("g",))


def test_jobs_group_same_shape_runs_and_split_big_groups():
    runs = [planned(lr=lr / 100, activation=a) for a in ("relu", "tanh") for lr in range(1, 11)]
    runs.append(planned(width=7))
    jobs = plan_jobs(runs, "auto", chunk_size=4)
    assert sorted(len(j) for j in jobs) == [1, 3, 3, 3, 3, 4, 4]  # 10 -> 4+3+3 per activation, the odd one alone
    assert all(len({group_key(r.config) for r in job}) == 1 for job in jobs)
    assert sorted(r.key for job in jobs for r in job) == sorted(r.key for r in runs)
    assert [len(j) for j in plan_jobs(runs, "solo")] == [1] * len(runs)
    with pytest.raises(ValueError, match="unknown engine"):
        plan_jobs(runs, "turbo")


def test_fused_forward_equals_each_member():
    members = [init_model(RunConfig(depth=3, width=9, activation="tanh", seed=s), torch.device("cpu")) for s in (1, 2, 3)]
    fused = FusedMLP(members)
    x = torch.randn(5, 784)
    out = fused(x)
    assert out.shape == (3, 5, 10)
    for k, member in enumerate(members):
        assert torch.allclose(out[k], member(x), atol=1e-5)
        assert all(torch.equal(v, member.state_dict()[n]) for n, v in fused.member_state_dict(k).items())


def _max_weight_gap(a, b):
    return max((a.state_dict()[n] - b.state_dict()[n]).abs().max().item() for n in a.state_dict())


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_members_match_their_solo_runs_on_tiny_data(activation, tiny_data):
    configs = [RunConfig(activation=activation, epochs=3, lr=0.05),
               RunConfig(activation=activation, epochs=3, lr=0.2, momentum=0.5),
               RunConfig(activation=activation, epochs=3, lr=0.1, schedule="cosine"),
               RunConfig(activation=activation, epochs=3, lr=0.1, schedule="exponential", gamma=0.5)]
    seen = []
    fused = train_fused(configs, tiny_data, on_epoch=lambda i, r: seen.append((i, r.epoch)))
    assert sorted(seen) == [(i, e) for i in range(4) for e in (1, 2, 3)]
    for config, result in zip(configs, fused):
        solo = train(config, tiny_data)
        assert [r.lr for r in result.history] == pytest.approx([r.lr for r in solo.history])
        assert [r.test_error for r in result.history] == [r.test_error for r in solo.history]
        assert [r.train_loss for r in result.history] == pytest.approx([r.train_loss for r in solo.history], rel=1e-4)
        assert _max_weight_gap(result.model, solo.model) < 1e-5


def test_a_diverging_member_is_frozen_and_does_not_disturb_the_others(tiny_data):
    configs = [RunConfig(epochs=3, lr=0.1), RunConfig(epochs=3, lr=1e8), RunConfig(epochs=3, lr=0.05)]
    fused = train_fused(configs, tiny_data)
    assert [r.diverged for r in fused] == [False, True, False]
    assert len(fused[1].history) < 3
    for i in (0, 2):
        solo = train(configs[i], tiny_data)
        assert [r.test_error for r in fused[i].history] == [r.test_error for r in solo.history]
        assert _max_weight_gap(fused[i].model, solo.model) < 1e-5


def test_mixed_shapes_are_refused(tiny_data):
    with pytest.raises(ValueError, match="must share"):
        train_fused([RunConfig(width=10), RunConfig(width=20)], tiny_data)


@pytest.mark.integration
def test_members_match_solo_runs_on_real_mnist_for_one_epoch(real_data_dir):
    from mnist_core import load_mnist

    data = load_mnist(real_data_dir, "cpu", download=False)
    for activation in ACTIVATIONS:
        configs = [RunConfig(activation=activation, epochs=1, lr=lr) for lr in (0.01, 0.03, 0.1)]
        for config, result in zip(configs, train_fused(configs, data)):
            solo = train(config, data)
            assert abs(result.history[0].test_error - solo.history[0].test_error) <= 0.001, (config, result, solo)
            for name, weight in solo.model.state_dict().items():
                # float32 rounding differs between one (784 x K*width) product and K small ones; after
                # 938 steps a ReLU unit sitting on its kink can carry that to ~1e-3 of the weights' norm
                gap = (result.model.state_dict()[name] - weight).norm() / weight.norm()
                assert gap < 2e-3, (config, name, gap.item())


def test_sweep_run_fuses_groups_and_tracks_every_member(env):
    spec = write_spec(env, """
experiment: tiny
defaults: {epochs: 2}
grids:
  lrs: {activation: [relu, sigmoid], lr: [0.05, 0.1, 100000000.0]}
  wide: {width: [8]}
""")
    result = CliRunner().invoke(main, ["run", spec, "--jobs", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "6 done, 1 diverged, 0 failed" in result.output  # sigmoid saturates instead of diverging
    runs = training_runs()
    assert len(runs) == 7 and set(finished_per_key(runs).values()) == {1}
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for run in runs:
        diverged = run.data.tags["sweep.diverged"] == "true"
        assert diverged == (run.data.params["lr"] == "100000000.0" and run.data.params["activation"] == "relu")
        if not diverged:
            assert [m.step for m in client.get_metric_history(run.info.run_id, "test_error")] == [1, 2]
        agent = load_agent(client.download_artifacts(run.info.run_id, "mnist_agent.pt", str(env)))
        assert agent.config.lr == float(run.data.params["lr"])
    again = CliRunner().invoke(main, ["run", spec])
    assert "nothing to train: 7 of 7 runs already done" in again.output
    best = CliRunner().invoke(main, ["best", spec, "--by", "activation", "--format", "csv"])
    assert len(best.output.splitlines()) == 3
