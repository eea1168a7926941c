"""A manifest, summarized for people."""

from __future__ import annotations

from rich.table import Table


def manifest_table(manifest: dict) -> Table:
    """What was verified, as a rich table: outputs, weights inside the artifact, memory fit."""
    table = Table(title=f"{manifest['artifact']} ({manifest['format']}, {manifest['precision']}) — verified")
    table.add_column("check")
    table.add_column("result")
    source = manifest["verification"].get("source", "held-out")
    for o in manifest["verification"]["outputs"]:
        table.add_row(f"output {o['output']} on {o['inputs']} {source} inputs",
                      f"max abs err {o['max_abs_err']:.2e}, cosine {o['cosine']:.5f}, top-1 {o['top1_agreement']:.2f}")
    weights = manifest["verification"]["weights"]
    if weights.get("checked"):
        layers = weights["layers"]
        table.add_row("weights inside the artifact", f"{sum(r['passed'] for r in layers.values())}/{len(layers)} "
                      "pruned layers keep their pattern / channel counts")
    else:
        table.add_row("weights inside the artifact", f"not checked: {weights.get('note')}")
    memory = manifest["memory"]
    if memory.get("checked"):
        table.add_row("TFLite-Micro arena", f"{memory['tflm_arena_bytes'] / 1024:.1f} KiB of {memory['sram_bytes'] / 1024:.0f} KiB SRAM")
        table.add_row("flash", f"{memory['artifact_bytes'] / 1024:.1f} KiB of {memory['flash_bytes'] / 1024:.0f} KiB")
        if "vela" in memory:
            v = memory["vela"]
            table.add_row("Vela (estimates)", ", ".join(f"{k}={v[k]}" for k in v if not isinstance(v[k], (dict, list))))
    table.add_row("size / export time", f"{manifest['size_bytes'] / 1024:.1f} KiB, {manifest['export']['seconds']:.1f} s")
    return table
