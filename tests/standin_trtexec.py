"""A stand-in for NVIDIA's `trtexec`, for the deploy tests on machines without a GPU.

It speaks trtexec's command line and writes trtexec's real formats (taken from TensorRT's samples/common
sampleReporting.cpp and the layer information of `--profilingVerbosity=detailed --exportLayerInfo`):

- build (`--onnx=M --saveEngine=E ... --exportLayerInfo=L --verbose`): an "engine" (a header + the ONNX
  bytes, so that the run below can compute real outputs), the layer information JSON ({"Layers": [{"Name":
  fused node names joined by " + ", "LayerType", "TacticName", "HasSparseWeights", ...}], "Bindings"}), and
  the verbose log lines "(Sparsity) Layers eligible for sparse math: ..." and "(Sparsity) TRT inference
  plan picked sparse implementation for layers: ...". A Conv or Gemm is eligible when its weights are 2:4
  along the input dimension and the engine is fp16 or int8; it gets a sparse kernel when it is eligible and
  has at least PICK_CHANNELS output channels (real TensorRT times both and keeps the faster).
- run (`--loadEngine=E --loadInputs=name:file,... --exportOutput=O`): the outputs computed by onnxruntime
  on the raw input files, written as --exportOutput's JSON ([{"name", "dimensions": "1x10", "values"}]).

EDGEPRUNE_STANDIN_TRTEXEC_FAIL=build makes the build fail as trtexec does (exit 1, "[E]" lines).
"""

import json
import os
import re
import sys

import numpy as np
import onnx
from onnx import numpy_helper

MAGIC = b"STANDIN-TRT-ENGINE\n"
PICK_CHANNELS = 64
VERSION = "100300"  # TensorRT 10.3.0, JetPack 6.1's


def log(line: str) -> None:
    print("[12/02/2026-06:00:00] " + line, flush=True)


# The options edgeprune may pass that every trtexec of JetPack 5 and 6 (TensorRT 8.5 to 10.3) takes; an
# option outside it fails as trtexec fails on an unknown one (8.5 has no --skipInference, 11 no --fp16).
KNOWN = {"onnx", "saveEngine", "loadEngine", "sparsity", "fp16", "int8", "best", "noTF32", "profilingVerbosity",
         "exportLayerInfo", "exportOutput", "exportTimes", "loadInputs", "shapes", "minShapes", "optShapes",
         "maxShapes", "verbose", "iterations", "warmUp", "duration", "avgRuns"}


def options(argv):
    opts = {}
    for arg in argv:
        m = re.fullmatch(r"--([A-Za-z0-9]+)(?:=(.*))?", arg)
        if not m or m.group(1) not in KNOWN:
            log("[E] Unknown option: " + arg)
            sys.exit(1)
        opts[m.group(1)] = m.group(2) if m.group(2) is not None else True
    return opts


def is_2_4(weight: np.ndarray) -> bool:
    rows = weight.reshape(weight.shape[0], -1) if weight.ndim != 4 else \
        weight.transpose(0, 2, 3, 1).reshape(-1, weight.shape[1])
    if rows.shape[1] % 4:
        return False
    return bool(np.all((rows.reshape(rows.shape[0], -1, 4) != 0).sum(axis=2) <= 2))


