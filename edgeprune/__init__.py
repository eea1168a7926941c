"""edgeprune: prune PyTorch models for the edge device they will run on.

    import edgeprune as ep
    target = ep.load_target("raspberry-pi-5")
    plan = ep.plan(model, example_inputs, target, budget=ep.Budget(macs_ratio=0.5))
    pruned = ep.prune(model, plan)
"""

from .budget import (Budget, Estimate, FlashBudget, LatencyBudget, LatencyRatioBudget, MacsBudget, RamBudget,
                     SparsityBudget, SramBudget)
from .costs import ModelCost, measure
from .finetune import FinetuneResult, GradualSchedule, finetune, iterative_prune, lottery, recalibrate_bn
from .export import Artifact, ExportError, export, verify
from .deployment import Deployment, LayerKernel, deploy
from .devices import Device, load_devices
from .errors import (ArtifactError, BudgetError, ConnectionLostError, DeployError, DeviceBusyError, DeviceError,
                     EdgepruneError, HistoryError, HostKeyError, MalformedError, ModelError, RecipeError,
                     RemoteTimeoutError, SettingsError, TargetError, WorkdirError)
from .history import History, HistoryRecord, open_history
from .plan import GroupDecision, Iteration, LayerDecision, Plan
from .closedloop import plan
from .choosing import Candidate, Choice, choose
from .latency import LatencyModel, LatencyTable, LayerConfig
from .profiling import profile
from .pruning import PruneRecord, finalize, prune, record_of
from .recipe import Recipe
from .remote import BenchResult, BenchSettings, DeviceCheck, bench, bench_many, check, check_many
from .remote import CompareSettings, Comparison, Reservation, Verdict, compare, reserve
from .serialization import load, load_weights, save
from .sensitivity import LayerSensitivity, Sensitivity, sensitivity
from .plots import plot_accuracy_vs_latency, plot_layer_sparsity, plot_pareto
from .targets import Target, builtin_targets, load_target

from ._version import __version__

__all__ = [
    "FinetuneResult", "GradualSchedule", "finetune", "iterative_prune", "lottery", "recalibrate_bn",
    "BenchResult", "BenchSettings", "ConnectionLostError", "Device", "DeviceBusyError", "DeviceCheck", "DeviceError",
    "HostKeyError", "RemoteTimeoutError", "WorkdirError", "bench", "bench_many", "check", "check_many", "load_devices",
    "Artifact", "ArtifactError", "Budget", "Estimate", "FlashBudget", "LatencyBudget", "LatencyRatioBudget",
    "MacsBudget", "RamBudget", "SparsityBudget", "SramBudget", "ExportError", "export", "verify", "BudgetError", "EdgepruneError", "GroupDecision", "Iteration", "LayerDecision", "ModelCost",
    "MalformedError", "ModelError", "SettingsError", "Plan", "PruneRecord", "Recipe", "RecipeError", "Target", "TargetError", "builtin_targets",
    "finalize", "load", "load_target", "load_weights", "measure", "plan", "prune", "record_of", "save",
]
__all__ += ["CompareSettings", "Comparison", "Reservation", "Verdict", "compare", "reserve"]
__all__ += ["History", "HistoryError", "HistoryRecord", "open_history"]
__all__ += ["LatencyModel", "LatencyTable", "LayerConfig", "profile", "Candidate", "Choice", "choose"]
__all__ += ["Deployment", "DeployError", "LayerKernel", "deploy"]
__all__ += ["LayerSensitivity", "Sensitivity", "sensitivity", "plot_accuracy_vs_latency", "plot_layer_sparsity", "plot_pareto"]
