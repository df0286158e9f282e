#!/usr/bin/env python3
"""The jobcore benchmark (issue 6): `python bench/run.py [--quick]`.

Builds its own venv at bench/.venv with the peers (Huey, persist-queue, litequeue; never
project dependencies), re-runs itself inside it, then measures every engine in one run,
interleaved, each measurement in a fresh child process and temporary directory, and
reports medians: a markdown table with ratios on stdout, JSON in bench/results/latest.json,
progress on stderr. It asserts nothing; `targets` says met or not met.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

from environment import (BENCH, CODE_ENV, ROOT, bootstrap, code_digest, log, loadavg, machine, peer_status,
                         snapshot_jobcore)

RESULTS = os.path.join(BENCH, "results")
MARK = "BENCH-RESULT "

FULL = dict(n=20_000, reps=3, roundtrip_n=2_000, fanin_n=100_000, chain_n=2_000, kinds_n=10_000, pickup=500, pickup_polling=100, pickup_budget=60.0, priority_n=5_000,
            deep=200_000, deep_drain=20_000, depths=[10_000, 100_000, 1_000_000], depth_ops=2_000,
            depth_reps=3, procs_n=20_000, isolation_n=1_000, drain_budget=30.0, timeout=600.0)
QUICK = dict(n=3_000, reps=1, roundtrip_n=500, fanin_n=20_000, chain_n=500, kinds_n=2_000, pickup=100, pickup_polling=30, pickup_budget=15.0, priority_n=2_000,
             deep=200_000, deep_drain=3_000, depths=[10_000, 100_000], depth_ops=1_000,
             depth_reps=1, procs_n=5_000, isolation_n=300, drain_budget=15.0, timeout=180.0)

JOBCORE = ["jobcore-sqlite", "jobcore-sqlite-full", "jobcore-memory"]
if os.environ.get("JOBCORE_BENCH_PG_DSN"):  # (engines.PG_DSN_ENV) the opt-in PostgreSQL engine
    JOBCORE.append("jobcore-postgres")
PEERS = ["huey", "persist-queue", "litequeue"]
FLOORS = ["raw-normal", "raw-full", "raw-batch", "heap"]
SCENARIO_ENGINES = {
    "e2e": JOBCORE + PEERS + FLOORS,
    "bulk": JOBCORE + ["litequeue", "raw-batch", "heap"],
    "concurrent": JOBCORE + PEERS + FLOORS,
    "producers": JOBCORE + ["huey", "raw-normal", "raw-full", "heap"],
    "waited": JOBCORE,
    "polled": JOBCORE,
    "roundtrip": JOBCORE,
    "fanin": JOBCORE,
    "chain": JOBCORE,
    "kinds": JOBCORE,
    "priority": JOBCORE + ["huey", "raw-normal", "heap"],
    "pickup": JOBCORE + PEERS + ["raw-normal", "heap"],
    "pickup-b2b": JOBCORE + PEERS + ["raw-normal", "heap"],
    "deep": ["jobcore-sqlite", "jobcore-memory", "litequeue", "raw-normal", "heap"],
}
# Every scenario `--only` takes: the timed ones above, then those run once each.
SCENARIOS = (*SCENARIO_ENGINES, "depth", "procs", "isolation")
# Every engine `--engines` and `--profile` take (the opt-in PostgreSQL one needs its server).
ENGINE_KEYS = tuple(dict.fromkeys((*JOBCORE, "jobcore-postgres", *PEERS, *FLOORS)))
PRODUCERS = 4        # threads enqueueing at once in the "producers" figure
POLLING = {"huey"}   # idle workers poll: fewer pickup samples, each takes ~0.1 s


# -- children -----------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """Run one measurement in this (fresh) process and print its JSON."""
    sys.path[:0] = [BENCH, os.environ.get(CODE_ENV) or ROOT]
    # A thread of an engine's that dies (a peer's worker on "database is locked") fails the
    # measurement: its figure, made by the threads left, is no figure of the engine.
    died: list[str] = []
    threading.excepthook = lambda hook: died.append(f"{hook.thread.name if hook.thread else '?'}:"
                                                    f" {hook.exc_type.__name__}: {hook.exc_value}")
    try:
        result = _child_result(args)
        if died and result is not None:
            result = {"error": f"a thread died: {died[0]}"}
    except NotImplementedError as exc:
        result = {"error": f"n/a: {exc}"}
    except ImportError as exc:
        result = {"error": f"not installed: {exc}"}
    except Exception as exc:  # report, never crash the run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    if result is not None:
        print(MARK + json.dumps(result), flush=True)


def _child_result(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    import depth
    import harness
    if args.child == "procs-worker":
        depth.procs_worker(args.db, args.workers)
        return None
    if args.child == "depth-fill":
        return depth.depth_fill(args.db, args.depth)
    if args.child == "depth-measure":
        return depth.depth_measure(args.db, args.ops, args.timeout)
    if args.child == "depth-memory":
        return depth.depth_memory(args.depth, args.ops, args.timeout)
    if args.child == "isolation":
        return depth.isolation(args.n, args.timeout)
    if args.child == "procs":
        return depth.procs(args.db, args.n, args.procs, args.timeout, os.path.abspath(__file__))
    from engines import ENGINES
    engine = ENGINES[args.engine][0]()
    workdir = args.workdir
    if args.child == "e2e":
        if args.profile:
            return _profiled(lambda: harness.e2e(engine, workdir, args.n, args.timeout), args)
        return harness.e2e(engine, workdir, args.n, args.budget)
    if args.child == "waited":
        return harness.waited(engine, workdir, args.n, args.budget)
    if args.child == "polled":
        return harness.polled(engine, workdir, args.n, args.budget)
    if args.child == "roundtrip":
        return harness.roundtrip(engine, workdir, args.n, args.budget)
    if args.child == "fanin":
        return harness.fanin(engine, workdir, args.n, args.budget)
    if args.child == "chain":
        return harness.chain(engine, workdir, args.n, args.budget)
    if args.child == "kinds":
        return harness.kinds(engine, workdir, args.n, args.budget)
    if args.child == "bulk":
        return harness.bulk(engine, workdir, args.n, args.timeout)
    if args.child == "producers":
        return harness.producers(engine, workdir, args.n, PRODUCERS)
    if args.child == "concurrent":
        return harness.concurrent(engine, workdir, args.n, args.budget)
    if args.child == "priority":
        return harness.priority(engine, workdir, args.n, args.timeout)
    if args.child in ("pickup", "pickup-b2b"):
        return harness.pickup(engine, workdir, args.n, args.timeout, args.budget, pause=args.child == "pickup")
    if args.child == "deep":
        return harness.deep(engine, workdir, args.depth, args.drain, args.timeout)
    raise ValueError(f"unknown child {args.child!r}")


def _profiled(run: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Run under cProfile in every thread (workers included); print the top functions."""
    import cProfile
    import pstats
    import threading
    profiles = [cProfile.Profile()]

    def in_new_thread(*_: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
    threading.setprofile(in_new_thread)
    profiles[0].enable()
    try:
        result = run()
    finally:
        profiles[0].disable()
        threading.setprofile(None)   # type: ignore[arg-type]
    stats = pstats.Stats(profiles[0], stream=sys.stderr)
    for profile in profiles[1:]:
        stats.add(profile)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"profile-{args.engine}.prof")
    stats.dump_stats(path)
    log(f"profile of {args.engine}, {args.n} jobs, all threads (saved to {path}):")
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    return result


