"""What a hyperparameter-search library costs by itself: import time and seconds per trial, Optuna vs Ax.

Notebook 09 tunes three hyperparameters (learning rate, weight decay, how many stages to unfreeze) within
a fixed time budget on 2 CPU cores. The library's own overhead (import, proposing the next trial,
fitting its model of the results) comes out of that budget. This script measures it with an objective
that costs nothing, so what is timed is the library alone.

Each library is imported in a fresh Python process that has already imported torch (the import time a
notebook pays), then asked for ``--trials`` trials of the same search space in one process. Use enough trials
for both libraries to reach their model: Optuna's TPE samples at random for its first 10 trials, Ax (Sobol)
for its first 5. A library that is not installed is
reported as such; ``--extra-path`` points at a folder where one was installed apart from the course's
environment (``pip install --no-deps --target DIR ...``). ``--install-size`` measures what each library adds
on top of the course's base dependencies: pip resolves both sets (``--dry-run --ignore-installed``), installs
the packages only the library needs into a temporary folder and weighs it (needs PyPI, takes minutes).

Run: ``python benchmarks/tuner_overhead.py [--trials 30] [--extra-path DIR] [--install-size] [--no-readme]``;
the table replaces the ``tuner_overhead`` section of README.md (only when both libraries were measured).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

IMPORTS = {"optuna": "import optuna", "ax": "from ax import Client, RangeParameterConfig"}
DISTRIBUTIONS = {"optuna": "optuna", "ax": "ax-platform"}


def _objective(lr: float, weight_decay: float, stages: int) -> float:
    """A smooth stand-in for validation accuracy, best near lr 3e-3, weight decay 1e-4, 3 stages."""
    return (1 - 0.05 * (math.log10(lr) + 2.5) ** 2 - 0.01 * (math.log10(weight_decay) + 4) ** 2
            - 0.005 * (stages - 3) ** 2)


def _import_seconds(library: str, extra_paths: list[str]) -> float | None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*extra_paths, env.get("PYTHONPATH")]))
    code = f"import time, torch; t = time.perf_counter(); {IMPORTS[library]}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return float(done.stdout.strip()) if done.returncode == 0 else None


def _resolved(requirements: list[str]) -> dict[str, str]:
    """``{name: version}`` of everything pip would install for ``requirements`` into an empty environment."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                        "--report", str(report), *requirements], check=True, capture_output=True)
        return {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}


def install_size(library: str) -> tuple[int, float]:
    """Packages and megabytes that ``library`` adds to the course's base dependencies (pyproject.toml)."""
    base = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    base_set = _resolved(base["dependencies"])
    added = {name: version for name, version in _resolved([*base["dependencies"], DISTRIBUTIONS[library]]).items()
             if name not in base_set}
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", folder,
                        *(f"{name}=={version}" for name, version in added.items())], check=True, capture_output=True)
        size = sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())
    return len(added), size / 1e6


def _optuna_trials(trials: int) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    seconds = []
    for _ in range(trials):
        start = time.perf_counter()
        trial = study.ask()
        value = _objective(trial.suggest_float("lr", 1e-5, 1e-1, log=True),
                           trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
                           trial.suggest_int("stages", 1, 9))
        study.tell(trial, value)
        seconds.append(time.perf_counter() - start)
    return seconds


def _ax_trials(trials: int) -> list[float]:
    from ax import Client, RangeParameterConfig

    client = Client(random_seed=0)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name="lr", parameter_type="float", bounds=(1e-5, 1e-1), scaling="log"),
        RangeParameterConfig(name="weight_decay", parameter_type="float", bounds=(1e-6, 1e-1), scaling="log"),
        RangeParameterConfig(name="stages", parameter_type="int", bounds=(1, 9)),
    ])
    client.configure_optimization(objective="accuracy")
    seconds = []
    for _ in range(trials):
        start = time.perf_counter()
        for index, params in client.get_next_trials(max_trials=1).items():
            value = _objective(params["lr"], params["weight_decay"], int(params["stages"]))
            client.complete_trial(trial_index=index, raw_data={"accuracy": value})
        seconds.append(time.perf_counter() - start)
    return seconds


def _mean_ms(seconds: list[float]) -> str:
    return f"{1000 * sum(seconds) / len(seconds):.1f}" if seconds else "none run"


def _table(trials: int, extra_paths: list[str], measure_size: bool) -> tuple[list[str], list[str]]:
    """Markdown rows, one per library, and the libraries that are not installed."""
    from importlib import metadata

    sizes = {library: install_size(library) for library in IMPORTS} if measure_size else {}
    lines = ["| library | version | adds to the base install | import (s) | trials 1-5 (ms each) "
             "| trials 6-10 (ms each) | later trials (ms each) | slowest trial (ms) | all trials (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    missing = []
    for library, run in (("optuna", _optuna_trials), ("ax", _ax_trials)):
        added = f"{sizes[library][0]} packages, {sizes[library][1]:.0f} MB" if library in sizes else "not measured"
        imported = _import_seconds(library, extra_paths)
        if imported is None:
            missing.append(library)
            lines.append(f"| {library} | not installed | {added} | | | | | | |")
            continue
        seconds = run(trials)
        means = [_mean_ms(part) for part in (seconds[:5], seconds[5:10], seconds[10:])]
        lines.append(f"| {library} | {metadata.version(DISTRIBUTIONS[library])} | {added} | {imported:.2f} | "
                     f"{' | '.join(means)} | {1000 * max(seconds):.0f} | {sum(seconds):.1f} |")
    return lines, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--extra-path", action="append", default=[],
                        help="a folder with a separately installed library (repeatable)")
    parser.add_argument("--install-size", action="store_true", help="also measure what each library adds (PyPI)")
    parser.add_argument("--no-readme", action="store_true", help="print the table without writing README.md")
    args = parser.parse_args()
    sys.path[:0] = args.extra_path
    import torch
    from readme_section import machine_line, write_section

    lines = [f"Search-library overhead, objective free, {args.trials} trials, {torch.get_num_threads()} torch threads, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.machine()}", ""]
    table, missing = _table(args.trials, args.extra_path, args.install_size)
    markdown = machine_line(threads=torch.get_num_threads()) + "\n\n" + "\n".join(lines + table)
    print(markdown)
    if args.no_readme:
        return
    if missing:  # the README compares both libraries: a run without one of them must not replace it
        raise SystemExit(f"README.md not written: {', '.join(missing)} not installed (install it apart and pass "
                         "--extra-path, see the docstring), or pass --no-readme.")
    write_section("tuner_overhead", markdown)
    print("README.md: the tuner_overhead section rewritten")


if __name__ == "__main__":
    main()
