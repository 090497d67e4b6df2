"""Run every benchmark in ``benchmarks/``, one after another, and combine their figures in one JSON.

Run from the repository root::

    python benchmarks/run_all.py                          # every script, its defaults
    python benchmarks/run_all.py --quick                  # fewer iterations where a script has --quick
    python benchmarks/run_all.py --only routing --only imports_memory --out /tmp/bench

Each script runs in its own process (``sys.executable``, from the repository root), in this order:
``transport_throughput``, ``secrets_cache``, ``routing``, ``round_trip`` (if present),
``imports_memory``, then any other ``*.py`` here that takes ``--json`` (alphabetically). Its output
is printed as it comes; its figures go to ``--json DIR/<name>.json`` (``--out DIR``, default a
temporary directory removed at the end). ``--quick`` is passed to the scripts whose source defines
``--quick``; the others run as they are. Scripts never run concurrently: they measure the machine.

At the end a summary table is printed and one combined JSON is written (``--json PATH``, default
``benchmarks/results/all.json``; ``benchmarks/results/`` is git-ignored): the machine, and for each
script its command, exit status, duration, its own JSON report and, when it failed, the end of its
output. The exit status is 1 if any script failed (non-zero exit, timeout, or no JSON written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import _common

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
ORDER: Final = ("transport_throughput", "secrets_cache", "routing", "round_trip", "imports_memory")
DEFAULT_JSON: Final = HERE / "results" / "all.json"
TAIL_LINES: Final = 60


@dataclass
class Script:
    name: str
    path: Path
    quick: bool  # its source defines --quick


@dataclass
class Outcome:
    name: str
    command: list[str]
    status: str  # "ok", "failed", "timeout", "no json"
    returncode: int | None
    duration_s: float
    result: Any = None
    output_tail: list[str] = field(default_factory=list)


def discover() -> tuple[list[Script], list[str]]:
    """The benchmark scripts in run order, and the ``.py`` files passed over (with why)."""
    found: dict[str, Script] = {}
    passed_over = []
    for path in sorted(HERE.glob("*.py")):
        name = path.stem
        if path.resolve() == Path(__file__).resolve() or name.startswith("_"):
            continue
        source = path.read_text(encoding="utf-8")
        if '"--json"' not in source:
            passed_over.append(f"{path.name} (no --json option)")
            continue
        found[name] = Script(name, path, quick='"--quick"' in source)
    ordered = [found.pop(name) for name in ORDER if name in found]
    return ordered + [found[name] for name in sorted(found)], passed_over


def machine() -> dict[str, Any]:
    return _common.machine(executable=sys.executable, commit=_common.git_commit())


def stop_group(process: subprocess.Popen[str]) -> None:
    """Stop the script and whatever it started (its own process group: start_new_session)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)


def run_script(script: Script, out_dir: Path, *, quick: bool, timeout: float) -> Outcome:
    report = out_dir / f"{script.name}.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-u", str(script.path.relative_to(ROOT)), "--json", str(report)]
    if quick and script.quick:
        command.append("--quick")
    print(f"\n=== {script.name}: {' '.join(command[1:])}", flush=True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, so a timeout stops its children too
    )
    finished, timed_out = threading.Event(), threading.Event()

    def watchdog() -> None:
        if not finished.wait(timeout):
            timed_out.set()
            stop_group(process)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
        returncode = process.wait()
    except BaseException:  # Ctrl-C: stop the script's whole group before leaving
        stop_group(process)
        raise
    finally:
        finished.set()
    duration = time.perf_counter() - started
    result = None
    if report.exists():
        try:
            result = json.loads(report.read_text(encoding="utf-8"))
        except ValueError:
            result = None
    if timed_out.is_set():
        status = "timeout"
    elif returncode != 0:
        status = "failed"
    elif result is None:
        status = "no json"
    else:
        status = "ok"
    print(f"=== {script.name}: {status} (exit {returncode}) in {duration:.1f} s", flush=True)
    return Outcome(
        name=script.name,
        command=command,
        status=status,
        returncode=returncode,
        duration_s=duration,
        result=result,
        output_tail=[] if status == "ok" else list(tail),
    )


def summary_table(outcomes: Sequence[Outcome], total_s: float) -> str:
    header = f"{'benchmark':<24} {'status':<8} {'exit':>5} {'seconds':>9}"
    lines = [header, "-" * len(header)]
    lines += [
        f"{o.name:<24} {o.status:<8} {'' if o.returncode is None else o.returncode:>5} {o.duration_s:>9.1f}"
        for o in outcomes
    ]
    lines.append(f"{'total':<24} {'':<8} {'':>5} {total_s:>9.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="pass --quick to the scripts that support it")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this script (repeatable)"
    )
    parser.add_argument("--skip", action="append", default=[], metavar="NAME", help="skip this script")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each script's JSON here (default: a temp dir)",
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, metavar="PATH", help="combined JSON (results/all.json)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per script before it is stopped (1800)"
    )
    parser.add_argument("--list", action="store_true", help="list the scripts that would run, and stop")
    args = parser.parse_args(argv)
    scripts, passed_over = discover()
    names = {script.name for script in scripts}
    unknown = sorted(set(args.only + args.skip) - names)
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {sorted(names)}")
    if args.only:
        scripts = [script for script in scripts if script.name in args.only]
    scripts = [script for script in scripts if script.name not in args.skip]
    if args.list or not scripts:
        for script in scripts:
            print(f"{script.name:<24} {script.path.name}{'  (--quick)' if script.quick else ''}")
        for note in passed_over:
            print(f"passed over: {note}")
        return 0 if scripts or args.list else 1

    info = machine()
    print(
        f"{len(scripts)} benchmarks: {', '.join(s.name for s in scripts)}; {info['nproc']} CPU "
        f"({info['cpu']}), Python {info['python']}{'; quick' if args.quick else ''}",
        flush=True,
    )
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.out is None:
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="benchmarks-")))
        else:
            out_dir = args.out.resolve()
            out_dir.mkdir(parents=True, exist_ok=True)
        outcomes = [run_script(s, out_dir, quick=args.quick, timeout=args.timeout) for s in scripts]
    total = time.perf_counter() - started
    failed = [o.name for o in outcomes if o.status != "ok"]
    combined = {
        "benchmark": "all",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": total,
        "quick": args.quick,
        "machine": info,
        "failed": failed,
        "scripts": [asdict(o) for o in outcomes],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(combined, indent=2) + "\n")
    print()
    print(summary_table(outcomes, total))
    print(f"wrote {args.json}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
