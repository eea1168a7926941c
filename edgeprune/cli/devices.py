"""`edgeprune devices`: the devices in devices.toml, listed or checked; and how a device's state reads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ..errors import EdgepruneError
from ._app import DEVICES_OPTION, TRUST_OPTION, console, devices_app, fail, interrupted


@devices_app.command("list")
def devices_list(devices: Optional[Path] = DEVICES_OPTION) -> None:
    """List the devices and how each is reached."""
    from ..devices import load_devices

    try:
        inventory = load_devices(devices)
    except EdgepruneError as exc:
        fail(exc)
    table = Table(title=f"devices ({devices or 'devices.toml'})")
    for col in ("name", "target", "address", "python", "workdir", "timeouts (connect/command/deadline)"):
        table.add_column(col)
    for d in inventory.values():
        table.add_row(d.name, d.target, d.address, d.python, d.workdir,
                      f"{d.connect_timeout_s:g} / {d.command_timeout_s:g} / {d.deadline_s:g} s")
    console.print(table)


@devices_app.command("check")
def devices_check(
    name: Optional[str] = typer.Argument(None, help="one device (default: every device in the file)"),
    devices: Optional[Path] = DEVICES_OPTION, trust_new_host_key: bool = TRUST_OPTION,
    imports: bool = typer.Option(False, "--imports", help="import each runtime on the device to prove it loads "
                                 "(slower: seconds per runtime), not only check that it is installed"),
) -> None:
    """Is each device reachable, which runtimes does it have, and what state is it in? Exit 1 if one is not."""
    from ..devices import load_devices

    try:
        inventory = load_devices(devices)
        if name is not None and name not in inventory:
            raise EdgepruneError(f"{devices or 'devices.toml'}: no device named '{name}' (known: {', '.join(inventory)})")
    except EdgepruneError as exc:
        fail(exc)
    names = [name] if name else list(inventory)
    from ..remote import check_many

    try:
        with console.status(f"checking {', '.join(names)}…"):
            checks = check_many([inventory[n] for n in names], trust_new_host_key=trust_new_host_key, imports=imports)
    except KeyboardInterrupt as exc:
        interrupted(exc)
    table = Table(title="device check")
    for col in ("device", "address", "reachable", "python / numpy", "runtimes", "state", "problem"):
        table.add_column(col, overflow="fold")
    for c in checks:
        present = [f"{k} {v['version']}" if v.get("version") else k for k, v in c.runtimes.items()
                   if v.get("version") or v.get("trtexec")]
        table.add_row(c.device, c.address, Text("yes", "green") if c.reachable and not c.error else Text("no", "red"),
                      f"{c.python or '—'} / {c.numpy or '—'}", "\n".join(present) or "—",
                      describe_state(c.state), c.error or "")
    console.print(table)
    if any(c.error for c in checks):
        raise typer.Exit(code=1)


def describe_state(state: dict) -> str:
    """One short line per fact: governors, clocks, hottest zone, load, Jetson power mode."""
    if not state:
        return "—"
    parts = []
    governors = sorted(set((state.get("governor") or {}).values()))
    if governors:
        parts.append("governor " + "/".join(governors))
    mhz = [v for v in (state.get("cur_mhz") or {}).values() if v]
    if mhz:
        parts.append(f"clock {min(mhz):.0f}–{max(mhz):.0f} MHz")
    temps = [z for z in state.get("thermal") or [] if z.get("temp_c") is not None]
    if temps:
        hot = max(temps, key=lambda z: z["temp_c"])
        parts.append(f"{hot.get('type') or 'zone'} {hot['temp_c']:.1f} °C")
    if state.get("loadavg"):
        parts.append("load " + " ".join(f"{v:.2f}" for v in state["loadavg"]))
    if state.get("nvpmodel"):
        parts.append("nvpmodel " + " ".join(str(state["nvpmodel"]).split())[:60])
    return "\n".join(parts)
