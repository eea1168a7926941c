"""save → load: no pickle, atomic, nothing overwritten silently, bit-identical outputs."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _perturb(model, seed):
    """Move every weight and statistic (masks aside) away from the factory's seeded values, as training would:
    a load that ignored the weights file and kept the factory's would then be caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith("_mask"):
                tensor.add_(0.05 * torch.rand(tensor.shape, generator=g))  # positive: running variances stay so
    return model


@dataclass(frozen=True)
class Saved:
    factory: Any
    inputs: Any
    plan: ep.Plan
    pruned: torch.nn.Module  # with perturbed weights
    directory: Path  # where it is saved
    untrained: torch.Tensor  # the outputs of the same pruned model with the factory's weights


def _same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for name, target, budget in CASES:
        factory = getattr(zoo, name)
        model, inputs = factory(), factory.example_inputs()
        plan = ep.plan(model, inputs, target, budget)
        pruned = ep.prune(model, plan)
        untrained = _outputs(pruned, inputs)
        _perturb(pruned, seed=len(out))
        directory = tmp_path_factory.mktemp(name) / "saved"
        ep.save(pruned, plan, directory, factory=factory)
        out[(name, target)] = Saved(factory, inputs, plan, pruned, directory, untrained)
    return out


@pytest.mark.parametrize("name,target", [(n, t) for n, t, _ in CASES])
def test_save_then_load_gives_back_every_tensor_and_bit_identical_outputs(saved, name, target):
    case = saved[(name, target)]
    loaded = ep.load(case.factory, case.directory)
    assert _same_tensors(loaded, case.pruned)
    assert torch.equal(_outputs(case.pruned, case.inputs), _outputs(loaded, case.inputs))
    assert not torch.equal(_outputs(loaded, case.inputs), case.untrained)  # the saved weights, not the factory's


def test_load_by_factory_spec_string(saved):
    case = saved[("small_cnn", "stm32h743")]
    loaded = ep.load("edgeprune.zoo:small_cnn", case.directory)
    assert _same_tensors(loaded, case.pruned)
    assert torch.equal(_outputs(case.pruned, case.inputs), _outputs(loaded, case.inputs))


def test_loaded_model_keeps_masks_for_fine_tuning(saved):
    case = saved[("small_cnn", "corstone-300-ethos-u55-128")]
    loaded = ep.load(case.factory, case.directory)
    masked = [n for n, m in loaded.named_modules() if hasattr(m, "weight_mask")]
    assert masked and masked == [n for n, m in case.pruned.named_modules() if hasattr(m, "weight_mask")]
    modules = dict(case.pruned.named_modules())
    for name in masked:
        mask = dict(loaded.named_modules())[name].weight_mask
        assert torch.equal(mask, modules[name].weight_mask) and 0 < float(mask.mean()) < 1  # the plan's mask itself


def test_saved_directory_holds_only_safetensors_and_json(saved):
    directory = saved[("tiny_vit", "stm32h743")].directory
    assert sorted(p.name for p in directory.iterdir()) == ["structure.json", "weights.safetensors"]
    structure = json.loads((directory / "structure.json").read_text())
    assert structure["schema"] == "edgeprune.model/1"
    assert structure["factory"] == "edgeprune.zoo:tiny_vit"
    assert structure["removals"], "structured removals are recorded"


def test_save_refuses_to_overwrite_an_existing_directory(saved):
    case = saved[("small_cnn", "stm32h743")]
    before = (case.directory / "weights.safetensors").read_bytes()
    with pytest.raises(ep.ArtifactError, match="already exists"):
        ep.save(case.pruned, case.plan, case.directory)
    assert (case.directory / "weights.safetensors").read_bytes() == before


