"""Mutation testing of the core: how many deliberate bugs the test suite catches, per module.

mutmut (3.x) rewrites each function of a module into many mutants (a flipped comparison, an off-by-one,
a dropped argument, a returned None...) and runs, for each mutant, the tests that call that function; a
mutant that no test fails on "survived": a bug of that shape would ship unnoticed. We chose mutmut over
cosmic-ray because mutmut 3 imports the suite once and forks per mutant, and runs only the tests that
reach the mutated function: with torch imported by every test module, a fresh interpreter per mutant
(cosmic-ray's model) costs seconds before the first assertion, ×thousands of mutants.

Groups, their modules and their tests are data: bench/mutate.toml. Mutants judged equivalent (no test
can tell them apart from the original, because the behaviour is the same) are listed with the reason in
bench/mutants_equivalent.toml and leave the denominator. Each group runs in its own scratch copy of the
repository under build/mutate/<group>/ (mutmut writes its `mutants/` tree there), so the working tree
is never touched.

    .venv/bin/python bench/mutate.py --out bench/out/mutate.md [--group nm-masks ...] [--jobs 2] [--resume]

Kill rate = (killed + timed out) / (all mutants - equivalent). A "no tests" mutant (its function is
never called by the group's tests) counts as surviving. mutmut runs each mutant against the tests it saw
call the function; a survivor is then re-run against all of the group's tests (see `confirm`), because
mutmut credits a call made in a shared fixture to the first test that used it only.

    .venv/bin/python bench/mutate.py --confirm-only --group serialization   # confirm the last run's survivors
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from _report import emit

try:
    import tomllib
except ImportError:  # Python 3.10: the tomli backport, a dependency of edgeprune there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mutate"
GROUPS_FILE = Path(__file__).resolve().parent / "mutate.toml"
EQUIVALENT_FILE = Path(__file__).resolve().parent / "mutants_equivalent.toml"
GOAL = 0.90
SEP = "ǁ"  # mutmut mangles a method as xǁClassǁmethod

# mutmut's exit-code meanings (mutmut.stats.status_by_exit_code), folded to what the score needs.
KILLED = {1, 3}
TIMEOUT = {-24, 24, 152, 255, 36}
SURVIVED = {0}
NO_TESTS = {5, 33}
NOT_RUN = {None}
SKIPPED = {34}


# A pytest plugin loaded in every group's scratch copy (never in the project's own test runs):
# - the device scripts also run in child processes (the harness on `local`), which inherit mutmut's
#   MUTANT_UNDER_TEST: a mutant's name there runs that mutant (what we want), but "stats" makes the child's
#   trampolines look for mutmut's config in the child's working directory and crash, so children never
#   collect stats;
# - mutmut wraps every mutated function in a trampoline that lives in mutmut's package, so edgeprune's
#   warnings, which name the first frame outside edgeprune (the caller's line), would name the trampoline.
MUTATE_PLUGIN = "_mutate_plugin"
# edgeprune's own pytest plugin (entry point `edgeprune`) is not under test, and the installed entry point
# would import it from the mutated copy, which may predate it
PYTEST_ARGS = ["-p", "no:cacheprovider", "-p", "no:edgeprune", "-p", MUTATE_PLUGIN]
MUTATE_PLUGIN_SOURCE = '''"""Loaded by bench/mutate.py in its scratch copies only (see MUTATE_PLUGIN there)."""
import os
import subprocess
from pathlib import Path

import mutmut

_popen_init = subprocess.Popen.__init__


def _init(self, *args, env=None, **kwargs):
    source = os.environ if env is None else env
    if source.get("MUTANT_UNDER_TEST") == "stats":
        env = {k: v for k, v in source.items() if k != "MUTANT_UNDER_TEST"}
    _popen_init(self, *args, env=env, **kwargs)


subprocess.Popen.__init__ = _init

try:
    import edgeprune._warn as _warn
except ImportError:  # a device-side group's copy keeps edgeprune unmutated: nothing to patch there either way
    _warn = None
if _warn is not None:
    _mutmut_dir = str(Path(mutmut.__file__).resolve().parent) + "/"
    _inside = _warn._inside
    _warn._inside = lambda filename: _inside(filename) or str(Path(filename).resolve()).startswith(_mutmut_dir)
'''


@dataclass
class Group:
    name: str
    what: str
    modules: list[str]
    tests: list[str]
    functions: list[str] = field(default_factory=list)  # "name" or "Class.method"

    def in_scope(self, mutant: str) -> bool:
        return not self.functions or function_of(mutant) in self.functions

    @property
    def device_side(self) -> bool:
        return any(m.startswith("runtimes/") for m in self.modules)

    def module_name(self, path: str) -> str:
        """The dotted name mutmut gives a module: device scripts are top-level, as on the device."""
        stem = path[: -len(".py")]
        if path.startswith("runtimes/"):
            return stem.split("/", 1)[1]
        return stem.replace("/", ".").replace(".__init__", "")


@dataclass
class ModuleScore:
    group: str
    module: str
    counts: Counter
    survivors: list[str]
    equivalent: dict[str, str]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def scored(self) -> int:
        return self.total - self.counts["equivalent"] - self.counts["skipped"] - self.counts["not run"]

    @property
    def killed(self) -> int:
        return self.counts["killed"] + self.counts["timeout"]

    @property
    def rate(self) -> float:
        return self.killed / self.scored if self.scored else 1.0


def load_groups(selected: list[str]) -> list[Group]:
    groups = [Group(**g) for g in tomllib.loads(GROUPS_FILE.read_text())["group"]]
    unknown = set(selected) - {g.name for g in groups}
    if unknown:
        sys.exit(f"{GROUPS_FILE}: no group named {', '.join(sorted(unknown))}")
    return [g for g in groups if not selected or g.name in selected]


def load_equivalent() -> dict[str, str]:
    if not EQUIVALENT_FILE.exists():
        return {}
    return {name: reason for name, reason in tomllib.loads(EQUIVALENT_FILE.read_text()).items()}


def prepare(group: Group, resume: bool) -> Path:
    """A scratch copy of the repository laid out for mutmut, with the group's config in its pyproject."""
    ws = BUILD / group.name
    if ws.exists() and not resume:
        shutil.rmtree(ws)
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "confirmed.json").unlink(missing_ok=True)  # tests or sources may have changed since
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("edgeprune", "targets", "tests"):
        shutil.rmtree(ws / name, ignore_errors=True)
        shutil.copytree(ROOT / name, ws / name, ignore=ignore)
    shutil.copy2(ROOT / "devices.toml", ws / "devices.toml")
    # Device scripts import each other as top-level modules; under src/ mutmut names them that way
    # (it strips "src."), and mutants/runtimes points edgeprune's uploads at the mutated copies.
    runtimes_dir = "src" if group.device_side else "runtimes"
    shutil.rmtree(ws / runtimes_dir, ignore_errors=True)
    shutil.copytree(ROOT / "runtimes", ws / runtimes_dir, ignore=ignore)
    if group.device_side:
        (ws / "mutants").mkdir(exist_ok=True)
        link = ws / "mutants" / "runtimes"
        if not link.is_symlink():
            link.symlink_to("src")
    (ws / "mutants").mkdir(exist_ok=True)
    (ws / "mutants" / f"{MUTATE_PLUGIN}.py").write_text(MUTATE_PLUGIN_SOURCE)
    modules = [m.replace("runtimes/", "src/", 1) if group.device_side else m for m in group.modules]
    source_paths = ["src"] if group.device_side else ["edgeprune"]
    also_copy = ["targets", "devices.toml"] + (["edgeprune"] if group.device_side else ["runtimes"])
    config = "\n".join([
        "[tool.mutmut]",
        f"source_paths = {json.dumps(source_paths)}",
        f"only_mutate = {json.dumps(modules)}",
        f"also_copy = {json.dumps(also_copy)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(group.tests)}",
        f"pytest_add_cli_args = {json.dumps([*PYTEST_ARGS, '-q', '-x'])}",
        # torch is not fork-safe once its thread pools have started: fork from a server that never ran a test
        'process_isolation = "forkserver"',
        "use_git_change_detection = false",
        # mutmut's default (15 x the tests' time) lets one looping mutant of the policy cost a quarter of an
        # hour; a mutant 3 x slower than the tests is caught as a hang all the same
        "timeout_multiplier = 3.0",
        "timeout_constant = 10.0",
        "",
        "[tool.pytest.ini_options]",
        'testpaths = ["tests"]',
        'markers = ["e2e: end-to-end tests through the CLI"]',
        "",
    ])
    (ws / "pyproject.toml").write_text(config)
    return ws


