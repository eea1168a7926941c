"""Publishing outputs under faults: a kill (SIGKILL at a chosen rename, in a subprocess) or a full disk (a tiny
tmpfs) while export, save or a fine-tuning checkpoint writes loses nothing the user had, leaves nothing
that blocks or litters the next run, and the next run succeeds. Also: --overwrite replaces only what
edgeprune wrote, one manifest per artifact, and a saved structure is checked against the rebuilt model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import edgeprune as ep
from edgeprune import zoo
from edgeprune.export import executorch, litert
from edgeprune.remote.artifacts import read_manifest
from helpers import run_cli

JETSON = "jetson-orin-nano-8gb"
ONNX = "smallcnn-jetson-orin-nano-8gb-fp32.onnx"
PAGE = 4096

# Run in a subprocess: SIGKILL it just before the rename whose destination matches KILL_AT (a glob), the
# moment a file is put in place; then run BODY. Deterministic: the same rename every time, no sleeps.
_PRELUDE = """
import fnmatch, os, signal, sys
_replace = os.replace
def _replace_or_die(src, dst, *args, **kwargs):
    if fnmatch.fnmatch(os.fspath(dst), sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)
os.replace = _replace_or_die
import torch
import edgeprune as ep
from edgeprune import zoo
"""


def killed_at(kill_at: str, body: str) -> None:
    """Run `body` in a fresh interpreter, killed (SIGKILL) at the first rename onto a path matching `kill_at`."""
    package_root = Path(ep.__file__).resolve().parent.parent  # the edgeprune under test, in the child too
    env = dict(os.environ, PYTHONPATH=str(package_root), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(body), kill_at], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, f"not killed at {kill_at} (exit {done.returncode}):\n{done.stderr[-3000:]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def small_cnn(shift: float = 0.0) -> torch.nn.Module:
    model = zoo.small_cnn()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift)
    return model


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A complete export of small_cnn for the Jetson (an .onnx and its manifest), to copy."""
    out = tmp_path_factory.mktemp("earlier")
    ep.export(small_cnn(), zoo.small_cnn.example_inputs(), JETSON, out)
    return out


# ------------------------------------------------------------------------------------ item 4: export


def test_an_export_killed_as_its_manifest_is_put_in_place_does_not_block_the_rerun(tmp_path):
    out = tmp_path / "out"
    killed_at(f"{out}/*manifest.json", f"""
        ep.export(zoo.small_cnn(), zoo.small_cnn.example_inputs(), "{JETSON}", "{out}")
    """)
    with pytest.warns(UserWarning, match="interrupted"):
        art = ep.export(small_cnn(), zoo.small_cnn.example_inputs(), JETSON, out)
    assert sorted(p.name for p in out.iterdir()) == [ONNX, ONNX + ".manifest.json", ONNX + ".reference.npz"]
    assert art.manifest["sha256"] == sha256(art.path)