def test_save_with_overwrite_replaces_the_directory_and_leaves_no_temporaries(saved, tmp_path):
    case = saved[("small_cnn", "stm32h743")]
    target = tmp_path / "model"
    ep.save(case.pruned, case.plan, target)
    newer = _perturb(copy.deepcopy(case.pruned), seed=99)
    ep.save(newer, case.plan, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert _same_tensors(ep.load(case.factory, target), newer) and not _same_tensors(newer, case.pruned)


def test_load_of_a_missing_directory_names_the_file(tmp_path):
    with pytest.raises(ep.ArtifactError, match="structure.json"):
        ep.load(zoo.small_cnn, tmp_path / "nothing")


def test_load_of_corrupt_weights_is_an_error(saved, tmp_path):
    case = saved[("small_cnn", "stm32h743")]
    target = ep.save(case.pruned, case.plan, tmp_path / "m")
    weights = target / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ep.ArtifactError, match="weights.safetensors"):
        ep.load(case.factory, target)


def test_load_with_the_wrong_factory_is_an_error_naming_both_factories(saved):
    directory = saved[("small_cnn", "stm32h743")].directory
    with pytest.raises(ep.ArtifactError, match=r"cannot rebuild the pruned architecture from "
                                                r"edgeprune\.zoo:tiny_mobilenet_v2.*saved from edgeprune\.zoo:small_cnn"):
        ep.load(zoo.tiny_mobilenet_v2, directory)


def test_load_never_unpickles(saved, monkeypatch):
    case = saved[("small_cnn", "stm32h743")]

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load / pickle must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    assert _same_tensors(ep.load(case.factory, case.directory), case.pruned)


# ------------------------------------------------------------------------ dense weights: load_weights

@pytest.fixture
def dense_weights(tmp_path):
    """small_cnn's weights moved away from the factory's seeded values, written as a user would."""
    import safetensors.torch

    model = _perturb(zoo.small_cnn(), seed=11)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_model(model, str(path))
    return model, path


def test_load_weights_gives_the_factorys_model_with_every_weight_from_the_file(dense_weights):
    model, path = dense_weights
    loaded = ep.load_weights("edgeprune.zoo:small_cnn", path)
    assert _same_tensors(loaded, model) and not _same_tensors(loaded, zoo.small_cnn())


def test_load_weights_of_a_directory_points_to_load(tmp_path):
    with pytest.raises(ep.ArtifactError, match=rf"{tmp_path}: is a directory; .*edgeprune\.load"):
        ep.load_weights("edgeprune.zoo:small_cnn", tmp_path)


def test_load_weights_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(ep.ArtifactError, match=rf"{tmp_path / 'gone.safetensors'}: not found"):
        ep.load_weights("edgeprune.zoo:small_cnn", tmp_path / "gone.safetensors")