def patterns(group: Group) -> list[str]:
    """mutmut's name filters for a group scored on some functions only: the others are not even run."""
    mangled = [f"x{SEP}{fn.replace('.', SEP)}" if "." in fn else f"x_{fn}" for fn in group.functions]
    return [f"{group.module_name(m)}.{fn}__mutmut_*" for m in group.modules for fn in mangled]


def run_mutmut(ws: Path, group: Group, jobs: int) -> float:
    """Seconds mutmut took; raises RuntimeError when it could not run (its log says why)."""
    mutmut = Path(sys.executable).with_name("mutmut")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    started = time.monotonic()
    with open(ws / "mutmut.log", "w") as log:
        proc = subprocess.run([str(mutmut), "run", "--max-children", str(jobs), *patterns(group)], cwd=ws, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"mutmut failed in {ws} (exit {proc.returncode}); see {ws / 'mutmut.log'}")
    return time.monotonic() - started


def confirm(ws: Path, group: Group, names: list[str]) -> dict[str, str]:
    """Re-run each surviving mutant against ALL the group's tests, not only mutmut's pick.

    mutmut attributes a function to the tests during which it ran, so a call made once in a shared
    (module- or session-scoped) fixture is credited to the first test that used it alone, and the tests
    that check its result later are never run against its mutants. A survivor is confirmed only when the
    group's whole selection passes with it in force. Results are kept in confirmed.json (name -> status).
    """
    record = ws / "confirmed.json"
    done = json.loads(record.read_text()) if record.exists() else {}
    mutants = ws / "mutants"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(mutants / "src"), str(mutants)]))
    argv = [sys.executable, "-m", "pytest", "-x", "-q", *PYTEST_ARGS, *group.tests]
    started = time.monotonic()
    clean = subprocess.run(argv, cwd=mutants, env=dict(env, MUTANT_UNDER_TEST="none"), capture_output=True, text=True)
    if clean.returncode != 0:
        raise RuntimeError(f"{group.name}: the tests fail with no mutant in force:\n{clean.stdout[-2000:]}")
    limit = 3 * (time.monotonic() - started) + 30
    for i, name in enumerate(n for n in names if n not in done):
        print(f"   confirming {name} ({i + 1}/{len(names)})", flush=True)
        try:
            proc = subprocess.run(argv, cwd=mutants, env=dict(env, MUTANT_UNDER_TEST=name), capture_output=True,
                                  timeout=limit)
            done[name] = "survived" if proc.returncode == 0 else "killed"
        except subprocess.TimeoutExpired:
            done[name] = "timeout"
        record.write_text(json.dumps(done, indent=1))
    return done


