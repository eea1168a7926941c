"""The errors edgeprune raises. Each message names the file, key, layer or op at fault."""

from __future__ import annotations


class EdgepruneError(Exception):
    """Base class: catch this to handle every edgeprune failure."""


class TargetError(EdgepruneError):
    """A target profile is unknown, malformed or inconsistent."""


class BudgetError(EdgepruneError):
    """A budget is out of range or cannot be met."""


class RecipeError(EdgepruneError):
    """A per-layer recipe is malformed or names a layer the model does not have."""


class ModelError(EdgepruneError):
    """The model cannot be run, traced or pruned as asked."""


class ArtifactError(EdgepruneError):
    """A saved model or artifact is missing, corrupt or would be overwritten."""


class ExportError(EdgepruneError):
    """The model cannot be exported to this format (names the op or layer), or verification failed."""


class ArenaTooSmallError(ExportError):
    """TFLite-Micro could not allocate the model's tensors in the arena it was given."""


class MalformedError(ArtifactError, ValueError):
    """JSON edgeprune wrote (a plan, a manifest, a checkpoint record) is not what it wrote: not JSON, not
    UTF-8, or a key missing or of the wrong type. The message names the file (where there is one) and the key.
    A ValueError too, as the plan's JSON errors were before."""


class SettingsError(EdgepruneError, ValueError):
    """An argument of an API call (BenchSettings, a budget's value, ...) has the wrong type or is out of
    range: NaN, infinite, negative. A ValueError too, as BenchSettings' errors were before."""


class DeviceError(EdgepruneError):
    """A device cannot be reached, refused us, or a command on it failed. The message names the device."""


class HostKeyError(DeviceError):
    """The device's SSH host key is unknown or changed; nothing was run on it."""


class DeviceBusyError(DeviceError):
    """Another benchmark holds the device's lock and did not release it in time."""


class RemoteTimeoutError(DeviceError):
    """A connection, command or the whole run took longer than its limit; the command was killed."""


class ConnectionLostError(DeviceError):
    """The SSH connection dropped while a command was running; no result was recorded."""


class WorkdirError(DeviceError):
    """The device's work dir, lock or run dir is not private to the benchmarking user (a symlink, another
    user's, writable by group/others), or a file in it changed after its sha256 check; nothing was run."""


class HistoryError(EdgepruneError):
    """The history database (`.edgeprune/history.sqlite`, or `--history URL`) cannot be opened, read or
    appended to: not an SQLite file, damaged, another program's database, written by a newer edgeprune,
    locked past its timeout, or a URL that is not `sqlite:///…`. The message names the file (or the URL);
    the file is left exactly as it was, so no earlier record is lost."""


class DeployError(EdgepruneError):
    """A deploy whose artifact did not check out on the device: an output differed from PyTorch's beyond
    export's tolerance there (the message names it; the bundle keeps what the device computed)."""