def test_load_weights_refuses_a_pickled_checkpoint_without_unpickling_it(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    torch.save(zoo.small_cnn().state_dict(), path)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load / pickle must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    with pytest.raises(ep.ArtifactError, match=rf"{path}: not a safetensors file .*never unpickles"):
        ep.load_weights("edgeprune.zoo:small_cnn", path)


def test_load_weights_of_another_models_file_names_what_does_not_match(dense_weights, tmp_path):
    import safetensors.torch

    other = tmp_path / "other.safetensors"
    safetensors.torch.save_model(zoo.tiny_mobilenet_v2(), str(other))
    with pytest.raises(ep.ArtifactError, match=rf"{other}: does not (fit|match) edgeprune\.zoo:small_cnn's model"):
        ep.load_weights("edgeprune.zoo:small_cnn", other)


def test_load_weights_with_a_layer_missing_names_it(dense_weights, tmp_path):
    import safetensors.torch

    model, _ = dense_weights
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    partial = tmp_path / "partial.safetensors"
    safetensors.torch.save_file(state, str(partial))
    missing = r"missing: \['classifier\.bias', 'classifier\.weight'\]"
    with pytest.raises(ep.ArtifactError, match=rf"{partial}: does not match .*{missing}"):
        ep.load_weights("edgeprune.zoo:small_cnn", partial)


# ------------------------------------------------------------------------ what the files record

def test_structure_json_records_the_versions_factory_class_plan_and_removals(saved):
    case = saved[("small_cnn", "stm32h743")]
    structure = json.loads((case.directory / "structure.json").read_text())
    record = ep.record_of(case.pruned)
    assert structure["schema"] == "edgeprune.model/1"
    assert (structure["edgeprune"], structure["torch"]) == (ep.__version__, torch.__version__)
    assert structure["factory"] == "edgeprune.zoo:small_cnn"
    assert structure["model_class"] == f"{type(case.pruned).__module__}.{type(case.pruned).__qualname__}"
    assert structure["plan"] == json.loads(json.dumps(record.plan.to_dict())) and structure["finetuned"] is False
    assert structure["removals"] == [{"root": r.root, "idxs": list(r.idxs)} for r in record.removals] != []


def test_weights_file_carries_the_schema_in_its_safetensors_metadata(saved):
    import safetensors

    case = saved[("small_cnn", "stm32h743")]
    with safetensors.safe_open(str(case.directory / "weights.safetensors"), framework="pt") as f:
        assert f.metadata() == {"schema": "edgeprune.model/1"}


def test_saving_a_module_prune_did_not_return_is_refused_before_writing(small_cnn, tmp_path):
    plan = ep.plan(small_cnn.model, small_cnn.inputs, "stm32h743", ep.Budget(macs_ratio=0.6))
    with pytest.raises(ep.ArtifactError, match="no record of which channels were removed: save the module ep.prune"):
        ep.save(copy.deepcopy(small_cnn.model), plan, tmp_path / "saved")
    assert list(tmp_path.iterdir()) == []


# -- what the files say, exactly (make mutate: each pins a survivor of the serialization group) -------------

def test_structure_lists_exactly_the_masked_layers_not_the_modules_that_hold_them(tmp_path):
    model, inputs = zoo.small_cnn(), zoo.small_cnn.example_inputs()
    plan = ep.plan(model, inputs, "corstone-300-ethos-u55-128", ep.Budget(sparsity=0.5))  # unstructured masks
    pruned = ep.prune(model, plan)
    ep.save(pruned, plan, tmp_path / "saved", factory=zoo.small_cnn)
    structure = json.loads((tmp_path / "saved" / "structure.json").read_text())
    masked = sorted(n for n, m in pruned.named_modules() if hasattr(m, "weight_mask"))
    assert masked and sorted(structure["masked_layers"]) == masked  # not "" (the model), not "res" (a Sequential)


def test_structure_without_a_factory_records_none(tmp_path):
    model, inputs = zoo.small_cnn(), zoo.small_cnn.example_inputs()
    plan = ep.plan(model, inputs, "stm32h743", ep.Budget(macs_ratio=0.6))
    ep.save(ep.prune(model, plan), plan, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "structure.json").read_text())["factory"] is None


@pytest.mark.parametrize("structure", ['{"schema": "someone-else/1"}', "[1, 2]", "not json"])
def test_a_directory_whose_structure_json_is_not_ours_is_never_replaced(tmp_path, structure):
    directory = tmp_path / "saved"
    directory.mkdir()
    (directory / "structure.json").write_text(structure)
    (directory / "weights.safetensors").write_bytes(b"theirs")
    with pytest.raises(ep.ArtifactError, match=r"(structure.json.*weights.safetensors|weights.safetensors.*structure)"
                                               r".*choose another directory \(--out\)"):
        ep.serialization.check_save_dir(directory, overwrite=True)
    assert (directory / "weights.safetensors").read_bytes() == b"theirs"


