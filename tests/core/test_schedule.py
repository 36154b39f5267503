import pytest
import torch

from mnist_core import RunConfig, lr_schedule


def _torch_lrs(config, make_scheduler):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(config.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_fixed():
    assert lr_schedule(RunConfig(lr=0.1, epochs=4)) == [0.1] * 4


def test_exponential_decays_per_epoch():
    c = RunConfig(lr=0.1, epochs=4, schedule="exponential", gamma=0.5)
    assert lr_schedule(c) == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert lr_schedule(c) == pytest.approx(_torch_lrs(c, lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.5)))


def test_cosine_matches_torch_annealing_over_the_run():
    c = RunConfig(lr=0.2, epochs=6, schedule="cosine")
    lrs = lr_schedule(c)
    assert lrs[0] == 0.2 and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs == pytest.approx(_torch_lrs(c, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6)))


def test_cosine_restarts_drops_and_recovers_each_period():
    c = RunConfig(lr=0.2, epochs=7, schedule="cosine_restarts", restart_period=3)
    lrs = lr_schedule(c)
    assert lrs[0] == lrs[3] == lrs[6] == 0.2
    assert lrs[1] < lrs[0] and lrs[2] < lrs[1] and lrs[3] > lrs[2]
    expected = _torch_lrs(c, lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3))
    assert lrs == pytest.approx(expected)
