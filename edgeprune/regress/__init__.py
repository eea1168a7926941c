"""On-device latency regression tests: baselines kept per (name, device), judged by A/B comparisons.

`baselines` stores each baseline artifact with its record; `plugin` is the pytest plugin (registered as
the `pytest11` entry point `edgeprune`: installing edgeprune is enough) with the `ep_latency` fixture;
`report` renders the session's comparisons as a table and as JSON. `edgeprune regress` (cli/regress.py) is the
same judgement for CI systems that do not run pytest.
"""

from .baselines import Baseline, BaselineStore

__all__ = ["Baseline", "BaselineStore"]