def test_read_structure_of_a_file_says_a_saved_model_is_a_directory(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("{}")
    with pytest.raises(ep.ArtifactError, match=rf"^{path}: is a file; a saved model is the directory edgeprune.save "
                                               r"\(or `edgeprune prune --out`\) wrote, holding structure.json and "
                                               r"weights.safetensors$"):
        ep.serialization.read_structure(path)


def test_read_structure_of_another_schema_names_both_schemas(tmp_path):
    (tmp_path / "structure.json").write_text('{"schema": "edgeprune.model/0"}')
    with pytest.raises(ep.ArtifactError, match=r"structure.json: 'schema' is 'edgeprune.model/0', expected "
                                               r"'edgeprune.model/1'$"):
        ep.serialization.read_structure(tmp_path)


def test_read_structure_of_a_directory_without_one_asks_whether_save_wrote_it(tmp_path):
    with pytest.raises(ep.ArtifactError, match=rf"structure.json: not found — is {tmp_path} a directory written by "
                                               r"edgeprune.save\?$"):
        ep.serialization.read_structure(tmp_path)


def test_read_structure_that_is_not_json_names_what_it_should_be(tmp_path):
    (tmp_path / "structure.json").write_text("{not json")
    with pytest.raises(ep.ArtifactError, match="the structure edgeprune.save writes"):
        ep.serialization.read_structure(tmp_path)


def test_a_model_saved_before_finetuned_was_recorded_loads_as_not_finetuned(saved, tmp_path):
    import shutil

    case = saved[("small_cnn", "stm32h743")]
    shutil.copytree(case.directory, tmp_path / "old")
    path = tmp_path / "old" / "structure.json"
    structure = json.loads(path.read_text())
    structure["finetuned"] = True
    path.write_text(json.dumps(structure))
    assert ep.record_of(ep.load(case.factory, tmp_path / "old")).finetuned is True
    del structure["finetuned"]
    path.write_text(json.dumps(structure))
    assert ep.record_of(ep.load(case.factory, tmp_path / "old")).finetuned is False


def test_load_weights_of_a_directory_says_how_a_saved_model_is_read(tmp_path):
    with pytest.raises(ep.ArtifactError, match=r"is a directory; dense weights are one .safetensors file \(a pruned "
                                               r"model saved by edgeprune.save is read with edgeprune.load\)$"):
        ep.load_weights(zoo.small_cnn, tmp_path)


def test_load_weights_that_cannot_be_opened_says_why_in_the_systems_words(tmp_path):
    loop = tmp_path / "a.safetensors"
    loop.symlink_to(tmp_path / "b.safetensors")
    (tmp_path / "b.safetensors").symlink_to(loop)
    with pytest.raises(ep.ArtifactError, match=rf"^{loop}: cannot read: Too many levels of symbolic links$"):
        ep.load_weights(zoo.small_cnn, loop)


def test_load_weights_of_a_pickle_says_how_to_write_safetensors(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ep.ArtifactError, match=r"write the weights with safetensors.torch.save_model\(model, "
                                               r"'model.safetensors'\)$"):
        ep.load_weights(zoo.small_cnn, path)


def test_load_weights_names_at_most_five_missing_and_five_unexpected_keys(tmp_path):
    import safetensors.torch

    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({f"extra{i}": torch.zeros(1) for i in range(7)}, str(path))
    with pytest.raises(ep.ArtifactError) as info:
        ep.load_weights(zoo.small_cnn, path)
    message = str(info.value)
    missing = message.split("missing: ")[1].split("], unexpected")[0]
    unexpected = message.split("unexpected: ")[1]
    assert missing.count("'") == 10 and unexpected.count("'") == 10, message


def test_load_weights_of_the_wrong_shapes_names_the_error_type(tmp_path):
    import safetensors.torch

    state = {k: torch.zeros([s + 1 for s in v.shape]) for k, v in zoo.small_cnn().state_dict().items()}
    path = tmp_path / "wide.safetensors"
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(ep.ArtifactError, match=r"does not fit edgeprune.zoo:small_cnn's model \(RuntimeError: "):
        ep.load_weights(zoo.small_cnn, path)


def test_check_save_dir_refuses_an_existing_saved_model_unless_told_to_overwrite(saved):
    directory = saved[("small_cnn", "stm32h743")].directory
    with pytest.raises(ep.ArtifactError, match="already exists; pass --overwrite"):
        ep.serialization.check_save_dir(directory)
    assert ep.serialization.check_save_dir(directory, overwrite=True) == directory


def test_a_save_interrupted_while_writing_leaves_the_old_model_and_no_staging(saved, tmp_path, monkeypatch):
    import shutil

    import safetensors.torch

    case = saved[("small_cnn", "stm32h743")]
    directory = shutil.copytree(case.directory, tmp_path / "saved")
    before = (directory / "weights.safetensors").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ep.save(case.pruned, case.plan, directory, factory=case.factory, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]
    assert (directory / "weights.safetensors").read_bytes() == before
