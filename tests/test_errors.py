"""Bad input to the Python API is an EdgepruneError naming the argument, file, key or layer at fault, raised
before any work starts: never a bare TypeError / KeyError / JSONDecodeError from deep inside, and never
NaN weights carried silently from plan to export."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import edgeprune as ep
from edgeprune import zoo


# ------------------------------------------------------------------------------------------ Budget

@pytest.mark.parametrize("value", ["0.5", True, [0.5], b"0.5"])
def test_a_budget_that_is_not_a_number_is_a_budget_error_naming_it(value):
    with pytest.raises(ep.BudgetError, match=r"Budget\(macs_ratio=.*expected a number"):
        ep.Budget(macs_ratio=value)


def test_a_budget_given_a_positional_value_asks_for_the_keyword():
    with pytest.raises(ep.BudgetError, match=r"takes exactly one of macs_ratio=, sparsity=.*got positional"):
        ep.Budget(0.5)


def test_budget_parse_of_a_non_string_is_a_budget_error():
    with pytest.raises(ep.BudgetError, match="expected text such as 'macs=0.5'"):
        ep.Budget.parse(0.5)


# ------------------------------------------------------------------------------------------ BenchSettings

@pytest.mark.parametrize("kwargs, named", [
    ({"min_seconds": math.nan}, "min_seconds=nan"),
    ({"min_seconds": math.inf}, "min_seconds=inf"),
    ({"warmup_seconds": math.nan}, "warmup_seconds=nan"),
    ({"warmup_seconds": -1.0}, "warmup_seconds=-1.0"),
    ({"min_seconds": "2"}, "min_seconds='2'"),
    ({"min_runs": "50"}, "min_runs='50'"),
    ({"min_runs": 5.5}, "min_runs=5.5"),
    ({"min_runs": 0}, "min_runs=0"),
    ({"warmup_runs": True}, "warmup_runs=True"),
    ({"threads": "2"}, "threads='2'"),
    ({"threads": 0}, "threads=0"),
    ({"cores": (-1,)}, r"cores=\(-1,\)"),
    ({"cores": (0, 0)}, r"cores=\(0, 0\)"),
    ({"cores": 3}, "cores=3"),
    ({"cores": ("a",)}, r"cores=\('a',\)"),
    ({"seed": "x"}, "seed='x'"),
])
def test_bench_settings_out_of_range_or_of_the_wrong_type_are_refused_naming_the_field(kwargs, named):
    with pytest.raises(ep.SettingsError, match=named):
        ep.BenchSettings(**kwargs)


def test_bench_settings_errors_are_still_value_errors_for_existing_callers():
    with pytest.raises(ValueError, match=r"BenchSettings\(min_seconds=nan\): must be a finite number"):
        ep.BenchSettings(min_seconds=math.nan)


def test_bench_settings_take_cores_as_a_list_and_keep_a_tuple():
    assert ep.BenchSettings(cores=[2, 3]).cores == (2, 3)


# ------------------------------------------------------------------------------------------ NaN / inf weights

@pytest.fixture
def poisoned(small_cnn):
    """A copy of small_cnn whose second convolution holds a NaN and an inf."""
    model = copy.deepcopy(small_cnn.model)
    conv = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][1]
    weight = dict(model.named_parameters())[f"{conv}.weight"]
    with torch.no_grad():
        weight.view(-1)[0] = math.nan
        weight.view(-1)[1] = math.inf
    return model, f"{conv}.weight"


def test_plan_refuses_nan_weights_naming_the_parameter(poisoned, small_cnn):
    model, name = poisoned
    with pytest.raises(ep.ModelError, match=rf"parameter '{name}'.*1 NaN and 1 inf"):
        ep.plan(model, small_cnn.inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))


def test_prune_refuses_nan_weights_naming_the_parameter(poisoned, small_cnn, planned):
    plan, _ = planned(small_cnn, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))
    model, name = poisoned
    with pytest.raises(ep.ModelError, match=rf"parameter '{name}'"):
        ep.prune(model, plan)


def test_plan_refuses_an_inf_buffer_naming_it(small_cnn):
    model = copy.deepcopy(small_cnn.model)
    bn = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.get_submodule(bn).running_var[0] = math.inf
    with pytest.raises(ep.ModelError, match=rf"buffer '{bn}.running_var'"):
        ep.plan(model, small_cnn.inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))


def test_plan_refuses_nan_example_inputs(small_cnn):
    inputs = tuple(t.clone() for t in small_cnn.inputs)
    inputs[0].view(-1)[0] = math.nan
    with pytest.raises(ep.ModelError, match=r"example_inputs\[0\] holds 1 NaN"):
        ep.plan(small_cnn.model, inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))


def test_sensitivity_refuses_nan_weights_naming_the_parameter(poisoned, small_cnn):
    model, name = poisoned
    x, y = zoo.digits("test")
    with pytest.raises(ep.ModelError, match=rf"parameter '{name}'"):
        ep.sensitivity(model, small_cnn.inputs, DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64), None,
                       "raspberry-pi-5", amounts=(0.5,))


def test_finetune_refuses_a_teacher_with_nan_weights_before_training(poisoned, small_cnn):
    teacher, name = poisoned
    x, y = zoo.digits("train")
    steps = []
    with pytest.raises(ep.ModelError, match=rf"teacher .*parameter '{name}'"):
        ep.finetune(small_cnn.model, DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32), epochs=1,
                    teacher=teacher, quiet=True, callback=steps.append)
    assert steps == []


# ------------------------------------------------------------------------------------------ finetune's arguments

@pytest.fixture
def digits_loader():
    x, y = zoo.digits("train")
    return DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)


@pytest.mark.parametrize("kwargs, named", [
    ({"epochs": "2"}, "epochs='2'"), ({"lr": math.nan}, "lr=nan"), ({"lr": "1e-3"}, "lr='1e-3'"),
    ({"kd_temperature": -1.0}, "kd_temperature=-1.0"),
])
def test_finetune_arguments_of_the_wrong_type_or_range_are_named(small_cnn, digits_loader, kwargs, named):
    with pytest.raises(ep.SettingsError, match=named):
        ep.finetune(small_cnn.model, digits_loader, **{"epochs": 1, **kwargs}, quiet=True)


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(small_cnn, digits_loader, tmp_path):
    blocker = tmp_path / "ckpt"
    blocker.write_text("not a directory")
    steps = []
    with pytest.raises(ep.ArtifactError, match="ckpt: is not a directory"):
        ep.finetune(small_cnn.model, digits_loader, epochs=1, checkpoint_dir=blocker, quiet=True,
                    callback=steps.append)
    assert steps == [] and blocker.read_text() == "not a directory"


def test_a_read_only_checkpoint_dir_is_refused_before_training(small_cnn, digits_loader, tmpfs):
    where = tmpfs("64k", read_only=True)
    steps = []
    with pytest.raises(ep.ArtifactError, match="Read-only file system"):
        ep.finetune(small_cnn.model, digits_loader, epochs=1, checkpoint_dir=where / "ckpt", quiet=True,
                    callback=steps.append)
    assert steps == []


@pytest.mark.parametrize("marker, says", [
    ("{ not json", "not valid JSON"),
    ('["a", "list"]', "a JSON list, not an object"),
    (json.dumps({"schema": "edgeprune.finetune-checkpoint/1", "epoch": 1}), "key 'sha256' is missing"),
    (json.dumps({"schema": "edgeprune.finetune-checkpoint/1", "epoch": "1"}), "key 'epoch' is '1'"),
])
def test_a_corrupt_checkpoint_record_is_named_and_kept(small_cnn, digits_loader, tmp_path, marker, says):
    (tmp_path / "epoch-0001.json").write_text(marker)
    with pytest.raises(ep.MalformedError, match=rf"epoch-0001\.json: .*{says}"):
        ep.finetune(small_cnn.model, digits_loader, epochs=1, checkpoint_dir=tmp_path, quiet=True)
    assert (tmp_path / "epoch-0001.json").read_text() == marker  # nothing the user had is deleted


# ------------------------------------------------------------------------------------------ plans and manifests

def test_a_plan_that_is_not_json_is_a_malformed_error():
    with pytest.raises(ep.MalformedError, match="not valid JSON"):
        ep.Plan.from_json("{ truncated")


def test_a_plan_missing_a_key_names_the_key(small_cnn, planned):
    plan, _ = planned(small_cnn, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))
    data = plan.to_dict()
    del data["groups"]
    with pytest.raises(ep.MalformedError, match="key 'groups' is missing"):
        ep.Plan.from_dict(data)


def test_a_saved_plan_with_a_huge_input_shape_is_refused_before_allocating(small_cnn, planned):
    plan, _ = planned(small_cnn, "raspberry-pi-5", ep.Budget(macs_ratio=0.5))
    data = plan.to_dict()
    data["inputs"][0]["shape"] = [1, 3, 1_000_000, 1_000_000]
    with pytest.raises(ep.ModelError, match=r"shape \(1, 3, 1000000, 1000000\) \(float32\) would take 10\.9 TiB"):
        ep.Plan.from_dict(data).example()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """small_cnn exported once for Jetson (ONNX: the quickest to export and verify)."""
    model, inputs = zoo.small_cnn(), zoo.small_cnn.example_inputs()
    art = ep.export(model, inputs, "jetson-orin-nano-8gb", tmp_path_factory.mktemp("exported") / "out")
    return model, inputs, art


def _edit_manifest(exported, tmp_path, edit):
    """A copy of the export whose manifest `edit(dict) -> text` rewrote; the artifact's path in the copy."""
    _, _, art = exported
    copy_dir = tmp_path / "copy"
    shutil.copytree(art.path.parent, copy_dir)
    manifest = copy_dir / art.manifest_path.name
    manifest.write_text(edit(json.loads(manifest.read_text())))
    return copy_dir / art.path.name, manifest


