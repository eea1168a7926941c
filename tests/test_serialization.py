"""save → load: no pickle, atomic, nothing overwritten silently, bit-identical outputs."""

from __future__ import annotations

import json

import pytest
import torch

import edgeprune as ep
from edgeprune import zoo
from edgeprune.inputs import call, main_output

CASES = [
    ("small_cnn", "stm32h743", ep.Budget(macs_ratio=0.6)),
    ("tiny_resnet", "stm32h743", ep.Budget(macs_ratio=0.85)),
    ("tiny_mobilenet_v2", "raspberry-pi-5", ep.Budget(macs_ratio=0.6)),
    ("tiny_convnext", "raspberry-pi-5", ep.Budget(sparsity=0.4)),
    ("tiny_vit", "stm32h743", ep.Budget(macs_ratio=0.6)),
    ("tiny_bert", "raspberry-pi-5", ep.Budget(macs_ratio=0.6)),
    ("small_cnn", "corstone-300-ethos-u55-128", ep.Budget(sparsity=0.5)),  # unstructured masks
]


def _outputs(model, inputs):
    with torch.no_grad():
        return main_output(call(model.eval(), inputs))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for name, target, budget in CASES:
        factory = getattr(zoo, name)
        model, inputs = factory(), factory.example_inputs()
        plan = ep.plan(model, inputs, target, budget)
        pruned = ep.prune(model, plan)
        directory = tmp_path_factory.mktemp(name) / "saved"
        ep.save(pruned, plan, directory, factory=factory)
        out[(name, target)] = (factory, inputs, plan, pruned, directory)
    return out


@pytest.mark.parametrize("name,target", [(n, t) for n, t, _ in CASES])
def test_save_then_load_gives_bit_identical_outputs(saved, name, target):
    factory, inputs, _, pruned, directory = saved[(name, target)]
    loaded = ep.load(factory, directory)
    assert torch.equal(_outputs(pruned, inputs), _outputs(loaded, inputs))


def test_load_by_factory_spec_string(saved):
    factory, inputs, _, pruned, directory = saved[("small_cnn", "stm32h743")]
    loaded = ep.load("edgeprune.zoo:small_cnn", directory)
    assert torch.equal(_outputs(pruned, inputs), _outputs(loaded, inputs))


def test_loaded_model_keeps_masks_for_fine_tuning(saved):
    factory, _, _, pruned, directory = saved[("small_cnn", "corstone-300-ethos-u55-128")]
    loaded = ep.load(factory, directory)
    masked = [n for n, m in loaded.named_modules() if hasattr(m, "weight_mask")]
    assert masked and masked == [n for n, m in pruned.named_modules() if hasattr(m, "weight_mask")]


def test_saved_directory_holds_only_safetensors_and_json(saved):
    *_, directory = saved[("tiny_vit", "stm32h743")]
    assert sorted(p.name for p in directory.iterdir()) == ["structure.json", "weights.safetensors"]
    structure = json.loads((directory / "structure.json").read_text())
    assert structure["schema"] == "edgeprune.model/1"
    assert structure["factory"] == "edgeprune.zoo:tiny_vit"
    assert structure["removals"], "structured removals are recorded"


def test_save_refuses_to_overwrite_an_existing_directory(saved):
    _, _, plan, pruned, directory = saved[("small_cnn", "stm32h743")]
    before = (directory / "weights.safetensors").read_bytes()
    with pytest.raises(ep.ArtifactError, match="already exists"):
        ep.save(pruned, plan, directory)
    assert (directory / "weights.safetensors").read_bytes() == before


def test_save_with_overwrite_replaces_the_directory_and_leaves_no_temporaries(saved, tmp_path):
    factory, inputs, plan, pruned, _ = saved[("small_cnn", "stm32h743")]
    target = tmp_path / "model"
    ep.save(pruned, plan, target)
    ep.save(pruned, plan, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_load_of_a_missing_directory_names_the_file(tmp_path):
    with pytest.raises(ep.ArtifactError, match="structure.json"):
        ep.load(zoo.small_cnn, tmp_path / "nothing")


def test_load_of_corrupt_weights_is_an_error(saved, tmp_path):
    factory, _, plan, pruned, _ = saved[("small_cnn", "stm32h743")]
    target = ep.save(pruned, plan, tmp_path / "m")
    weights = target / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ep.ArtifactError, match="weights.safetensors"):
        ep.load(factory, target)


def test_load_with_the_wrong_factory_is_an_error(saved):
    *_, directory = saved[("small_cnn", "stm32h743")]
    with pytest.raises(ep.ArtifactError):
        ep.load(zoo.tiny_mobilenet_v2, directory)


def test_load_never_unpickles(saved, monkeypatch):
    factory, _, _, _, directory = saved[("small_cnn", "stm32h743")]

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load / pickle must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    ep.load(factory, directory)
