import math

import pytest
import torch

from mnist_core import RunConfig, resolve_device, train
from mnist_core.train import evaluate


def test_learns_the_tiny_digits(tiny_data):
    result = train(RunConfig(epochs=3, lr=0.1), tiny_data)
    assert not result.diverged
    assert result.history[-1].test_error < 0.2


def test_callback_gets_every_epoch_with_whole_set_train_error(tiny_data):
    seen = []
    result = train(RunConfig(epochs=3, schedule="exponential", gamma=0.5, lr=0.08), tiny_data, on_epoch=seen.append)
    assert [r.epoch for r in seen] == [1, 2, 3]
    assert [r.lr for r in seen] == pytest.approx([0.08, 0.04, 0.02])
    loss, error = evaluate(result.model, tiny_data.train_x, tiny_data.train_y, 1000)
    assert seen[-1].train_loss == pytest.approx(loss) and seen[-1].train_error == pytest.approx(error)
    assert result.model.training is False


def test_same_seed_same_numbers(tiny_data):
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
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.integration
def test_reference_network_two_epochs_on_real_mnist(real_data_dir):
    from mnist_core import load_mnist

    data = load_mnist(real_data_dir, "cpu", download=False)
    result = train(RunConfig(epochs=2, lr=0.03), data)
    assert result.history[-1].test_error < 0.06
