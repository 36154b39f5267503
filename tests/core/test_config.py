import dataclasses

import pytest

from mnist_core import RunConfig


def test_defaults_are_the_reference_settings():
    c = RunConfig()
    assert (c.activation, c.depth, c.width, c.lr, c.epochs, c.batch_size, c.test_batch_size, c.seed,
            c.momentum, c.schedule, c.validation) == ("relu", 2, 50, 0.03, 10, 64, 1000, 1, 0.0, "fixed", 0)


def test_frozen_and_params_are_flat():
    c = RunConfig(lr=1)
    assert isinstance(c.lr, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 0.1
    assert c.as_params()["lr"] == 1.0
    assert all(isinstance(v, (int, float, str)) for v in c.as_params().values())


@pytest.mark.parametrize("changes,message", [
    ({"lr": 0}, "lr must be > 0"),
    ({"lr": -1.0}, "lr must be > 0"),
    ({"depth": 0}, "depth must be >= 1"),
    ({"width": 2.5}, "width must be an integer"),
    ({"activation": "gelu"}, "unknown activation 'gelu'"),
    ({"schedule": "step"}, "unknown schedule 'step'"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ({"epochs": True}, "epochs must be an integer"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"validation": -1}, "validation must be >= 0"),
    ({"validation": 0.5}, "validation must be an integer"),
])
def test_bad_settings_raise_naming_the_setting(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)
