import math

import pytest
import torch

from mnist_core import RunConfig, resolve_device, train
from mnist_core.data import holdout
from mnist_core.trainer import evaluate


def test_learns_the_tiny_digits(tiny_data):
    result = train(RunConfig(epochs=3, lr=0.1), tiny_data)
    assert not result.diverged
    assert result.history[-1].test_error < 0.2


def test_callback_gets_every_epoch_with_whole_set_train_error(tiny_data, pinned_threads):
    seen = []
    result = train(RunConfig(epochs=3, schedule="exponential", gamma=0.5, lr=0.08), tiny_data, on_epoch=seen.append)
    assert [r.epoch for r in seen] == [1, 2, 3]
    assert [r.lr for r in seen] == pytest.approx([0.08, 0.04, 0.02])
    loss, error = evaluate(result.model, tiny_data.train_x, tiny_data.train_y, 1000)
    assert seen[-1].train_loss == pytest.approx(loss) and seen[-1].train_error == pytest.approx(error)
    assert result.model.training is False


def test_same_seed_same_numbers(tiny_data, pinned_threads):
    config = RunConfig(epochs=2, activation="tanh", momentum=0.5)
    a, b = train(config, tiny_data), train(config, tiny_data)
    assert a.history[-1].metrics() == b.history[-1].metrics()
    assert [r.test_loss for r in a.history] == [r.test_loss for r in b.history]
    c = train(config.replace(seed=2), tiny_data)
    assert c.history[-1].train_loss != a.history[-1].train_loss


def test_absurd_lr_diverges_without_raising(tiny_data):
    result = train(RunConfig(epochs=5, lr=1e8, activation="relu"), tiny_data)
    assert result.diverged
    assert len(result.history) < 5
    assert not math.isfinite(result.history[-1].train_loss)


def test_summary_has_final_and_best(tiny_data):
    result = train(RunConfig(epochs=2), tiny_data)
    summary = result.summary()
    assert summary["final_test_error"] == result.history[-1].test_error
    assert summary["best_test_error"] == min(r.test_error for r in result.history)
    assert summary["training_seconds"] > 0


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("name", ["bogus", "mps", "cuda:x", "CPU", "cuda:0:1", "meta", ""])
def test_only_auto_cpu_and_cuda_are_devices(name):
    with pytest.raises(ValueError, match="supported devices: auto, cpu, cuda, cuda:N"):
        resolve_device(name)


def test_callback_returning_false_stops_after_that_epoch(tiny_data, pinned_threads):
    config = RunConfig(epochs=4, lr=0.1)
    seen = []
    stopped = train(config, tiny_data, on_epoch=lambda r: seen.append(r.epoch) or r.epoch < 2)
    assert seen == [1, 2] and stopped.stopped and not stopped.diverged
    assert len(stopped.history) == 2 and stopped.summary()["epochs_completed"] == 2
    shorter = train(config.replace(epochs=2), tiny_data)  # same seed, same batches: the same two epochs
    assert not shorter.stopped
    assert [r.metrics() for r in stopped.history] == [r.metrics() for r in shorter.history]
    assert all(torch.equal(v, shorter.model.state_dict()[n]) for n, v in stopped.model.state_dict().items())
    assert not stopped.model.training


def test_callback_returning_none_or_true_goes_on(tiny_data):
    for answer in (None, True):
        result = train(RunConfig(epochs=2), tiny_data, on_epoch=lambda r: answer)
        assert len(result.history) == 2 and not result.stopped


def test_model_and_numbers_take_the_dtype_of_the_data(tiny_data, tiny_data64, pinned_threads):
    config = RunConfig(epochs=2, activation="sigmoid", lr=0.1)
    wide, narrow = train(config, tiny_data64), train(config, tiny_data)
    assert all(p.dtype == torch.float64 for p in wide.model.parameters())
    assert all(p.dtype == torch.float32 for p in narrow.model.parameters())
    assert wide.history[-1].train_loss == pytest.approx(narrow.history[-1].train_loss, rel=1e-3)


def test_validation_is_measured_every_epoch_and_summarised(tiny_data, pinned_threads):
    result = train(RunConfig(epochs=3, lr=0.1, validation=64), tiny_data)
    assert all(r.val_loss is not None and r.val_error is not None for r in result.history)
    assert set(result.history[0].metrics()) == {"train_loss", "train_error", "test_loss", "test_error", "lr",
                                                "val_loss", "val_error"}
    summary = result.summary()
    assert summary["final_val_error"] == result.history[-1].val_error
    assert summary["final_val_loss"] == result.history[-1].val_loss
    assert summary["best_val_error"] == min(r.val_error for r in result.history)
    model = result.model
    split = holdout(tiny_data, 64)
    assert (result.history[-1].val_loss, result.history[-1].val_error) == evaluate(model, split.val_x, split.val_y, 1000)
    assert (result.history[-1].train_loss, result.history[-1].train_error) == evaluate(
        model, split.train_x, split.train_y, 1000)  # the train error counts only the images trained on


def test_without_validation_nothing_of_it_is_logged(tiny_data):
    result = train(RunConfig(epochs=1), tiny_data)
    assert result.history[0].val_loss is None and result.history[0].val_error is None
    assert "val_loss" not in result.history[0].metrics()
    assert not any("val" in name for name in result.summary())


def test_validation_as_big_as_the_training_set_is_refused(tiny_data):
    with pytest.raises(ValueError, match="validation 320 must be less than the 320 training images"):
        train(RunConfig(validation=320), tiny_data)


@pytest.mark.integration
def test_reference_network_two_epochs_on_real_mnist(real_data_dir):
    from mnist_core import load_mnist

    data = load_mnist(real_data_dir, "cpu", download=False)
    result = train(RunConfig(epochs=2, lr=0.03), data)
    assert result.history[-1].test_error < 0.06


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_sgd_step_is_torchs_in_float64(momentum):
    from mnist_core.trainer import SGD

    torch.manual_seed(0)
    ours = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    mine, reference = SGD(ours, lr=0.1, momentum=momentum), torch.optim.SGD(theirs, lr=0.1, momentum=momentum)
    for step in range(5):
        for params, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad()
            sum((p ** 3).sum() * (step + 1) for p in params).backward()
            optimizer.step()
        mine.lr = reference.param_groups[0]["lr"] = 0.1 / (step + 2)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