def build(opts):
    model = onnx.load(opts["onnx"])
    if os.environ.get("EDGEPRUNE_STANDIN_TRTEXEC_FAIL") == "build":
        log("[E] [TRT] ModelImporter.cpp:771: ERROR: builtin_op_importers.cpp:5404 In function importFallback")
        log("[E] Engine could not be created from network")
        sys.exit(1)
    graph = model.graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    low_precision = any(k in opts for k in ("fp16", "int8", "best"))
    layers, eligible, picked = [], [], []
    fused = set()
    for node in graph.node:
        if node.name in fused:
            continue
        name = node.name
        following = consumers.get(node.output[0], [])
        if node.op_type in ("Conv", "Gemm") and len(following) == 1 and following[0].op_type == "Relu":
            name = f"{node.name} + {following[0].name}"
            fused.add(following[0].name)
        entry = {"Name": name, "LayerType": "Reformat", "TacticValue": "0x0000000000000000"}
        if node.op_type in ("Conv", "Gemm"):
            source = node.input[1]
            while source not in weights and producers[source].op_type == "DequantizeLinear":  # an int8 QDQ weight
                source = producers[source].input[0]
            w = weights[source]
            sparse_ok = low_precision and is_2_4(w)
            out_channels = w.shape[0]
            chosen = sparse_ok and out_channels >= PICK_CHANNELS
            if sparse_ok:
                eligible.append(name)
            if chosen:
                picked.append(name)
            kind = "conv" if node.op_type == "Conv" else "gemm"
            entry = {"Name": name, "LayerType": "CaskConvolution" if kind == "conv" else "CaskGemmConvolution",
                     "ParameterType": "Convolution", "OutMaps": int(out_channels), "Groups": 1,
                     "Weights": {"Type": "Half", "Count": int(w.size)}, "HasSparseWeights": int(chosen),
                     "HasBias": 1, "HasReLU": int(" + " in name),
                     "TacticName": ("sm87_xmma_fprop_sparse_conv_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize128x64x64"
                                    if chosen else
                                    "sm87_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize64x32x64"),
                     "TacticValue": "0x%016x" % (abs(hash(name)) % (1 << 63))}
        layers.append(entry)
    with open(opts["saveEngine"], "wb") as f:
        with open(opts["onnx"], "rb") as src:
            f.write(MAGIC + src.read())
    if "exportLayerInfo" in opts:
        with open(opts["exportLayerInfo"], "w") as f:
            json.dump({"Layers": layers, "Bindings": [i.name for i in graph.input] + [o.name for o in graph.output]},
                      f, indent=2)
    if "verbose" in opts and opts.get("sparsity") == "enable":
        log("[I] [TRT] (Sparsity) Layers eligible for sparse math: " + ", ".join(eligible))
        log("[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: " + ", ".join(picked))
    log("[I] Engine built in 0.42 sec.")
    log("&&&& PASSED TensorRT.trtexec [TensorRT v%s]" % VERSION)


def run(opts):
    import onnxruntime as ort

    with open(opts["loadEngine"], "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        log("[E] Error[1]: [runtime.cpp::parsePlan::314] Error Code 1: Serialization (Serialization assertion "
            "plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.)")
        sys.exit(1)
    session = ort.InferenceSession(data[len(MAGIC):], providers=["CPUExecutionProvider"])
    feeds = {}
    for spec in opts["loadInputs"].split(","):
        name, _, path = spec.rpartition(":")
        name = name.strip("'")
        meta = next(i for i in session.get_inputs() if i.name == name)
        shape = [d if isinstance(d, int) else 1 for d in meta.shape]
        feeds[name] = np.fromfile(path, dtype=np.float32).reshape(shape)
    outputs = session.run(None, feeds)
    with open(opts["exportOutput"], "w") as f:
        f.write("[\n")
        sep = "  "
        for meta, value in zip(session.get_outputs(), outputs):
            f.write('%s{ "name" : "%s"\n' % (sep, meta.name))
            sep = ", "
            f.write('  , "dimensions" : "%s"\n' % "x".join(str(d) for d in value.shape))
            f.write('  , "values" : [ %s ]\n  }\n' % ", ".join("%g" % v for v in value.ravel()))
        f.write("]\n")
    log("&&&& PASSED TensorRT.trtexec [TensorRT v%s]" % VERSION)


def main():
    opts = options(sys.argv[1:])
    log("&&&& RUNNING TensorRT.trtexec [TensorRT v%s] # trtexec %s" % (VERSION, " ".join(sys.argv[1:])))
    if "onnx" in opts:
        build(opts)
    elif "loadEngine" in opts:
        run(opts)
    else:
        sys.exit("the stand-in trtexec builds (--onnx) or runs (--loadEngine) only")


if __name__ == "__main__":
    main()