def keep_killed(record: Path) -> None:
    """Forget the confirmed survivors (a test written since may kill them), keep the kills: tests are only
    ever added for survivors, so a mutant some test failed on stays killed."""
    if record.exists():
        done = json.loads(record.read_text())
        record.write_text(json.dumps({n: r for n, r in done.items() if r != "survived"}, indent=1))


def status(code) -> str:
    for name, codes in (("killed", KILLED), ("timeout", TIMEOUT), ("survived", SURVIVED),
                        ("no tests", NO_TESTS), ("not run", NOT_RUN), ("skipped", SKIPPED)):
        if code in codes:
            return name
    return "suspicious"


def function_of(mutant: str) -> str:
    """`harness.x_noise_flags__mutmut_3` -> `noise_flags`; methods as `Class.method`."""
    mangled = mutant.rpartition(".")[2].partition("__mutmut_")[0]
    if SEP in mangled:
        _, cls, method = mangled.split(SEP)[:3]
        return f"{cls}.{method}"
    return mangled[2:]


def score(group: Group, ws: Path, seconds: float, equivalent: dict[str, str]) -> list[ModuleScore]:
    record = ws / "confirmed.json"
    confirmed = json.loads(record.read_text()) if record.exists() else {}
    scores = []
    for module in group.modules:
        meta = meta_of(group, ws, module)
        results = {name: code for name, code in meta["exit_code_by_key"].items()
                   if group.in_scope(name)}
        judged = {n: r for n, r in equivalent.items() if n in results}
        counts = Counter("equivalent" if name in judged
                         else confirmed.get(name, "survived") if status(code) == "survived" else status(code)
                         for name, code in results.items())
        survivors = sorted(n for n, code in results.items()
                           if status(code) in ("no tests", "suspicious") and n not in judged
                           or status(code) == "survived" and confirmed.get(n, "survived") == "survived" and n not in judged)
        scores.append(ModuleScore(group.name, module, counts, survivors, judged, seconds))
    return scores


