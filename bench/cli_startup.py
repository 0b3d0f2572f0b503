"""How long ``aftersales`` takes to start: ``--help`` and ``case show`` on SQLite, beside
``python -c pass`` (the interpreter alone) in the same run.

Each round runs the three commands in turn as a shell would (a process each, wall time from
start to exit), so a machine that slows down during the run slows all three alike; the report
gives each command's median wall and CPU time (user + system, which a busy machine inflates
less) and its median ratio to ``python -c pass`` over the rounds. The targets of issue 14 are
absolute (``--help`` under 0.3 s, ``case show`` under 0.6 s) and are checked on the medians.
The commands are ``python -m entrypoints.cli ...``, what the ``aftersales`` script runs.

``--tree DIR`` runs another checkout's code with this interpreter (``PYTHONPATH=DIR``), e.g. a
``git worktree`` of an older commit, to measure the same commands before a change::

    python -m bench.cli_startup --rounds 20
    git worktree add /tmp/before 00e9eee && python -m bench.cli_startup --tree /tmp/before
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"aftersales --help": 0.3, "aftersales case show 1": 0.6}
BASELINE = "python -c pass"


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def _seed(cli: list[str], env: dict[str, str], cwd: Path) -> None:
    """A SQLite database at the newest schema holding case 1, as a user would make it."""
    for step in (
        ["demo", "--write-samples", "samples"],
        ["orders", "import", "samples/orders.jsonl"],
        ["case", "submit", "samples/application.json"],
    ):
        _run([*cli, *step], env, cwd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="Runs of each command.")
    parser.add_argument("--tree", type=Path, help="Measure this checkout's code instead.")
    args = parser.parse_args(argv)

    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb"}
    if args.tree is not None:
        env["PYTHONPATH"] = str(args.tree.resolve())
    cli = [sys.executable, "-m", "entrypoints.cli"]
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as folder:
        cwd = Path(folder)
        env["AFTERSALES_DATABASE_URL"] = f"sqlite:///{cwd / 'aftersales.db'}"
        _seed(cli, env, cwd)
        commands = {
            BASELINE: [sys.executable, "-c", "pass"],
            "aftersales --help": [*cli, "--help"],
            "aftersales case show 1": [*cli, "case", "show", "1"],
        }
        for argv_ in commands.values():  # warm the page cache and the bytecode
            _run(argv_, env, cwd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, argv_ in commands.items():
                wall, cpu = _run(argv_, env, cwd)
                times[name].append(wall)
                cpus[name].append(cpu)

    code = args.tree or Path(__file__).resolve().parent.parent
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"cli start-up, {args.rounds} rounds, code {code}, {os.cpu_count()} cores, load {load}")
    print(f"{'command':<24} {'wall s':>7} {'min s':>7} {'cpu s':>7} {'x pass':>7}  target")
    for name, samples in times.items():
        ratios = [sample / base for sample, base in zip(samples, times[BASELINE], strict=True)]
        median = statistics.median(samples)
        target = TARGETS_S.get(name)
        verdict = "" if target is None else f"< {target} s: {'yes' if median < target else 'NO'}"
        print(
            f"{name:<24} {median:>7.3f} {min(samples):>7.3f} "
            f"{statistics.median(cpus[name]):>7.3f} {statistics.median(ratios):>7.1f}  {verdict}"
        )


if __name__ == "__main__":
    main()
