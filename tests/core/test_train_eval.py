"""train_eval: the per-epoch train numbers on a fixed sample of the images trained on, or on all of
them; nothing else about a run changes."""
import pytest
import torch

from mnist_core import RunConfig, train
from mnist_core.config import TRAIN_SAMPLE
from mnist_core.data import MnistTensors, describe_mnist, holdout, train_sample
from mnist_core.fused import train_fused
from mnist_core.trainer import evaluate
from sweep.spec import run_key, run_name

from test_fused import assert_same_run

TAG = 1e-4  # pixel 0 of image i is i * TAG, so that a sample tells which images it took


@pytest.fixture(scope="module")
def wide_data64():
    """Random float64 'images' with more training images than the sample holds."""
    g = torch.Generator().manual_seed(0)
    n, n_test = TRAIN_SAMPLE + 600, 300
    train_x = torch.randn(n, 784, generator=g, dtype=torch.float64)
    train_x[:, 0] = torch.arange(n, dtype=torch.float64) * TAG
    return MnistTensors(train_x, torch.randint(0, 10, (n,), generator=g),
                        torch.randn(n_test, 784, generator=g, dtype=torch.float64),
                        torch.randint(0, 10, (n_test,), generator=g))


def image_ids(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 0] / TAG).long().tolist()


def test_the_sample_is_a_fixed_part_of_the_images_trained_on(wide_data64, tiny_data):
    x, y = train_sample(wide_data64)
    ids = image_ids(x)
    assert len(ids) == TRAIN_SAMPLE and ids == sorted(set(ids))  # distinct images, in their original order
    assert torch.equal(y, wide_data64.train_y[ids])
    assert ids != list(range(TRAIN_SAMPLE))  # drawn from all of them, not their first images
    again = train_sample(MnistTensors(*(t.clone() for t in (wide_data64.train_x, wide_data64.train_y,
                                                          wide_data64.test_x, wide_data64.test_y))))
    assert image_ids(again[0]) == ids  # the same images for every run and seed
    kept = holdout(wide_data64, 500)
    assert set(image_ids(train_sample(kept)[0])) <= set(image_ids(kept.train_x))  # never a validation image
    small_x, small_y = train_sample(tiny_data)
    assert small_x is tiny_data.train_x and small_y is tiny_data.train_y  # no more images than it holds: all


def test_sample_changes_only_what_the_train_numbers_are_measured_on(wide_data64, pinned_threads):
    common = dict(width=16, epochs=2, batch_size=256, lr=0.05, validation=500)
    full = train(RunConfig(**common, train_eval="full"), wide_data64)
    sample = train(RunConfig(**common, train_eval="sample"), wide_data64)
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(), sample.model.state_dict().values()))
    for a, b in zip(full.history, sample.history):
        assert (a.test_loss, a.test_error, a.val_loss, a.val_error) == (b.test_loss, b.test_error, b.val_loss,
                                                                        b.val_error)
    trained_on = holdout(wide_data64, 500)
    assert (full.history[-1].train_loss, full.history[-1].train_error) == evaluate(
        full.model, trained_on.train_x, trained_on.train_y, 1000)
    assert (sample.history[-1].train_loss, sample.history[-1].train_error) == evaluate(
        sample.model, *train_sample(trained_on), 1000)


def test_fused_members_measure_the_same_sample_as_their_solo_runs(wide_data64, pinned_threads):
    configs = [RunConfig(width=16, epochs=1, batch_size=256, lr=lr, seed=seed, train_eval="sample")
               for lr, seed in ((0.05, 1), (0.2, 2))]
    for config, result in zip(configs, train_fused(configs, wide_data64)):
        assert_same_run(result, train(config, wide_data64))


def test_the_default_keeps_the_keys_of_runs_already_stored():
    sample, full = RunConfig(), RunConfig(train_eval="full")
    assert RunConfig().train_eval == "sample"
    # the key relu-lr0.03-d2-w50-val10000 has in a store written before train_eval existed
    assert run_key(RunConfig(validation=10_000)) == "612353871e0cce6f"
    assert run_key(full) != run_key(sample) and run_name(full).endswith("-evalfull")
    assert run_name(sample) == "relu-lr0.03-d2-w50"


def test_a_bad_value_names_the_choices():
    with pytest.raises(ValueError, match="unknown train_eval 'some'; choose one of: sample, full"):
        RunConfig(train_eval="some")


@pytest.mark.integration
def test_the_sample_is_logged_as_a_data_part_with_its_size(real_data_dir):
    names = {p.name: p for p in describe_mnist(real_data_dir, 10_000, "sample")}
    assert list(names) == ["mnist-train", "mnist-validation", "mnist-train-sample", "mnist-test"]
    part = names["mnist-train-sample"]
    assert (part.images, part.context) == (TRAIN_SAMPLE, "train-evaluation") and "50000 training images" in part.split
    assert "mnist-train-sample" not in {p.name for p in describe_mnist(real_data_dir, 10_000, "full")}