def test_a_forced_export_killed_midway_leaves_the_earlier_export_intact(earlier, tmp_path):
    out = shutil.copytree(earlier, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    killed_at(f"{out}/*manifest.json", f"""
        model = zoo.small_cnn()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)
        ep.export(model, zoo.small_cnn.example_inputs(), "{JETSON}", "{out}", force=True)
    """)
    # the next run puts the earlier export back: not replaced without force, byte for byte what it was
    with pytest.warns(UserWarning, match="interrupted"), pytest.raises(ep.ArtifactError, match="already exists"):
        ep.export(small_cnn(0.5), zoo.small_cnn.example_inputs(), JETSON, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    art = ep.export(small_cnn(0.5), zoo.small_cnn.example_inputs(), JETSON, out, force=True)
    assert art.path.read_bytes() != before[ONNX] and hidden(out) == []


def test_a_full_disk_while_the_manifest_is_written_fails_cleanly_and_the_rerun_succeeds(earlier, tmpfs):
    disk = tmpfs("4m")
    out = disk / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # fill the disk so that the artifact and its reference fit and not one more page: the manifest cannot be written
    ballast = disk / "ballast"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    artifact_pages = sum(-(-(earlier / name).stat().st_size // PAGE) * PAGE for name in (ONNX, ONNX + ".reference.npz"))
    ballast.write_bytes(b"\0" * (free - artifact_pages))
    with pytest.raises(ep.ArtifactError, match=r"manifest\.json: cannot be written: No space left on device"):
        ep.export(small_cnn(), zoo.small_cnn.example_inputs(), JETSON, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no artifact without its manifest, no leftovers
    ballast.unlink()
    art = ep.export(small_cnn(), zoo.small_cnn.example_inputs(), JETSON, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([ONNX, ONNX + ".manifest.json", ONNX + ".reference.npz",
                                                            "notes.txt"])
    assert art.manifest["sha256"] == sha256(art.path)


# ----------------------------------------------------------------------- item 4: save and checkpoints


@pytest.fixture(scope="module")
def pruned():
    model, inputs = zoo.small_cnn(), zoo.small_cnn.example_inputs()
    plan = ep.plan(model, inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.6))
    return ep.prune(model, plan), plan


_SAVE = """
    model, inputs = zoo.small_cnn(), zoo.small_cnn.example_inputs()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    plan = ep.plan(model, inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.6))
    ep.save(ep.prune(model, plan), plan, "{directory}", factory=zoo.small_cnn, overwrite=True)
"""


def test_a_save_killed_before_its_directory_is_put_in_place_leaves_nothing_after_the_next_save(pruned, tmp_path):
    directory = tmp_path / "model"
    killed_at(str(directory), _SAVE.format(directory=directory))
    assert hidden(tmp_path), "the kill left a staging directory"
    with pytest.warns(UserWarning, match="interrupted run") as caught:
        ep.save(*pruned, directory, factory=zoo.small_cnn)
    assert {w.filename for w in caught} == {__file__}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_save_killed_while_replacing_a_model_gives_the_earlier_model_back(pruned, tmp_path):
    directory = tmp_path / "model"
    ep.save(*pruned, directory, factory=zoo.small_cnn)
    before = (directory / "weights.safetensors").read_bytes()
    killed_at(str(directory), _SAVE.format(directory=directory))  # after the old one was moved aside
    restored = rf"{directory}: restored the saved model that an interrupted save \(process \d+, now gone\) had moved"
    with pytest.warns(UserWarning, match=restored) as caught, pytest.raises(ep.ArtifactError, match="already exists"):
        ep.save(*pruned, directory, factory=zoo.small_cnn)
    assert {w.filename for w in caught} == {__file__}  # the caller's line, not edgeprune's
    assert (directory / "weights.safetensors").read_bytes() == before
    ep.save(*pruned, directory, factory=zoo.small_cnn, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_save_to_a_full_disk_is_an_error_naming_the_directory_and_the_rerun_succeeds(pruned, tmpfs):
    disk = tmpfs("4m")
    (disk / "notes.txt").write_text("mine")
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * (os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - 4 * PAGE))
    with pytest.raises(ep.ArtifactError, match=r"model: cannot be written: .*No space left on device"):
        ep.save(*pruned, disk / "model", factory=zoo.small_cnn)
    assert sorted(p.name for p in disk.iterdir()) == ["ballast", "notes.txt"]
    ballast.unlink()
    ep.save(*pruned, disk / "model", factory=zoo.small_cnn)
    loaded, inputs = ep.load(zoo.small_cnn, disk / "model").eval(), zoo.small_cnn.example_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), pruned[0].eval()(*inputs))
    assert (disk / "notes.txt").read_text() == "mine"


def failing_renames(monkeypatch, fails) -> None:
    """os.replace raises EIO (as a failing disk would) on every rename for which `fails(src, dst)` is true."""
    replace = os.replace

    def replace_or_fail(src, dst, *args, **kwargs):
        if fails(os.fspath(src), os.fspath(dst)):
            raise OSError(5, "Input/output error", os.fspath(dst))
        return replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", replace_or_fail)


def test_a_forced_export_whose_rollback_fails_keeps_the_earlier_export_for_the_next_run(earlier, tmp_path, monkeypatch):
    out = shutil.copytree(earlier, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # the manifest cannot be put in place, and the rollback cannot move the earlier .onnx back either
    failing_renames(monkeypatch, lambda src, dst: (dst.endswith(".manifest.json") and "/new/" in src)
                    or "/old/" in src)
    with pytest.raises(ep.ArtifactError, match="the next export"):
        ep.export(small_cnn(0.5), zoo.small_cnn.example_inputs(), JETSON, out, force=True)
    kept = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert all(content in kept for content in before.values()), "the earlier export was deleted"
    monkeypatch.undo()
    # the next run (same process) puts the earlier export back: not replaced without force, byte for byte
    with pytest.warns(UserWarning, match="left files behind"), pytest.raises(ep.ArtifactError, match="already exists"):
        ep.export(small_cnn(0.5), zoo.small_cnn.example_inputs(), JETSON, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    art = ep.export(small_cnn(0.5), zoo.small_cnn.example_inputs(), JETSON, out, force=True)
    assert art.path.read_bytes() != before[ONNX] and hidden(out) == []


def test_a_save_over_a_model_that_fails_to_put_the_new_one_in_place_keeps_the_old_model(pruned, tmp_path, monkeypatch):
    directory = ep.save(*pruned, tmp_path / "model", factory=zoo.small_cnn)
    before = (directory / "weights.safetensors").read_bytes()
    model, inputs = small_cnn(0.5), zoo.small_cnn.example_inputs()
    plan = ep.plan(model, inputs, "raspberry-pi-5", ep.Budget(macs_ratio=0.6))
    other = ep.prune(model, plan)
    # the old model was moved aside; the new one cannot be renamed into its place
    failing_renames(monkeypatch, lambda src, dst: src.endswith(".stage") and dst == str(directory))
    with pytest.raises(ep.ArtifactError, match=rf"{directory}: cannot be written: Input/output error"):
        ep.save(other, plan, directory, factory=zoo.small_cnn, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (directory / "weights.safetensors").read_bytes() == before
    loaded = ep.load(zoo.small_cnn, directory).eval()
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), pruned[0].eval()(*inputs))


def test_a_save_whose_old_model_cannot_be_put_back_says_where_it_is_kept(pruned, tmp_path, monkeypatch):
    directory = ep.save(*pruned, tmp_path / "model", factory=zoo.small_cnn)
    before = (directory / "weights.safetensors").read_bytes()
    # neither the new model nor (then) the old one can be renamed into place
    failing_renames(monkeypatch, lambda src, dst: dst == str(directory) and (src.endswith(".stage") or
                                                                              src.endswith(".old")))
    with pytest.raises(ep.ArtifactError, match=rf"^{directory}: the saved model it held could not be put back "
                                               r"\(Input/output error\); it is kept in (\S+)$") as info:
        ep.save(*pruned, directory, factory=zoo.small_cnn, overwrite=True)
    kept = Path(str(info.value).rsplit("it is kept in ", 1)[1])
    assert (kept / "weights.safetensors").read_bytes() == before
    assert not any(p.name.endswith(".stage") for p in tmp_path.iterdir())


def test_a_checkpoint_write_killed_leaves_no_temporary_after_the_resumed_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    killed_at(f"{ckpt}/epoch-0002.safetensors", f"""
        from torch.utils.data import DataLoader, TensorDataset
        torch.manual_seed(0)
        data = DataLoader(TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))), batch_size=16)
        ep.finetune(zoo.small_cnn(), data, epochs=2, quiet=True, checkpoint_dir="{ckpt}")
    """)
    assert hidden(ckpt), "the kill left a temporary file"
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))), batch_size=16)
    with pytest.warns(UserWarning, match="interrupted run"):
        result = ep.finetune(zoo.small_cnn(), data, epochs=2, quiet=True, checkpoint_dir=ckpt)
    assert result.resumed_from == 1 and len(result.history) == 2
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0002.json", "epoch-0002.safetensors"]