def meta_of(group: Group, ws: Path, module: str) -> dict:
    path = ws / "mutants" / (module.replace("runtimes/", "src/", 1) if group.device_side else module)
    return json.loads(path.with_name(path.name + ".meta").read_text())


def survived(group: Group, ws: Path, equivalent: dict[str, str]) -> list[str]:
    """mutmut's survivors in the group's scope, less those judged equivalent."""
    return sorted(name for module in group.modules
                  for name, code in meta_of(group, ws, module)["exit_code_by_key"].items()
                  if status(code) == "survived" and name not in equivalent
                  and group.in_scope(name))


def diff_of(ws: Path, mutant: str) -> str:
    mutmut = Path(sys.executable).with_name("mutmut")
    proc = subprocess.run([str(mutmut), "show", mutant], cwd=ws, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    return "\n".join(lines) or proc.stdout.strip()


def report(groups: list[Group], scores: list[ModuleScore], workspaces: dict[str, Path]) -> list[str]:
    lines = [
        "# Mutation testing (mutmut)", "",
        f"Machine: {os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}. "
        f"Goal: at least {GOAL:.0%} of non-equivalent mutants killed per module.", "",
        "| group | module | mutants | killed | timed out | survived | no tests | equivalent | kill rate | minutes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        c = s.counts
        mark = "" if s.rate >= GOAL else " ✗"
        if c["not run"]:  # an interrupted run: the rate is over the mutants run so far
            mark += f" (partial: {s.total - c['not run']} of {s.total} run)"
        lines.append(f"| {s.group} | `{s.module}` | {s.total} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                     f"{c['no tests']} | {c['equivalent']} | {s.rate:.1%}{mark} | {s.seconds / 60:.1f} |")
    for s in scores:
        if s.equivalent:
            lines += ["", f"## Equivalent in `{s.module}`", ""]
            lines += [f"- `{n}`: {r}" for n, r in sorted(s.equivalent.items())]
        if s.survivors:
            lines += ["", f"## Surviving in `{s.module}` ({len(s.survivors)})", ""]
            for name in s.survivors:
                lines += [f"- `{name}`", "```diff", diff_of(workspaces[s.group], name), "```"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path, help="per-module counts and survivors, for tooling")
    parser.add_argument("--group", action="append", default=[], help="run only these groups (repeatable)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    parser.add_argument("--resume", action="store_true", help="keep earlier results of unchanged functions")
    parser.add_argument("--no-confirm", action="store_true",
                        help="skip re-running survivors against all of the group's tests (see confirm())")
    parser.add_argument("--confirm-only", action="store_true",
                        help="only confirm the last run's survivors, then report")
    parser.add_argument("--report-only", action="store_true", help="re-score the last run without running mutmut")
    args = parser.parse_args()

    groups = load_groups(args.group)
    equivalent = load_equivalent()
    scores, workspaces, failed = [], {}, []
    for group in groups:
        reuse = args.report_only or args.confirm_only
        ws = BUILD / group.name if reuse else prepare(group, args.resume)
        if args.confirm_only:  # against today's tests: a test written for a survivor counts once it kills it
            shutil.copytree(ROOT / "tests", ws / "mutants" / "tests", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            keep_killed(ws / "confirmed.json")
        print(f"== {group.name}: {group.what} ({', '.join(group.modules)})", flush=True)
        try:
            seconds = 0.0 if reuse else run_mutmut(ws, group, args.jobs)
            if not args.report_only and not args.no_confirm:
                started = time.monotonic()
                confirm(ws, group, survived(group, ws, equivalent))
                seconds += time.monotonic() - started
            timing = ws / "seconds.json"  # what the run took, kept for --report-only / --confirm-only
            before = json.loads(timing.read_text()) if timing.exists() and reuse else 0.0
            timing.write_text(json.dumps(before + seconds))
            scores += score(group, ws, before + seconds, equivalent)
        except (RuntimeError, FileNotFoundError) as err:  # one group's failure does not lose the others'
            print(f"{group.name}: not scored: {err}", file=sys.stderr)
            failed.append(group.name)
        workspaces[group.name] = ws
    emit(report(groups, scores, workspaces), args.out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([dict(group=s.group, module=s.module, counts=dict(s.counts), rate=s.rate,
                                              survivors=s.survivors, equivalent=s.equivalent, seconds=s.seconds)
                                         for s in scores], indent=1))
    if failed:
        sys.exit(f"not scored: {', '.join(failed)}")


if __name__ == "__main__":
    main()
