"""The `edgeprune` command line: targets, plan, prune, choose, finetune, export, bench, devices, sensitivity, demo.

`_app` holds the Typer app, the shared helpers and the shared options; each module imported below registers
its commands on `app` (or on its `targets` / `devices` group) when imported. A new command is a module here and
one import line below; `--help` lists the commands in the order they are imported, the groups after them."""

from __future__ import annotations

from ._app import app, main, use_command_class

# the command modules: imported for the commands they register
from . import targets  # the `targets` group
from . import planning  # plan, prune
from . import choose
from . import finetune
from . import export
from . import devices  # the `devices` group: list, check
from . import bench
from . import regress
from . import history
from . import sensitivity
from . import demo
from . import deploy

# every command, the sub-apps' included, ends in `Command`'s handler; set here, once, after every command
# module is imported, so that no command (a new one included) can leave a user's mistake to a traceback
use_command_class(app)

__all__ = ["app", "main"]
