import pytest
import torch

from mnist_core import RunConfig, load_agent, save_agent, train


def test_round_trip_gives_identical_predictions(tiny_data, tmp_path):
    config = RunConfig(epochs=1, depth=3, width=17, activation="sigmoid")
    result = train(config, tiny_data)
    path = save_agent(tmp_path, result.model, config, result.summary())
    assert path.name == "mnist_agent.pt"
    model = load_agent(path)
    assert not model.training
    assert model.config == config
    assert model.metrics["final_test_error"] == pytest.approx(result.history[-1].test_error)
    with torch.no_grad():
        assert torch.equal(model(tiny_data.test_x), result.model(tiny_data.test_x))


def test_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an mnist-sweep agent"):
        load_agent(tmp_path / "other.pt")


def test_loading_never_unpickles_code(tmp_path):
    torch.save({"format": "mnist-agent/1", "config": RunConfig()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_agent(tmp_path / "evil.pt")
