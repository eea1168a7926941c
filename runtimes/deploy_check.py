"""The device side of `edgeprune deploy`: run the deployed artifact on the reference inputs, in the device's
own runtime, and write what it computed.

    python3 runtimes/bench_<rt>.py ARTIFACT --deploy-reference REF.npz --deploy-sha256 HEX --deploy-out DIR
        [the harness's other options: --threads, --cores; bench_onnx.py: --engine, --trt-precision]

(harness.main hands a run with --deploy-reference to `deploy` here.) In order:

 1. ARTIFACT is read once (never through a symlink, a regular file only) and its sha256 compared with
    --deploy-sha256; the runtime loads those very bytes, so a file changed on the device after its upload
    check never runs (exit 8, CHANGED);
 2. REF.npz holds the reference inputs `input_<sample>_<k>` (float arrays from PyTorch; an int8 input is
    quantized with the artifact's own scale and zero point, as --inputs-npz is);
 3. the backend builds what the device runs where that is a build of its own (TensorRT: an engine, by
    trtexec on the device, with its layer information and build log), then runs each sample once;
 4. writes DIR/outputs.npz (`output_<sample>_<k>`, float; quantized outputs dequantized) and prints ONE
    line of JSON (schema "edgeprune.deploy/1"): the runtime and its version, the files in DIR to bring back
    with their sha256, the device's facts (OS, L4T and JetPack where they can be read) and state (power
    mode, clocks, temperatures: device_state.sample_state), and notes.

The comparison with PyTorch's outputs is the host's (edgeprune.deploy), with export's tolerances.
Device-side, like the harness: the standard library, numpy and the runtime only.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import time

import numpy as np

import device_state
import harness

SCHEMA = "edgeprune.deploy/1"
EXIT_CHANGED = 8
OUTPUTS = "outputs.npz"
FACT_TIMEOUT_S = 10  # dpkg-query on a slow SD card; a fact that does not come in time is left out


class ArtifactChanged(harness.HarnessError):
    """The artifact's bytes are not the ones whose sha256 the host checked after the upload."""
    exit_code = EXIT_CHANGED


def read_verified(path: str, sha256: str) -> bytes:
    """The bytes of `path` (read once, no symlink, a regular file), if their sha256 is `sha256`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise harness.UsageError("artifact %s: cannot be opened (%s)" % (path, exc.strerror or exc))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise harness.UsageError("artifact %s: not a regular file" % path)
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ArtifactChanged("artifact %s changed on the device after its upload was checked: sha256 %s..., "
                              "expected %s...; nothing was run" % (path, digest[:16], sha256[:16]))
    return data


def read_reference(path: str):
    """[[input arrays of sample 0], [... of sample 1], ...] from REF.npz."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except Exception as exc:  # noqa: BLE001 - missing, a bad zip, a pickled object array
        raise harness.UsageError("--deploy-reference %s: cannot be read as an .npz of arrays (%s)"
                                 % (path, harness.first_line(exc)))
    samples = {}
    for key, value in data.items():
        m = re.fullmatch(r"input_(\d+)_(\d+)", key)
        if m is None:
            raise harness.UsageError("--deploy-reference %s: unexpected array '%s' (expected input_<sample>_<k>)"
                                     % (path, key))
        samples.setdefault(int(m.group(1)), {})[int(m.group(2))] = value
    if not samples or sorted(samples) != list(range(len(samples))):
        raise harness.UsageError("--deploy-reference %s: samples must be numbered 0..N-1, got %s"
                                 % (path, sorted(samples)))
    result = []
    for i in range(len(samples)):
        if sorted(samples[i]) != list(range(len(samples[i]))):
            raise harness.UsageError("--deploy-reference %s: sample %d has inputs %s, expected 0..K-1"
                                     % (path, i, sorted(samples[i])))
        result.append([samples[i][k] for k in range(len(samples[i]))])
    return result


def fit_inputs(specs, sample, index: int):
    """One sample's arrays converted to what the artifact's inputs take; UsageError naming the input."""
    if len(sample) != len(specs):
        raise harness.UsageError("reference sample %d has %d input(s); the artifact takes %d"
                                 % (index, len(sample), len(specs)))
    arrays = []
    for k, (spec, x) in enumerate(zip(specs, sample)):
        where = "reference sample %d, input %d" % (index, k)
        fits = x.ndim == len(spec.shape) and all(d is None or d == s for d, s in zip(spec.shape, x.shape))
        if not fits:
            want = "(%s)" % ", ".join("?" if d is None else str(d) for d in spec.shape)
            raise harness.UsageError("%s has shape %s; the artifact's input '%s' is %s"
                                     % (where, tuple(x.shape), spec.name, want))
        arrays.append(np.ascontiguousarray(harness.convert_input(x, spec, where, spec.name)))
    return arrays


