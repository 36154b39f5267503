import pytest
import torch

from mnist_core import AgentFileError, RunConfig, load_agent, save_agent, train
from mnist_core.fused import train_fused


def test_round_trip_gives_identical_predictions(tiny_data, tmp_path, pinned_threads):
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


def test_a_fused_members_agent_and_its_validation_metrics(tiny_data, tmp_path, pinned_threads):
    configs = [RunConfig(epochs=1, validation=32, seed=s) for s in (1, 2)]
    result = train_fused(configs, tiny_data)[1]
    model = load_agent(save_agent(tmp_path, result.model, configs[1], result.summary()))
    assert model.config.validation == 32 and "best_val_error" in model.metrics
    with torch.no_grad():
        assert torch.equal(model(tiny_data.test_x), result.model(tiny_data.test_x))


def test_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(AgentFileError, match="other.pt: not an mnist-sweep agent"):
        load_agent(tmp_path / "other.pt")


def test_loading_never_unpickles_code(tmp_path):
    torch.save({"format": "mnist-agent/1", "config": RunConfig()}, tmp_path / "evil.pt")
    with pytest.raises(AgentFileError, match="evil.pt: refused: .*weights_only=True") as info:
        load_agent(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(info.value)


def _agent_bytes(tiny_data, tmp_path) -> bytes:
    result = train(RunConfig(epochs=1), tiny_data)
    return save_agent(tmp_path / "good.pt", result.model, result.config, result.summary()).read_bytes()


@pytest.mark.parametrize("content,reason", [
    (lambda good: b"", "the file is empty"),
    (lambda good: b"epoch 1 lr 0.03\n", r"not an agent file \(not a PyTorch zip archive\)"),
    (lambda good: good[:len(good) // 2], "truncated or corrupt PyTorch file"),
    (lambda good: good[:-30], "truncated or corrupt PyTorch file"),
])
def test_broken_files_get_one_line_naming_file_and_reason(tiny_data, tmp_path, content, reason):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content(_agent_bytes(tiny_data, tmp_path)))
    with pytest.raises(AgentFileError, match=reason) as info:
        load_agent(bad)
    assert str(info.value).startswith(f"{bad}: ") and len(str(info.value).splitlines()) == 1


def test_weights_that_do_not_fit_the_settings(tiny_data, tmp_path):
    result = train(RunConfig(epochs=1), tiny_data)
    path = save_agent(tmp_path, result.model, RunConfig(width=7), result.summary())
    with pytest.raises(AgentFileError, match="invalid agent: Error"):
        load_agent(path)