# --------------------------------------------------------------- item 5: --overwrite replaces only ours


def _foreign(directory: Path) -> Path:
    directory.mkdir()
    (directory / "notes.txt").write_text("mine")
    (directory / "sub").mkdir()
    (directory / "sub" / "data.bin").write_bytes(b"\1\2")
    return directory


def test_save_with_overwrite_refuses_a_directory_of_files_it_did_not_write_and_names_them(pruned, tmp_path):
    directory = _foreign(tmp_path / "out")
    with pytest.raises(ep.ArtifactError, match=r"out/: holds files edgeprune did not write: notes.txt, sub/data.bin"):
        ep.save(*pruned, directory, overwrite=True)
    assert (directory / "notes.txt").read_text() == "mine" and (directory / "sub" / "data.bin").read_bytes() == b"\1\2"


def test_save_with_overwrite_refuses_a_saved_model_with_a_file_added_to_it(pruned, tmp_path):
    directory = ep.save(*pruned, tmp_path / "model")
    (directory / "notes.txt").write_text("mine")
    with pytest.raises(ep.ArtifactError, match=r"holds files edgeprune did not write: notes.txt;"):
        ep.save(*pruned, directory, overwrite=True)
    assert (directory / "notes.txt").read_text() == "mine"


def test_cli_prune_overwrite_refuses_an_out_directory_of_other_files(tmp_path):
    out = _foreign(tmp_path / "out")
    result = run_cli("prune", "--target", "raspberry-pi-5", "--model", "edgeprune.zoo:small_cnn", "--out", out,
                     "--overwrite")
    assert result.exit_code == 2
    assert "holds files edgeprune did not write: notes.txt, sub/data.bin" in " ".join(result.output.split())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["notes.txt", "sub", "sub/data.bin"]


