"""Hardware target profiles: one TOML file per board or chip, validated against this schema.

A profile says what the hardware accelerates (which sparsity patterns, at which shapes), which channel
counts its dense kernels like, which precisions it runs, how much memory it has and which runtime and
export format it uses. The policy (`policy.py`) reads nothing else about the hardware.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from . import host
from ._resources import builtin_dir
from ._toml import read_toml, validate
from .errors import TargetError

Family = Literal["jetson", "arm-cpu", "x86-cpu", "mcu"]
Pattern = Literal["structured", "n:m", "unstructured"]
PrecisionName = Literal["fp32", "fp16", "int8"]


class _Section(BaseModel):
    # strict: a profile that says sram_bytes = "512K" is an error, not a silent coercion
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Hardware(_Section):
    cpu: str
    cores: int = Field(ge=1)
    clock_hz: int = Field(gt=0)
    simd: Literal["neon", "avx2", "avx512", "helium", "dsp", "none"]
    simd_width_bits: int = Field(ge=0)
    gpu: str = ""
    accelerator: Literal["none", "ampere-gpu", "ethos-u55", "ethos-u65"] = "none"
    # the name Vela takes as --accelerator-config (Ethos-U only)
    accelerator_config: str = ""
    accelerator_macs_per_cycle: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _detect_host(cls, data: Any) -> Any:
        # "host": read from the machine loading the profile, so x86-64-host describes the user's machine
        if isinstance(data, dict) and host.HOST in data.values():
            found = host.detect()
            data = {k: found[k] if v == host.HOST and k in found else v for k, v in data.items()}
        return data


class Memory(_Section):
    # 0 means "not a constraint the policy checks" (e.g. flash on a board that boots from SD)
    ram_bytes: int = Field(ge=0)
    sram_bytes: int = Field(ge=0)
    flash_bytes: int = Field(ge=0)


class Precision(_Section):
    supported: list[PrecisionName] = Field(min_length=1)
    default: PrecisionName

    @model_validator(mode="after")
    def _default_is_supported(self) -> "Precision":
        if self.default not in self.supported:
            raise ValueError(f"precision.default {self.default!r} is not in precision.supported {self.supported}")
        return self


class Alignment(_Section):
    channel_multiple: int = Field(ge=1)
    int8_channel_multiple: Optional[int] = Field(default=None, ge=1)
    min_channels: int = Field(ge=1)

    def multiple(self, precision: str) -> int:
        if precision == "int8" and self.int8_channel_multiple:
            return self.int8_channel_multiple
        return self.channel_multiple


class NMSparsity(_Section):
    n: int = Field(ge=1)
    m: int = Field(ge=2)
    axis: Literal["input"]
    # sparse kernels are only chosen for layers at least this wide (in and out channels)
    min_in_channels: int = Field(ge=1)
    min_out_channels: int = Field(ge=1)
    max_gemm_speedup: float = Field(gt=1.0)

    @model_validator(mode="after")
    def _n_below_m(self) -> "NMSparsity":
        if self.n >= self.m:
            raise ValueError(f"sparsity.nm: n ({self.n}) must be smaller than m ({self.m})")
        return self


class Sparsity(_Section):
    accelerated: list[Pattern] = Field(min_length=1)
    # what unstructured zeros buy on this hardware: nothing, smaller flash (compressed weights), or speed
    unstructured_benefit: Literal["none", "flash", "speed"]
    nm: Optional[NMSparsity] = None

    @model_validator(mode="after")
    def _nm_present_iff_accelerated(self) -> "Sparsity":
        if ("n:m" in self.accelerated) != (self.nm is not None):
            raise ValueError("sparsity.nm must be given exactly when 'n:m' is in sparsity.accelerated")
        return self


class Runtime(_Section):
    preferred: Literal["executorch", "litert", "tflite-micro", "tensorrt", "onnxruntime"]
    alternatives: list[Literal["executorch", "litert", "tflite-micro", "tensorrt", "onnxruntime"]] = []
    export_format: Literal["pte", "tflite", "onnx"]
    delegate: Literal["xnnpack", "cmsis-nn", "ethos-u", "tensorrt", "none"]


class Target(_Section):
    """A hardware target profile. Load one with `load_target`."""

    name: str = Field(min_length=1)
    description: str
    family: Family
    hardware: Hardware
    memory: Memory
    precision: Precision
    alignment: Alignment
    sparsity: Sparsity
    runtime: Runtime

    _source: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _family_rules(self) -> "Target":
        if self.family == "jetson" and self.hardware.accelerator != "ampere-gpu":
            raise ValueError("family 'jetson' needs hardware.accelerator = 'ampere-gpu'")
        if self.family == "mcu":
            if "int8" not in self.precision.supported:
                raise ValueError("family 'mcu' needs 'int8' in precision.supported")
            if self.memory.sram_bytes == 0 or self.memory.flash_bytes == 0:
                raise ValueError("family 'mcu' needs memory.sram_bytes and memory.flash_bytes > 0")
        if self.hardware.accelerator.startswith("ethos-u") and not self.hardware.accelerator_config:
            raise ValueError("an Ethos-U target needs hardware.accelerator_config (Vela's --accelerator-config)")
        return self

    @property
    def source(self) -> str:
        """The file this profile was read from."""
        return self._source

    def accelerates(self, pattern: str) -> bool:
        return pattern in self.sparsity.accelerated


def builtin_targets() -> dict[str, Path]:
    """Names of the built-in profiles and their files."""
    return {p.stem: p for p in sorted(builtin_dir("targets").glob("*.toml"))}


def load_target(name_or_path: str | Path) -> Target:
    """A built-in profile by name (`"raspberry-pi-5"`) or a user's profile by path (`"boards/mine.toml"`)."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text
    if looks_like_path:
        path = Path(text)
    else:
        builtins = builtin_targets()
        if text not in builtins:
            raise TargetError(
                f"unknown target {text!r}: not a built-in profile (built-in: {', '.join(builtins)}); "
                "pass a path to a .toml file for your own"
            )
        path = builtins[text]
    data = read_toml(path, TargetError)
    target = validate(Target, data, path, TargetError)
    target._source = str(path)
    return target