def run_samples(backend, args, ctx, samples):
    """(Session, [[outputs of sample 0], ...]): the artifact loaded once, each sample run once."""
    ctx.progress("load", 0, force=True)
    session = backend.load(args, ctx)
    if session.bind is None or session.outputs is None:
        raise harness.UsageError("artifact %s: the %s harness cannot return this engine's outputs"
                                 % (args.artifact, session.runtime))
    outputs = []
    ctx.progress("measure", 0, force=True)
    for i, sample in enumerate(samples):
        arrays = fit_inputs(session.inputs, sample, i)
        try:
            invoke = session.bind(arrays)
            returned = invoke()
            outputs.append([np.asarray(o) for o in session.outputs(returned)])
        except harness.HarnessError:
            raise
        except Exception as exc:  # noqa: BLE001 - the runtime refused the inputs or failed to run
            raise harness.UsageError("artifact %s: %s failed on reference sample %d: %s"
                                     % (args.artifact, session.runtime, i, harness.first_line(exc)))
        ctx.check_deadline("while running the reference samples")
        ctx.progress("measure", i + 1)
    return session, outputs


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ device facts

def parse_os_release(text: str):
    """PRETTY_NAME of /etc/os-release ("Ubuntu 22.04.4 LTS"), else NAME VERSION, else None."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"').strip("'")
    return fields.get("PRETTY_NAME") or " ".join(filter(None, (fields.get("NAME"), fields.get("VERSION")))) or None


def parse_l4t(text: str):
    """The L4T release in /etc/nv_tegra_release ("# R36 (release), REVISION: 3.0, ...") as "36.3.0"."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return "%s.%s" % (m.group(1), m.group(2)) if m else None


def _read(path: str):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _output(argv):
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=FACT_TIMEOUT_S,
                              universal_newlines=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def device_facts() -> dict:
    """What the device is: OS, kernel, L4T and JetPack releases (a Jetson), Python and numpy."""
    os_release = _read("/etc/os-release")
    tegra = _read("/etc/nv_tegra_release")
    return {
        "os": parse_os_release(os_release) if os_release else None,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "l4t": parse_l4t(tegra) if tegra else None,
        "jetpack": _output(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) if tegra else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


# ------------------------------------------------------------------------------------------------ deploy

def deploy(backend, args, ctx) -> dict:
    if not args.deploy_sha256 or not args.deploy_out:
        raise harness.UsageError("--deploy-reference needs --deploy-sha256 and --deploy-out")
    harness.check_artifact(args.artifact)
    args.artifact_bytes = read_verified(args.artifact, args.deploy_sha256)
    samples = read_reference(args.deploy_reference)
    out = args.deploy_out
    os.makedirs(out, mode=0o700, exist_ok=True)
    state_before = device_state.sample_state()
    started = time.monotonic()
    built = backend.deploy_build(args, ctx, samples, out) if hasattr(backend, "deploy_build") else None
    if built is None:
        session, outputs = run_samples(backend, args, ctx, samples)
        built = {"runtime": session.runtime, "runtime_version": session.runtime_version, "engine": session.engine,
                 "notes": list(session.notes), "outputs": outputs, "files": [], "threads": session.threads}
    outputs = built.pop("outputs")
    np.savez(os.path.join(out, OUTPUTS), **{"output_%d_%d" % (i, k): np.asarray(o)
                                            for i, sample in enumerate(outputs) for k, o in enumerate(sample)})
    ctx.measurement_done()
    files = [OUTPUTS] + list(built.pop("files"))
    result = {
        "schema": SCHEMA,
        "artifact": os.path.basename(args.artifact),
        "artifact_sha256": args.deploy_sha256,
        "samples": len(samples),
        "output_shapes": [list(np.shape(o)) for o in outputs[0]] if outputs else [],
        "seconds": round(time.monotonic() - started, 3),
        "files": {name: {"sha256": file_sha256(path), "bytes": os.path.getsize(path)}
                  for name, path in ((name, os.path.join(out, name)) for name in files)},
        "facts": device_facts(),
        "state_before": state_before,
        "state_after": device_state.sample_state(),
    }
    result.update(built)
    return result