def test_a_forced_export_refuses_to_replace_a_file_it_did_not_write(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"my own model")
    with pytest.raises(ep.ArtifactError, match=r"model\.onnx: is in the way: edgeprune did not write it"):
        ep.export(small_cnn(), zoo.small_cnn.example_inputs(), JETSON, tmp_path, name="model", force=True)
    assert (tmp_path / "model.onnx").read_bytes() == b"my own model"


# ------------------------------------------------------------------- item 6: one manifest per artifact


def test_pte_and_tflite_exports_of_one_model_keep_a_manifest_each(tmp_path):
    model, inputs = small_cnn(), zoo.small_cnn.example_inputs()
    pte = ep.export(model, inputs, "raspberry-pi-5", tmp_path, format="pte")
    tflite = ep.export(model, inputs, "raspberry-pi-5", tmp_path, format="tflite")
    for art, fmt in ((pte, "pte"), (tflite, "tflite")):
        assert art.manifest_path.name == art.path.name + ".manifest.json"
        manifest = read_manifest(art.path)
        assert (manifest["format"], manifest["sha256"]) == (fmt, sha256(art.path))
    # verify reads the manifest beside the artifact it is given: each runs in its own format's runtime
    assert ep.verify(model, inputs, pte)["runtime"] == executorch.RUNTIME
    assert ep.verify(model, inputs, tflite)["runtime"] == litert.RUNTIME


def test_a_legacy_stem_manifest_is_read_only_for_the_file_and_sha256_it_names(tmp_path):
    (tmp_path / "m.pte").write_bytes(b"pte")
    (tmp_path / "m.tflite").write_bytes(b"tflite")
    legacy = {"schema": "edgeprune.manifest/1", "artifact": "m.tflite", "runtime": "tflite-micro",
              "sha256": sha256(tmp_path / "m.tflite")}
    (tmp_path / "m.manifest.json").write_text(json.dumps(legacy))
    assert read_manifest(tmp_path / "m.pte") is None
    assert read_manifest(tmp_path / "m.tflite") == legacy
    (tmp_path / "m.tflite").write_bytes(b"another tflite")
    assert read_manifest(tmp_path / "m.tflite") is None


# ----------------------------------------------------------- item 10: structure checked against the model


@pytest.mark.parametrize("edit, message", [
    (lambda idxs, n: idxs[:-1] + [n + 5], "channel index {big} is out of range"),
    (lambda idxs, n: idxs[:-1] + [idxs[0]], "channel index {first} is listed twice"),
    (lambda idxs, n: [-1] + idxs[1:], "channel index -1 is out of range"),
    (lambda idxs, n: list(range(n)), "removes all {n} output channels"),
], ids=["out-of-range", "duplicated", "negative", "every-channel"])
def test_load_names_the_file_layer_and_index_of_a_bad_removal(pruned, tmp_path, edit, message):
    directory = ep.save(*pruned, tmp_path / "model", factory=zoo.small_cnn)
    path = directory / "structure.json"
    structure = json.loads(path.read_text())
    removal = structure["removals"][0]
    n = dict(zoo.small_cnn().named_modules())[removal["root"]].weight.shape[0]
    first = removal["idxs"][0]
    removal["idxs"] = edit(removal["idxs"], n)
    path.write_text(json.dumps(structure))
    expected = message.format(big=n + 5, first=first, n=n)
    with pytest.raises(ep.ArtifactError, match=rf"structure\.json: removals\[0\], layer {removal['root']}: {expected}"):
        ep.load(zoo.small_cnn, directory)