# -- the orchestrator -------------------------------------------------------------------------------
class Runner:
    """Runs child measurements with a time limit and collects their results."""

    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], code: str) -> None:
        self.args = args
        self.cfg = cfg
        self.code = code   # the snapshot of jobcore/ every child imports
        self.count = 0
        self.started = time.monotonic()

    def measure(self, name: str, engine: str = "", timeout: Optional[float] = None, **params: Any) -> dict[str, Any]:
        timeout = timeout or self.cfg["timeout"]
        workdir = tempfile.mkdtemp(prefix="jobcore-bench-", dir=self.args.tmpdir)
        command = [sys.executable, os.path.abspath(__file__), "--child", name, "--workdir", workdir,
                   "--timeout", str(timeout)]
        if engine:
            command += ["--engine", engine]
        for key, value in params.items():
            command += [f"--{key}", str(value)]
        self.count += 1
        label = f"{name} {engine} " + " ".join(f"{k}={v}" for k, v in params.items() if k != "db")
        log(f"[{self.count:3d} {time.monotonic() - self.started:6.0f}s] {label.strip()} ...")
        env = dict(os.environ)
        env[CODE_ENV] = self.code
        t0 = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 60, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
            if lines:
                result = json.loads(lines[-1][len(MARK):])
            else:
                tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                result = {"error": f"child failed: {tail}"}
        except subprocess.TimeoutExpired:
            result = {"error": f"timed out after {timeout + 60:.0f}s"}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if "error" in result:
            log(f"      -> {result['error']}")
        else:
            shown = {k: v for k, v in result.items() if isinstance(v, (int, float))}
            log(f"      -> {time.monotonic() - t0:.1f}s " + ", ".join(f"{k}={v:,.4g}" for k, v in shown.items()))
        return result


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [run for run in runs if "error" not in run]
    summary: dict[str, Any] = {"runs": runs}
    if not good:
        summary["error"] = runs[0]["error"] if runs else "not run"
        return summary
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summary[key] = statistics.median(run[key] for run in good if key in run)
        elif key == "settings":
            summary[key] = value
    partial = [run["partial"] for run in good if "partial" in run]
    if partial:
        summary["partial"] = partial
    return summary


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": ordered[-1],
            "mean_ms": statistics.fmean(ordered), "samples": len(ordered)}


