"""The fused engine: same-shape runs trained as one batched model are their solo runs.

The proofs run in float64, where one large matrix product and K small ones round alike to ~1e-15:
a member's weights must be within 1e-10 (relative) of its solo run's and its per-epoch errors equal.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from mlflow import MlflowClient

from mnist_core import ACTIVATIONS, RunConfig, load_agent, lr_at, train
from mnist_core.fused import GROUP_SETTINGS, FusedMLP, group_key, log_softmax, stacking_order, train_fused
from mnist_core.trainer import init_model
from sweep.cli import main
from sweep.execute import plan_jobs
from sweep.execute.jobs import job_cost
from sweep.queue import schema
from sweep.spec import PlannedRun, run_key, run_name

from conftest import finished_per_key, relative_gap, training_runs, write_spec

TOLERANCE = 1e-10


def planned(**settings):
    c = RunConfig(**settings)
    return PlannedRun(c, run_key(c), run_name(c), ("g",))


def assert_same_run(fused, solo):
    """A fused member's result is its solo run's: same epochs, lrs and errors, losses and weights
    within TOLERANCE, same ending."""
    assert [r.lr for r in fused.history] == [r.lr for r in solo.history]
    for name in ("train_error", "test_error", "val_error"):
        assert [getattr(r, name) for r in fused.history] == [getattr(r, name) for r in solo.history], name
    for name in ("train_loss", "test_loss", "val_loss"):
        got, want = [getattr(r, name) for r in fused.history], [getattr(r, name) for r in solo.history]
        assert got == (want if None in want else pytest.approx(want, rel=TOLERANCE)), name
    assert (fused.diverged, fused.stopped) == (solo.diverged, solo.stopped)
    if not solo.diverged:
        assert relative_gap(fused.model.state_dict(), solo.model.state_dict()) < TOLERANCE


def mixed_group(activation, seeds, epochs=3, **common):
    """Four members of one shape: lrs, momentum, cosine and exponential schedules, and `seeds`."""
    settings = [dict(lr=0.05), dict(lr=0.2, momentum=0.5), dict(lr=0.1, schedule="cosine"),
                dict(lr=0.1, schedule="exponential", gamma=0.5)]
    return [RunConfig(activation=activation, epochs=epochs, seed=seed, **s, **common)
            for s, seed in zip(settings, seeds)]


def test_jobs_group_same_shape_runs_and_split_big_groups():
    runs = [planned(lr=lr / 100, activation=a) for a in ("relu", "tanh") for lr in range(1, 10)]
    runs.append(planned(width=7))
    jobs = plan_jobs(runs, "auto", chunk_size=4)
    assert sorted(len(j) for j in jobs) == [1, 3, 3, 4, 4, 4]  # both activations' 18 -> 4+4+4+3+3, the odd one alone
    assert all(len({group_key(r.config) for r in job}) == 1 for job in jobs)
    assert sorted(r.key for job in jobs for r in job) == sorted(r.key for r in runs)
    assert [len(j) for j in plan_jobs(runs, "solo")] == [1] * len(runs)
    with pytest.raises(ValueError, match="unknown engine"):
        plan_jobs(runs, "turbo")


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_no_job_costs_more_than_a_workers_share_unless_it_is_one_run(workers):
    grid = [planned(lr=lr / 100, activation=a) for a in ("relu", "tanh", "sigmoid", "leaky_relu") for lr in (1, 3, 10, 30)]
    assert [len(j) for j in plan_jobs(grid, "auto", chunk_size=16)] == [16]  # one worker would do it all
    jobs = plan_jobs(grid, "auto", chunk_size=16, workers=workers)
    assert max(job_cost(j) for j in jobs) <= sum(job_cost(j) for j in jobs) / workers
    assert len(jobs) >= workers and sorted(r.key for job in jobs for r in job) == sorted(r.key for r in grid)
    wide = [planned(width=200, lr=0.1)] + [planned(width=10, lr=lr / 100) for lr in range(1, 5)]
    jobs = plan_jobs(wide, "auto", chunk_size=16, workers=2)
    assert [len(j) for j in jobs] == [1, 4]  # the wide run alone costs more than the share: nothing to halve


def test_seeds_and_activations_fuse_but_shapes_and_validation_split_groups():
    assert "seed" not in GROUP_SETTINGS and "activation" not in GROUP_SETTINGS and "validation" in GROUP_SETTINGS
    assert group_key(RunConfig(seed=1, lr=0.1)) == group_key(RunConfig(seed=2, lr=0.3, momentum=0.9))
    assert group_key(RunConfig(activation="tanh")) == group_key(RunConfig(activation="leaky_relu"))
    assert group_key(RunConfig(depth=3)) != group_key(RunConfig())
    assert group_key(RunConfig(validation=100)) != group_key(RunConfig())


def interleaved_activations_group(seeds, epochs=3, **common):
    """Eight members, two of each activation, given out of order (relu, tanh, sigmoid, leaky_relu,
    relu, ...): lrs, momentum, cosine and exponential schedules, and `seeds`."""
    settings = [dict(lr=0.05), dict(lr=0.2, momentum=0.5), dict(lr=0.1, schedule="cosine"),
                dict(lr=0.1, schedule="exponential", gamma=0.5)]
    return [RunConfig(activation=ACTIVATIONS[i % 4], epochs=epochs, seed=seeds[i], **settings[(i + i // 4) % 4],
                      **common) for i in range(8)]


@pytest.mark.parametrize("activations, slices",
                         [(("tanh",) * 3, 1), (("relu", "sigmoid", "sigmoid", "relu", "tanh"), 4)],
                         ids=["one-activation", "interleaved-activations"])
@pytest.mark.parametrize("batched", [False, True], ids=["shared-batch", "batch-per-member"])
def test_fused_forward_equals_each_member(batched, activations, slices, pinned_threads):
    members = [init_model(RunConfig(depth=3, width=9, activation=a, seed=s), "cpu", torch.float64)
               for s, a in enumerate(activations, 1)]
    fused = FusedMLP.stack(members)
    assert len(fused.slices) == slices  # one activation call per run of alike members
    k = len(members)
    x = torch.randn(k, 5, 784, dtype=torch.float64) if batched else torch.randn(5, 784, dtype=torch.float64)
    out = fused(x)
    assert out.shape == (k, 5, 10)
    for k, member in enumerate(members):
        assert torch.allclose(out[k], member(x[k] if batched else x), rtol=TOLERANCE, atol=0)
        assert all(torch.equal(v, member.state_dict()[n]) for n, v in fused.member_state_dict(k).items())


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("blocks", [None, (1,) * 6, (2, 1, 3)], ids=["shared-batch", "batch-per-member", "blocks"])
def test_the_written_out_backward_gives_each_members_autograd_gradient(blocks, depth, pinned_threads):
    activations = ("relu", "sigmoid", "sigmoid", "leaky_relu", "tanh", "relu")
    members = [init_model(RunConfig(depth=depth, width=9, activation=a, seed=s), "cpu", torch.float64)
               for s, a in enumerate(activations, 1)]
    fused = FusedMLP.stack(members)
    k, b = len(members), 5
    if blocks is None:
        x, y = torch.randn(b, 784, dtype=torch.float64), torch.randint(0, 10, (b,))
        batches = [(x, y)] * k
    else:  # block j's members share batch j
        x, y = torch.randn(len(blocks), b, 784, dtype=torch.float64), torch.randint(0, 10, (len(blocks), b))
        batches = [(x[j], y[j]) for j, n in enumerate(blocks) for _ in range(n)]
    for member, (xk, yk) in zip(members, batches):  # each member's own gradient, by autograd, in its weights' place
        loss = F.nll_loss(member(xk), yk)
        for p, g in zip(member.parameters(), torch.autograd.grad(loss, list(member.parameters()))):
            p.data = g
    want = list(FusedMLP.stack(members).parameters())
    outs = fused.outputs(x, blocks)
    assert torch.allclose(F.log_softmax(outs[-1], 2), fused(x, blocks))
    targets = torch.stack([yk for _, yk in batches])
    delta = (outs[-1].softmax(2) - F.one_hot(targets, 10)) / b  # d(mean NLL)/d(logits), per member
    got = [torch.full_like(p, 1.0) for p in fused.parameters()]  # the gradients are added to what is there
    fused.add_gradients(x, blocks, outs, delta, got)
    for g, w in zip(got, want):
        assert torch.allclose(g - 1, w, rtol=1e-12, atol=1e-15)


def test_log_softmax_is_torchs_up_to_rounding_even_for_huge_logits():
    logits = torch.randn(7, 64, 10, dtype=torch.float64) * torch.tensor([1.0, 30.0, 1e3, 1e6, 1e-3, 1.0, 1.0],
                                                                        dtype=torch.float64).view(7, 1, 1)
    logits[5] += 1e4  # a member far from zero
    log_p, p = log_softmax(logits.clone())
    assert torch.allclose(log_p, F.log_softmax(logits, dim=2), rtol=1e-14, atol=1e-13)
    assert torch.allclose(p, F.softmax(logits, dim=2), rtol=1e-14, atol=1e-15)
    assert torch.isfinite(log_p).all()
    diverged = torch.tensor([[1.0, float("inf"), 0.0], [float("nan"), 1.0, 2.0], [float("-inf"), 0.0, 1.0]])
    log_p, p = log_softmax(diverged.clone())  # a diverging member must look diverged, as with torch's
    for mine, torchs in ((log_p, F.log_softmax(diverged, dim=1)), (p, F.softmax(diverged, dim=1))):
        assert torch.equal(torch.isfinite(mine), torch.isfinite(torchs))
        assert torch.equal(torch.isnan(mine), torch.isnan(torchs))


def test_stacking_order_keeps_each_seeds_members_together_and_each_activation_in_few_slices():
    settings = ((5, "tanh"), (1, "relu"), (7, "relu"), (1, "tanh"), (2, "sigmoid"), (5, "relu"), (3, "tanh"))
    configs = [RunConfig(seed=s, activation=a) for s, a in settings]
    # seeds 7, 2 and 3 have one member each (relu, sigmoid, tanh: three slices); then seeds 1 and 5
    assert stacking_order(configs) == [2, 4, 6, 1, 3, 5, 0]


def test_select_keeps_the_chosen_members_and_drops_their_cost():
    activations = ("relu", "relu", "tanh", "sigmoid")
    members = [init_model(RunConfig(width=6, seed=s, activation=a), "cpu") for s, a in enumerate(activations, 1)]
    fused = FusedMLP.stack(members)
    kept = fused.select(torch.tensor([0, 2, 3]))
    assert kept.k == 3 and sum(p.numel() for p in kept.parameters()) == 3 * sum(p.numel() for p in members[0].parameters())
    for k, original in zip(range(3), (0, 2, 3)):
        assert all(torch.equal(v, members[original].state_dict()[n]) for n, v in kept.member_state_dict(k).items())
    assert [(type(a).__name__, start, stop) for a, start, stop in kept.slices] == [
        ("ReLU", 0, 1), ("Tanh", 1, 2), ("Sigmoid", 2, 3)]
    x = torch.randn(4, 784)
    assert torch.equal(kept(x), fused(x)[[0, 2, 3]])


@pytest.mark.parametrize("seeds", [(1, 1, 1, 1), (1, 2, 3, 2)], ids=["one-seed", "mixed-seeds"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_members_are_their_solo_runs_in_float64(activation, seeds, tiny_data64, pinned_threads):
    configs = mixed_group(activation, seeds)
    seen = []
    fused = train_fused(configs, tiny_data64, on_epoch=lambda i, r: seen.append((i, r.epoch)))
    assert sorted(seen) == [(i, e) for i in range(4) for e in (1, 2, 3)]
    for config, result in zip(configs, fused):
        assert result.model.layers[0].weight.dtype == torch.float64
        assert_same_run(result, train(config, tiny_data64))


@pytest.mark.parametrize("seeds", [(1,) * 8, (1, 2, 3, 2, 1, 3, 2, 1)], ids=["one-seed", "mixed-seeds"])
def test_members_of_different_activations_are_their_solo_runs_in_float64(seeds, tiny_data64, pinned_threads):
    configs = interleaved_activations_group(seeds)
    seen = []
    fused = train_fused(configs, tiny_data64, on_epoch=lambda i, r: seen.append((i, r.epoch)))
    assert seen == [(i, e) for e in (1, 2, 3) for i in range(8)]  # in the group's order, each epoch
    for config, result in zip(configs, fused):
        solo = train(config, tiny_data64)
        assert result.config == config and repr(result.model) == repr(solo.model)  # its own activation
        assert_same_run(result, solo)


def test_members_of_different_activations_leave_and_the_others_are_unchanged(tiny_data64, pinned_threads):
    # batch 4: 80 steps an epoch; relu at lr 1e20 diverges mid-epoch 1, the tanh member is stopped
    # after epoch 1: each is its activation's only member, so its slice goes with it
    configs = [RunConfig(activation=a, epochs=3, batch_size=4, lr=lr, seed=s)
               for a, lr, s in (("sigmoid", 0.05, 1), ("relu", 1e20, 2), ("leaky_relu", 0.02, 1),
                                ("tanh", 0.02, 3), ("sigmoid", 0.1, 2))]
    fused = train_fused(configs, tiny_data64, on_epoch=lambda i, r: i != 3)
    assert [r.diverged for r in fused] == [False, True, False, False, False]
    assert [r.stopped for r in fused] == [False, False, False, True, False]
    assert_same_run(fused[3], train(configs[3], tiny_data64, on_epoch=lambda r: False))
    assert len(fused[1].history) == len(train(configs[1], tiny_data64).history) == 1
    for i in (0, 2, 4):
        assert_same_run(fused[i], train(configs[i], tiny_data64))


def test_member_lr_is_the_schedules_python_float(tiny_data):
    configs = [RunConfig(epochs=2, lr=0.03), RunConfig(epochs=2, lr=0.1, schedule="cosine")]
    for config, result in zip(configs, train_fused(configs, tiny_data)):
        assert [r.lr for r in result.history] == [lr_at(config, e) for e in (1, 2)]
        assert all(type(r.lr) is float for r in result.history)
    assert train_fused(configs, tiny_data)[0].history[0].lr == 0.03  # not 0.029999999329447746


def test_members_with_validation_are_their_solo_runs(tiny_data64, pinned_threads):
    configs = mixed_group("relu", (1, 2, 1, 3), epochs=2, validation=64)
    configs += interleaved_activations_group((2, 1, 3, 1, 2, 2, 1, 3), epochs=2, validation=64)
    for config, result in zip(configs, train_fused(configs, tiny_data64)):
        assert all(r.val_error is not None for r in result.history)
        assert_same_run(result, train(config, tiny_data64))


def test_a_stopped_member_leaves_and_the_others_are_unchanged(tiny_data64, pinned_threads):
    configs = mixed_group("tanh", (1, 2, 1, 3))
    seen = []

    def stop_member_1_after_epoch_1(i, record):
        seen.append((i, record.epoch))
        return not (i == 1 and record.epoch == 1)

    fused = train_fused(configs, tiny_data64, on_epoch=stop_member_1_after_epoch_1)
    assert (1, 2) not in seen and (0, 3) in seen
    assert [r.stopped for r in fused] == [False, True, False, False]
    stopped_solo = train(configs[1], tiny_data64, on_epoch=lambda r: r.epoch < 1)
    assert stopped_solo.stopped and len(stopped_solo.history) == len(fused[1].history) == 1
    assert_same_run(fused[1], stopped_solo)
    for i in (0, 2, 3):
        assert_same_run(fused[i], train(configs[i], tiny_data64))


@pytest.mark.parametrize("seeds", [(1, 2, 3), (1, 2, 1)], ids=["seeds-stay-mixed", "one-seed-left"])
def test_a_diverging_member_leaves_and_the_others_are_unchanged(seeds, tiny_data64, pinned_threads):
    # batch 4: 80 steps an epoch, so the divergence check at step 50 takes the member out mid-epoch
    configs = [RunConfig(epochs=3, batch_size=4, lr=lr, seed=s) for lr, s in zip((0.01, 1e20, 0.02), seeds)]
    fused = train_fused(configs, tiny_data64)
    assert [r.diverged for r in fused] == [False, True, False]
    solo = train(configs[1], tiny_data64)
    assert solo.diverged and len(fused[1].history) == len(solo.history) == 1
    for i in (0, 2):
        assert_same_run(fused[i], train(configs[i], tiny_data64))


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("seeds", [(1,) * 8, (1, 2, 3, 2, 1, 3, 2, 1)], ids=["one-seed", "mixed-seeds"])
def test_members_of_any_depth_with_a_short_last_batch_are_their_solo_runs(seeds, depth, tiny_data64, pinned_threads):
    # 320 images in batches of 48: the last batch holds 32, and its mean NLL divides by 32
    configs = interleaved_activations_group(seeds, depth=depth, width=12, batch_size=48)
    for config, result in zip(configs, train_fused(configs, tiny_data64)):
        assert_same_run(result, train(config, tiny_data64))


@pytest.mark.parametrize("seeds", [(1, 1, 1, 1), (1, 2, 3, 2)], ids=["one-seed", "mixed-seeds"])
def test_diverging_members_with_momentum_leave_when_their_solo_runs_stop(seeds, tiny_data64, pinned_threads):
    # batch 4: 80 steps an epoch; the leaky_relu members' losses turn NaN before the check at step 50
    configs = [RunConfig(activation=a, epochs=3, batch_size=4, lr=lr, momentum=m, seed=s)
               for (a, lr, m), s in zip((("tanh", 0.05, 0.9), ("leaky_relu", 0.4, 0.5), ("sigmoid", 0.1, 0.0),
                                         ("leaky_relu", 6.0, 0.0)), seeds)]
    fused = train_fused(configs, tiny_data64)
    assert [r.diverged for r in fused] == [False, True, False, True]
    for config, result in zip(configs, fused):
        solo = train(config, tiny_data64)
        if solo.diverged:  # its losses are NaN: the epochs it had and its ending are compared
            assert (len(result.history), result.diverged) == (len(solo.history), True)
        else:
            assert_same_run(result, solo)


def test_training_ends_when_every_member_is_gone(tiny_data):
    fused = train_fused([RunConfig(epochs=5), RunConfig(epochs=5, seed=2)], tiny_data,
                        on_epoch=lambda i, r: r.epoch < 2 + i)
    assert [len(r.history) for r in fused] == [2, 3] and all(r.stopped for r in fused)
    assert all(r.model is not None and not r.model.training for r in fused)


def test_float32_smoke(tiny_data, pinned_threads):
    """float32 rounds differently in the two engines; only a bound no rounding can reach is checked."""
    configs = mixed_group("relu", (1, 1, 2, 2))
    for config, result in zip(configs, train_fused(configs, tiny_data)):
        solo = train(config, tiny_data)
        assert result.model.layers[0].weight.dtype == torch.float32
        assert abs(result.history[-1].test_error - solo.history[-1].test_error) <= 0.1
        assert relative_gap(result.model.state_dict(), solo.model.state_dict()) < 0.1


def test_mixed_shapes_are_refused(tiny_data):
    with pytest.raises(ValueError, match="must share"):
        train_fused([RunConfig(width=10), RunConfig(width=20)], tiny_data)
    with pytest.raises(ValueError, match="must share"):
        train_fused([RunConfig(validation=10), RunConfig()], tiny_data)


@pytest.mark.system
@pytest.mark.integration
def test_members_are_their_solo_runs_on_real_mnist_for_one_epoch(real_data_dir, pinned_threads):
    from mnist_core import load_mnist

    data = load_mnist(real_data_dir, "cpu", download=False, dtype=torch.float64)
    # Learning rates where SGD is stable: at tanh lr 0.3 the dynamics are chaotic, and any rounding
    # difference (1e-16) grows about 10x every 50 steps, to ~1e-6 of the weights in one epoch.
    groups = [[RunConfig(epochs=1, lr=0.03, seed=1), RunConfig(epochs=1, lr=0.1, momentum=0.5, seed=2),
               RunConfig(epochs=1, lr=0.05, seed=3)],                                # a batch per member
              [RunConfig(activation=a, epochs=1, lr=lr) for a, lr in (("sigmoid", 0.1), ("relu", 0.03),  # one
                                                                      ("leaky_relu", 0.1), ("tanh", 0.05))]]  # batch
    for configs in groups:
        for config, result in zip(configs, train_fused(configs, data)):
            assert_same_run(result, train(config, data))


@pytest.mark.system
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
        diverged = schema.is_set(run.data.tags[schema.DIVERGED])
        assert diverged == (run.data.params["lr"] == "100000000.0" and run.data.params["activation"] == "relu")
        if not diverged:
            assert [m.step for m in client.get_metric_history(run.info.run_id, "test_error")] == [1, 2]
        agent = load_agent(client.download_artifacts(run.info.run_id, "mnist_agent.pt", str(env)))
        assert agent.config.lr == float(run.data.params["lr"])
    again = CliRunner().invoke(main, ["run", spec])
    assert "nothing to train: 7 of 7 runs already done" in again.output
    best = CliRunner().invoke(main, ["best", spec, "--by", "activation", "--format", "csv"])
    assert len(best.output.splitlines()) == 3
