import pytest
import torch

from mnist_core import ACTIVATIONS, MLP, RunConfig
from mnist_core.trainer import init_model


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("depth,width", [(1, 1), (2, 50), (3, 7), (5, 200)])
def test_output_is_ten_log_probabilities(activation, depth, width):
    model = MLP(depth, width, activation)
    out = model(torch.randn(13, 1, 28, 28))
    assert out.shape == (13, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(13), atol=1e-5)


def test_reference_network_shape():
    model = MLP.from_config(RunConfig())
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(50, 784), (50,), (50, 50), (50,), (10, 50), (10,)]
    assert sum(p.numel() for p in model.parameters()) == 42_310


def test_depth_counts_hidden_layers_and_keeps_io():
    model = MLP(depth=4, width=9)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5
    assert linears[0].in_features == 784 and linears[-1].out_features == 10


def test_leaky_relu_slope_is_one_hundredth():
    act = MLP(1, 3, "leaky_relu").layers[1]
    assert act(torch.tensor([-2.0])).item() == pytest.approx(-0.02)


def test_float64_model_starts_from_the_float32_initial_weights():
    narrow, wide = init_model(RunConfig(seed=3), "cpu"), init_model(RunConfig(seed=3), "cpu", torch.float64)
    for name, weight in wide.state_dict().items():
        assert weight.dtype == torch.float64 and torch.equal(weight, narrow.state_dict()[name].double())