def _wanted(args: argparse.Namespace, scenario: str) -> bool:
    return not args.only or scenario in args.only.split(",")


def _engines(args: argparse.Namespace, scenario: str) -> list[str]:
    engines = SCENARIO_ENGINES[scenario]
    if args.engines:
        engines = [e for e in engines if e in args.engines.split(",")]
    return engines


def _check_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop with a usage error (exit status 2) on a scenario or engine the script does not
    know, before anything is built or measured: a misspelt name would otherwise select
    nothing and overwrite the saved results with an empty run."""
    given = {"--only": (args.only or "").split(","), "--engines": (args.engines or "").split(","),
             "--profile": [args.profile or ""]}
    for option, names in given.items():
        known = SCENARIOS if option == "--only" else ENGINE_KEYS
        unknown = [name for name in names if name and name not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    if "jobcore-postgres" in given["--engines"] + given["--profile"] and "jobcore-postgres" not in JOBCORE:
        parser.error("jobcore-postgres runs only with a server: set $JOBCORE_BENCH_PG_DSN to its DSN")


def run_all(args: argparse.Namespace, cfg: dict[str, Any], code: str) -> dict[str, Any]:
    runner = Runner(args, cfg, code)
    reps, n = cfg["reps"], cfg["n"]
    results: dict[str, Any] = {}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    pickups = ("pickup", "pickup-b2b")
    samples: dict[tuple[str, str], list[float]] = {}  # by (scenario, engine)
    missed: dict[tuple[str, str], int] = {}
    pickup_errors: dict[tuple[str, str], str] = {}

    # Interleaved: every repetition runs every engine once, in an order rotated per rep.
    timed = [s for s in ("e2e", "bulk", "producers", "concurrent", "waited", "polled", "roundtrip", "fanin", "chain",
                         "kinds", "priority",
                         *pickups)
             if _wanted(args, s)]
    for rep in range(reps):
        for scenario in timed:
            engines = _engines(args, scenario)
            shift = rep % max(1, len(engines))
            for engine in engines[shift:] + engines[:shift]:
                if scenario in pickups:
                    total = cfg["pickup_polling"] if engine in POLLING else cfg["pickup"]
                    result = runner.measure(scenario, engine, n=max(1, total // reps),
                                            budget=cfg["pickup_budget"] / reps)
                    key = (scenario, engine)
                    if "error" in result:
                        pickup_errors[key] = result["error"]
                    else:
                        samples.setdefault(key, []).extend(result["latencies_ms"])
                        missed[key] = missed.get(key, 0) + result["missed"]
                    continue
                sizes = {"priority": cfg["priority_n"], "roundtrip": cfg["roundtrip_n"], "fanin": cfg["fanin_n"],
                         "chain": cfg["chain_n"], "kinds": cfg["kinds_n"]}
                params: dict[str, Any] = {"n": sizes.get(scenario, n)}
                if scenario in ("e2e", "concurrent", "waited", "polled", "roundtrip", "fanin", "chain", "kinds"):
                    # (a fan-in drains fanin_n jobs: five times the others' at full size)
                    params["budget"] = cfg["drain_budget"] * (4 if scenario == "fanin" else 1)
                raw.setdefault(scenario, {}).setdefault(engine, []).append(
                    runner.measure(scenario, engine, **params))
    for scenario, by_engine in raw.items():
        results[scenario] = {engine: _median_of(runs) for engine, runs in by_engine.items()}
    for scenario in (s for s in pickups if s in timed):
        results[scenario] = {}
        for engine in _engines(args, scenario):
            key = (scenario, engine)
            if key in samples:
                results[scenario][engine] = {**_percentiles(samples[key]), "missed": missed.get(key, 0)}
            else:
                results[scenario][engine] = {"error": pickup_errors.get(key, "not run")}

    if _wanted(args, "deep"):  # as the timed ones: every repetition, engines interleaved, medians
        deep_runs: dict[str, list[dict[str, Any]]] = {}
        engines = _engines(args, "deep")
        for rep in range(reps):
            shift = rep % max(1, len(engines))
            for engine in engines[shift:] + engines[:shift]:
                deep_runs.setdefault(engine, []).append(
                    runner.measure("deep", engine, depth=cfg["deep"], drain=cfg["deep_drain"]))
        results["deep"] = {"depth": cfg["deep"], "drain": cfg["deep_drain"],
                           **{engine: _median_of(deep_runs[engine]) for engine in engines}}

    if _wanted(args, "depth") and (not args.engines or "jobcore-sqlite" in args.engines.split(",")):
        results["depth"] = run_depth(runner, args, cfg)
    if _wanted(args, "depth") and (not args.engines or "jobcore-memory" in args.engines.split(",")):
        results["depth_memory"] = run_depth_memory(runner, cfg)

    if _wanted(args, "procs") and (not args.engines or "jobcore-sqlite" in args.engines.split(",")):
        by_count: dict[int, list[dict[str, Any]]] = {1: [], 4: []}
        for rep in range(reps):
            for processes in ((1, 4) if rep % 2 == 0 else (4, 1)):
                workdir = tempfile.mkdtemp(prefix="jobcore-bench-procs-", dir=args.tmpdir)
                try:
                    by_count[processes].append(runner.measure(
                        "procs", procs=processes, n=cfg["procs_n"], db=os.path.join(workdir, "jobs.db")))
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
        results["procs"] = {str(count): _median_of(runs) for count, runs in by_count.items()}

    if _wanted(args, "isolation") and (not args.engines or "jobcore-memory" in args.engines.split(",")):
        results["isolation"] = _median_of([runner.measure("isolation", n=cfg["isolation_n"])
                                           for _ in range(reps)])
    return results


def run_depth(runner: Runner, args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill a file to each depth once, then time enqueues and claims on it `depth_reps`
    times (each pass adds and drains `depth_ops` jobs: a negligible change of depth)."""
    out: dict[str, Any] = {"ops": cfg["depth_ops"]}
    for depth_size in cfg["depths"]:
        workdir = tempfile.mkdtemp(prefix="jobcore-bench-depth-", dir=args.tmpdir)
        db = os.path.join(workdir, "jobs.db")
        try:
            fill = runner.measure("depth-fill", depth=depth_size, db=db, timeout=max(cfg["timeout"], 1800.0))
            if "error" in fill:
                out[str(depth_size)] = {"error": fill["error"]}
                continue
            runs = [runner.measure("depth-measure", ops=cfg["depth_ops"], db=db) for _ in range(cfg["depth_reps"])]
            out[str(depth_size)] = {**fill, **{k: v for k, v in _median_of(runs).items()}}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def run_depth_memory(runner: Runner, cfg: dict[str, Any]) -> dict[str, Any]:
    """The depth figures on a memory repository: each repetition fills a fresh process."""
    out: dict[str, Any] = {"ops": cfg["depth_ops"]}
    for depth_size in cfg["depths"]:
        runs = [runner.measure("depth-memory", depth=depth_size, ops=cfg["depth_ops"],
                               timeout=max(cfg["timeout"], 1800.0)) for _ in range(cfg["depth_reps"])]
        out[str(depth_size)] = _median_of(runs)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (~3 min)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--n", type=int, help="jobs per throughput figure (default 20,000)")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--engines", help="comma-separated engine keys (see bench/README.md)")
    parser.add_argument("--no-venv", action="store_true", help="do not build or use bench/.venv (peers n/a)")
    parser.add_argument("--profile", metavar="ENGINE", help="run the end-to-end figure once under cProfile and exit")
    parser.add_argument("--tmpdir", help="where the temporary databases go (default: the system's)")
    parser.add_argument("--output", default=os.path.join(RESULTS, "latest.json"))
    parser.add_argument("--render", metavar="JSON", help="print the report of a saved run and exit")
    # child mode (internal)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for name, kind in (("engine", str), ("workdir", str), ("timeout", float), ("budget", float), ("depth", int),
                       ("drain", int), ("db", str), ("ops", int), ("procs", int), ("workers", int)):
        parser.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child:
        _check_names(parser, args)
    if args.child:
        args.profile = bool(args.profile)
        child(args)
        return 0
    if args.render:
        sys.path[:0] = [BENCH]
        import report
        with open(args.render) as f:
            saved = json.load(f)
        print(report.render(saved["results"], report.targets(saved["results"], saved["meta"]["config"]),
                            saved["meta"]))
        return 0
    if not args.no_venv:
        bootstrap(__file__)
    cfg = dict(QUICK if args.quick else FULL)
    if args.reps:
        cfg["reps"] = args.reps
    if args.n:
        cfg["n"] = args.n
    if args.profile:
        workdir = tempfile.mkdtemp(prefix="jobcore-bench-", dir=args.tmpdir)
        try:
            command = [sys.executable, os.path.abspath(__file__), "--child", "e2e", "--engine", args.profile,
                       "--n", str(cfg["n"]), "--workdir", workdir, "--timeout", str(cfg["timeout"]), "--profile", "1"]
            return subprocess.run(command).returncode
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    sys.path[:0] = [BENCH]
    import report
    started = time.time()
    meta = {"command": "python bench/run.py" + (" --quick" if args.quick else ""), "config": cfg,
            "machine": machine(), "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "peers": peer_status()}
    log(f"jobcore benchmark: {'quick' if args.quick else 'full'} run, {cfg['reps']} repetition(s), "
        f"{cfg['n']:,} jobs per throughput figure; python {sys.executable}")
    meta["loadavg_before"] = loadavg()
    code = snapshot_jobcore()
    meta["jobcore_digest"] = code_digest(code)
    try:
        results = run_all(args, cfg, code)
    finally:
        shutil.rmtree(code, ignore_errors=True)
    meta["seconds"] = round(time.time() - started, 1)
    meta["loadavg_after"] = loadavg()
    targets = report.targets(results, cfg)
    text = report.render(results, targets, meta)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"meta": meta, "results": results, "targets": targets}, f, indent=1, default=str)
    log(f"done in {meta['seconds']:.0f}s; JSON in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