@pytest.mark.parametrize("edit, says", [
    (lambda m: "{ not json", r"not the manifest export writes \(not valid JSON"),
    (lambda m: json.dumps([m]), r"not the manifest export writes \(a JSON list, not an object\)"),
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "format"}), "key 'format' is missing"),
    (lambda m: json.dumps({**m, "precision": 8}), "key 'precision' is 8"),
    (lambda m: json.dumps({**m, "sha256": None}), "key 'sha256' is None"),
    (lambda m: json.dumps({**m, "format": "exe"}), "key 'format' is 'exe'"),
    (lambda m: json.dumps({**m, "plan": {"schema": "edgeprune.plan/1"}}), "key 'plan': plan: key 'layers'"),
])
def test_verify_names_the_key_of_a_hand_edited_manifest(exported, tmp_path, edit, says):
    model, inputs, _ = exported
    artifact, manifest = _edit_manifest(exported, tmp_path, edit)
    with pytest.raises(ep.MalformedError, match=rf"{manifest.name}: {says}"):
        ep.verify(model, inputs, artifact)



@pytest.mark.parametrize("content, says", [(b'{"format": "caf\xe9"}', "not UTF-8 text: byte 0xe9"),
                                           (b"[1, 2]", "a JSON list, not an object")])
def test_bench_names_a_damaged_manifest_before_the_device_is_used(exported, tmp_path, content, says):
    artifact, manifest = _edit_manifest(exported, tmp_path, json.dumps)
    manifest.write_bytes(content)
    with pytest.raises(ep.MalformedError, match=rf"{manifest.name}: not the manifest export writes \({says}"):
        ep.bench(artifact, "local")

# ------------------------------------------------------------------------------------------ TOML files

LATIN1 = 'name = "caf\xe9"\n'.encode("latin-1")


def test_a_target_profile_that_is_not_utf8_names_the_file(tmp_path):
    (tmp_path / "board.toml").write_bytes(LATIN1)
    with pytest.raises(ep.TargetError, match=r"board\.toml: not UTF-8 text \(byte 0xe9 at offset 11\)"):
        ep.load_target(tmp_path / "board.toml")


def test_a_recipe_that_is_not_utf8_names_the_file(tmp_path, small_cnn):
    (tmp_path / "recipe.toml").write_bytes(LATIN1)
    with pytest.raises(ep.RecipeError, match=r"recipe\.toml: not UTF-8 text"):
        ep.plan(small_cnn.model, small_cnn.inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.5),
                recipe=tmp_path / "recipe.toml")


def test_a_device_inventory_that_is_not_utf8_names_the_file(tmp_path):
    (tmp_path / "devices.toml").write_bytes(LATIN1)
    with pytest.raises(ep.DeviceError, match=r"devices\.toml: not UTF-8 text"):
        ep.load_devices(tmp_path / "devices.toml")


# ------------------------------------------------------------------------------------------ where errors live

def test_every_error_edgeprune_raises_is_declared_in_errors_py():
    import importlib
    import pkgutil

    import edgeprune.errors

    for info in pkgutil.walk_packages(ep.__path__, "edgeprune."):
        if not info.name.endswith("__main__"):  # importing it runs the CLI
            importlib.import_module(info.name)
    stack, found = [ep.EdgepruneError], []
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    strays = [f"{c.__module__}.{c.__qualname__}" for c in found if c.__module__ != edgeprune.errors.__name__]
    assert strays == [] and len(found) > 10
