"""Turns the benchmark's results into the markdown tables and the targets verdict.

Pure functions of the results dict that `run.py` builds; no measuring here.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional

from engines import ENGINES, PER_JOB
from harness import KINDS

# The floor each engine's end-to-end figure is compared with: the raw SQL at the same
# synchronous level, or the heap for the in-memory store.
FLOOR_FOR = {"jobcore-sqlite": "raw-normal", "jobcore-sqlite-full": "raw-full", "jobcore-memory": "heap",
             "huey": "raw-full", "persist-queue": "raw-full", "litequeue": "raw-normal"}


def _label(engine: str) -> str:
    return ENGINES[engine][2] if engine in ENGINES else engine


def _get(results: dict[str, Any], scenario: str, engine: str, metric: str) -> Optional[float]:
    value = results.get(scenario, {}).get(engine, {}).get(metric)
    return value if isinstance(value, (int, float)) and not math.isnan(value) else None


def _rate(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or not b:
        return "—"
    return f"{a / b:.2f}×"


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:,.1f}"


def _why(results: dict[str, Any], scenario: str, engine: str) -> Optional[str]:
    entry = results.get(scenario, {}).get(engine, {})
    return entry.get("error") if isinstance(entry, dict) else None


def _beside_e2e(results: dict[str, Any], scenario: str, metric: str,
                notes: dict[str, str]) -> Iterator[tuple[dict[str, Any], str]]:
    """For each engine of `scenario`: its entry, and the start of its table row: the
    end-to-end scenario's `metric`, this scenario's, and the second over the first (an
    error goes to `notes`)."""
    for engine, entry in results[scenario].items():
        base, value = _get(results, "e2e", engine, metric), entry.get(metric)
        if "error" in entry:
            notes.setdefault(engine, f"{scenario}: {entry['error']}")
        yield entry, f"| {_label(engine)} | {_rate(base)} | {_rate(value)} | {_ratio(value, base)} |"


def _engine_table(out: list[str], notes: dict[str, str], entries: dict[str, Any], headers: list[str],
                  cells: Callable[[dict[str, Any]], list[str]]) -> None:
    """A table of one row per engine: its `cells(entry)` under `headers`, or n/a (the
    error noted) for an engine whose measurement failed; then a blank line."""
    out.append("| engine | " + " | ".join(headers) + " |")
    out.append("| --- |" + " ---: |" * len(headers))
    for engine, entry in entries.items():
        if "error" in entry:
            notes.setdefault(engine, entry["error"])
            row = ["n/a"] * len(headers)
        else:
            row = cells(entry)
        out.append(f"| {_label(engine)} | " + " | ".join(row) + " |")
    out.append("")


def render(results: dict[str, Any], targets: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cfg = meta["config"]
    out: list[str] = []
    m = meta["machine"]
    out.append(f"# jobcore benchmark ({'quick' if 'quick' in meta['command'] else 'full'} run)\n")
    out.append(f"`{meta['command']}` on {m['nproc']} cores ({m['cpu']}), {m['memory']}, Python {m['python']},"
               f" SQLite {m['sqlite']}, jobcore {m.get('jobcore', '?')} (sources {meta.get('jobcore_digest', '?')});"
               f" {cfg['reps']} repetition(s), medians;"
               f" {meta.get('seconds', 0):.0f}s; load average {meta.get('loadavg_before', '?')} before,"
               f" {meta.get('loadavg_after', '?')} after.\n")
    notes: dict[str, str] = {}
    partials: list[str] = []

    throughput = [e for e in ENGINES if any(e in results.get(s, {}) for s in ("e2e", "bulk", "concurrent"))]
    if throughput:
        n = cfg["n"]
        out.append(f"## Throughput: {n:,} no-op jobs, 4 worker threads (jobs/s)\n")
        out.append("enqueue = one call per job; enqueue_many = batches of 500; drain = start the workers"
                   " on the full queue until every completion is recorded; end-to-end = enqueue + drain;"
                   " concurrent = workers running while one producer enqueues.\n")
        out.append("| engine | enqueue | enqueue_many | drain | end-to-end | e2e × Huey | e2e × floor |"
                   " concurrent | concurrent ÷ e2e |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        huey = _get(results, "e2e", "huey", "e2e_per_s")
        for engine in throughput:
            e2e = _get(results, "e2e", engine, "e2e_per_s")
            for scenario in ("e2e", "concurrent", "bulk"):
                why = _why(results, scenario, engine)
                if why and not why.startswith("n/a"):
                    notes.setdefault(engine, f"{scenario}: {why}")
                partial = results.get(scenario, {}).get(engine, {}).get("partial")
                if partial:
                    done = " / ".join(f"{p['done']:,}" for p in partial)
                    partials.append(f"- {_label(engine)}, {scenario}: {done} of {partial[0]['of']:,} jobs done"
                                    f" when the {partial[0]['budget']:.0f} s drain budget ran out"
                                    f" ({len(partial)} of the repetitions)")
            floor = FLOOR_FOR.get(engine)
            floor_ratio = _ratio(e2e, _get(results, "e2e", floor, "e2e_per_s")) if floor else "—"
            floor_text = floor_ratio if floor_ratio == "—" else f"{floor_ratio} {floor}"
            bulk = _get(results, "bulk", engine, "enqueue_many_per_s")
            conc = _get(results, "concurrent", engine, "concurrent_per_s")
            mark = lambda scenario: "†" if results.get(scenario, {}).get(engine, {}).get("partial") else ""  # noqa: E731
            out.append(f"| {_label(engine)} | {_rate(_get(results, 'e2e', engine, 'enqueue_per_s'))} |"
                       f" {_rate(bulk) if bulk else '—'} | {_rate(_get(results, 'e2e', engine, 'drain_per_s'))}{mark('e2e')} |"
                       f" **{_rate(e2e)}**{mark('e2e')} | {_ratio(e2e, huey)} | {floor_text} | {_rate(conc)}{mark('concurrent')} |"
                       f" {_ratio(conc, e2e)} |")
        out.append("")
        if partials:
            out.append("† partial: the drain did not finish within its time budget; the rate is the jobs done"
                       " over the time spent, at the depth the queue had then.\n")
            out.extend(partials)
            out.append("")

    for scenario, how in (("waited", "calls `wait` on every id in turn"),
                          ("polled", "polls every id in turn until it is done, without pausing")):
        if scenario not in results:
            continue
        call = "wait" if scenario == "waited" else "poll"
        out.append(f"## Completion seen through `{call}` on every job id (jobs/s)\n")
        out.append(f"drain = as above (jobcore: job bodies counted, then `wait` on each worker thread's"
                   f" last job); {scenario} = the caller, after enqueueing, {how},"
                   f" as an application using only the public API would; end-to-end = enqueue + that drain.\n")
        out.append(f"| engine | drain | drain, {scenario} | {scenario} ÷ drain | end-to-end, {scenario} |")
        out.append("| --- | ---: | ---: | ---: | ---: |")
        for entry, row in _beside_e2e(results, scenario, "drain_per_s", notes):
            out.append(f"{row} {_rate(entry.get('e2e_per_s'))} |")
        out.append("")

    if "roundtrip" in results:
        out.append("## Round trip: `enqueue`, then `wait` for that job, one job at a time\n")
        out.append("The workers started and idle; each turn from the enqueue call's start to `wait` returning"
                   " (the caller needs each result before it goes on).\n")
        _engine_table(out, notes, results["roundtrip"], ["turns/s", "p50 ms", "p99 ms"], lambda entry: [
            _rate(entry.get("roundtrip_per_s")), _ms(entry.get("p50_ms")), _ms(entry.get("p99_ms"))])

    if "fanin" in results:
        size = cfg.get("fanin_n", 0)
        out.append(f"## Fan-in: {size:,} jobs and one job depending on all of them\n")
        out.append(f"{size:,} jobs enqueued in batches of 500 and drained (alone); then, in a fresh store, the same"
                   " jobs and one more whose `depends_on` names them all, drained until that one completed"
                   " (a reduce step after a map). Rates count the first jobs only.\n")
        _engine_table(out, notes, results["fanin"], ["drain alone", "drain with the fan-in", "with ÷ alone"],
                      lambda entry: [_rate(entry.get("drain_per_s")), _rate(entry.get("fanin_drain_per_s")),
                                     _ratio(entry.get("fanin_drain_per_s"), entry.get("drain_per_s"))])

    if "chain" in results:
        size = cfg.get("chain_n", 0)
        out.append(f"## A chain of {size:,} jobs, each depending on the one before (links/s)\n")
        out.append("Enqueued in batches of 500 before the workers start, drained until the last completed: no two"
                   " of its jobs can run at once, so each link is an outcome recorded, a dependent released and"
                   " claimed, and a job started.\n")
        _engine_table(out, notes, results["chain"], ["links/s"], lambda entry: [_rate(entry.get("links_per_s"))])

    if "kinds" in results:
        out.append(f"## Jobs that carry more than a call: {cfg.get('kinds_n', 0):,} jobs of each kind (jobs/s)\n")
        out.append("Each kind in a fresh store: enqueued one call each, then drained. async: a coroutine"
                   " function; timeout: `timeout=60`; progress: one `current_job().progress(...)` call;"
                   " logging: one `current_job().log(...)` call; keyed: a `unique_key` of its own; failing: raises, `max_retries=0` (its traceback"
                   " formatted and stored, the job failed for good). Cells: enqueue / drain.\n")
        _engine_table(out, notes, results["kinds"], list(KINDS), lambda entry: [
            f"{_rate(entry.get(f'{kind}_enqueue_per_s'))} / {_rate(entry.get(f'{kind}_drain_per_s'))}"
            + ("†" if any(f"{kind}_partial" in run for run in entry.get("runs", [entry])) else "")
            for kind in KINDS])
        out.append("† partial: that kind's drain did not finish within its time budget (jobs done over"
                   " the time spent).\n" if any(f"{kind}_partial" in run for entry in results["kinds"].values()
                                                 if isinstance(entry, dict) for run in entry.get("runs", [entry])
                                                 for kind in KINDS) else "")

    if "producers" in results:
        threads = next((int(e["threads"]) for e in results["producers"].values() if "threads" in e), 0)
        out.append(f"## Enqueue from {threads} producer threads at once (jobs/s)\n")
        out.append(f"{threads} threads share the {cfg['n']:,} jobs, one `enqueue` call per job,"
                   " the workers not started; one producer = the enqueue column of the throughput table."
                   " jobcore's concurrent callers share a transaction and its commit with"
                   " durability \"full\" (group commit), and take turns with \"normal\";"
                   " each raw floor INSERT is its own; the heap floor shows what threads taking"
                   " turns at Python's locks and GIL cost by themselves.\n")
        out.append(f"| engine | one producer | {threads} producers | × one producer |")
        out.append("| --- | ---: | ---: | ---: |")
        out.extend(row for _, row in _beside_e2e(results, "producers", "enqueue_per_s", notes))
        out.append("")

    for scenario, title in (("pickup", "Pickup latency with idle workers (ms, enqueue call start → job body"
                                         " starts; 2-8 ms between samples)"),
                            ("pickup-b2b", "Pickup latency back to back (ms, as above; the next enqueue as soon as"
                                           " the job's body started)")):
        if scenario not in results:
            continue
        out.append(f"## {title}\n")
        out.append("| engine | p50 | p95 | p99 | max | samples | p50 × Huey |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        huey50 = results[scenario].get("huey", {}).get("p50_ms")
        for engine, entry in results[scenario].items():
            if "error" in entry:
                notes.setdefault(engine, entry["error"])
                out.append(f"| {_label(engine)} | n/a | n/a | n/a | n/a | 0 | — |")
                continue
            missed = f" (+{entry['missed']} missed)" if entry.get("missed") else ""
            out.append(f"| {_label(engine)} | {_ms(entry.get('p50_ms'))} | {_ms(entry.get('p95_ms'))} |"
                       f" {_ms(entry.get('p99_ms'))} | {_ms(entry.get('max_ms'))} | {entry.get('samples', 0)}{missed} |"
                       f" {_ratio(entry.get('p50_ms'), huey50)} |")
        out.append("")

    if "priority" in results:
        out.append(f"## Priority order under load: {cfg['priority_n']:,} jobs, priorities 0-9 at random,"
                   " queued before 4 workers start\n")
        out.append("Fractions of jobs; \"late\" = started after a lower-priority job that had started more than"
                   " 8 places (2 × workers) earlier; FIFO break = overtaken by an equal-priority job queued more"
                   " than 8 equals later.\n")
        out.append("| engine | drain jobs/s | adjacent inversions | late beyond 8 | FIFO breaks beyond 8 |")
        out.append("| --- | ---: | ---: | ---: | ---: |")
        for engine, entry in results["priority"].items():
            if "error" in entry:
                out.append(f"| {_label(engine)} | n/a | n/a | n/a | n/a |")
                continue
            out.append(f"| {_label(engine)} | {_rate(entry.get('drain_per_s'))} |"
                       f" {entry['adjacent_inversions']:.4f} | {entry['late_beyond_window']:.4f} |"
                       f" {entry['fifo_breaks_beyond_window']:.4f} |")
        out.append("")

    if "deep" in results:
        deep = results["deep"]
        out.append(f"## {deep['depth']:,} queued jobs: memory, and the drain rate at that depth\n")
        out.append("The queue is filled through the batch API, the workers start, and the first jobs are"
                   f" drained (up to {deep['drain']:,}) while the rest stay queued. RSS is the whole process"
                   " (interpreter included), read from /proc/self/status.\n")
        out.append("| engine | fill jobs/s | RSS queued, before start (MB) | RSS started (MB) | peak RSS (MB) |"
                   " drained | drain jobs/s deep | × its shallow drain |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for engine, entry in deep.items():
            if not isinstance(entry, dict):
                continue
            if "error" in entry:
                notes.setdefault(engine, entry["error"])
                out.append(f"| {_label(engine)} | n/a | n/a | n/a | n/a | n/a | n/a | — |")
                continue
            shallow = _get(results, "e2e", engine, "drain_per_s")
            out.append(f"| {_label(engine)} | {_rate(entry['fill_per_s'])} | {entry['rss_queued_mb']:.0f} |"
                       f" {entry['rss_mb']:.0f} | {entry['hwm_mb']:.0f} | {int(entry['drained']):,} |"
                       f" {_rate(entry['deep_drain_per_s'])} | {_ratio(entry['deep_drain_per_s'], shallow)} |")
        out.append("")

    depth_sweeps = (
        ("depth", "jobcore SQLite (normal)",
         "enqueue = one `enqueue` call on a file already that deep; claim = wall time per job for"
         " 4 workers running the first jobs to completion (claim + run + complete); start = `start()`"
         " on that file; RSS filled = the process that enqueued them all (a manager not started:"
         " on a file it keeps nothing per job); RSS started = a fresh process started on the file.", "RSS filled (MB)", "RSS started (MB)"),
        ("depth_memory", "jobcore memory",
         "As above, in one process (a memory store has no file to start another on), filled afresh"
         " for each repetition; RSS queued = after filling, RSS run = after the claims. The"
         " store keeps every job whole, arguments included.", "RSS queued (MB)", "RSS run (MB)"))
    for key, engine, note, filled, started in depth_sweeps:
        if key in results:
            depth = results[key]
            out.append(f"## {engine} against queue depth: {depth['ops']:,} enqueues and"
                       f" {depth['ops']:,} claims at each depth\n")
            out.append(note + "\n")
            _depth_table(out, depth, filled, started)

    if "procs" in results:
        out.append(f"## Worker processes on one SQLite file: {cfg['procs_n']:,} queued jobs, 4 threads per process\n")
        out.append("| processes | jobs/s | × one process | job runs (duplicates) |")
        out.append("| ---: | ---: | ---: | ---: |")
        one = _get(results, "procs", "1", "procs_per_s")
        for count, entry in results["procs"].items():
            if "error" in entry:
                out.append(f"| {count} | n/a ({entry['error']}) | | |")
                continue
            dup = entry.get("runs", 0) - entry.get("jobs", 0)
            out.append(f"| {count} | {_rate(entry['procs_per_s'])} | {_ratio(entry['procs_per_s'], one)} |"
                       f" {entry.get('runs', 0):,.0f} ({dup:+,.0f}) |")
        out.append("")

    iso = results.get("isolation")
    if iso:
        out.append(f"## Isolated jobs: {cfg['isolation_n']:,} tiny jobs, 4 workers, memory repository\n")
        if "error" in iso:
            out.append(f"n/a ({iso['error']})\n")
        else:
            out.append("| mode | ms per job | × thread |")
            out.append("| --- | ---: | ---: |")
            out.append(f"| thread | {iso['thread_ms_per_job']:.3f} | 1.00× |")
            out.append(f"| process (children reused) | {iso['process_ms_per_job']:.3f} |"
                       f" {iso['process_over_thread']:.2f}× |")
            out.append("")

    if targets:
        out.append("## Targets (ratios measured in this run)\n")
        out.append("| target | measured | needed | verdict |")
        out.append("| --- | ---: | ---: | --- |")
        for t in targets:
            verdict = {True: "met", False: "**not met**", None: "n/a"}[t["met"]]
            out.append(f"| {t['target']} | {t['measured']} | {t['needed']} | {verdict} |")
        out.append("")

    out.append("## What each engine does per job\n")
    out.append("| engine | per job |")
    out.append("| --- | --- |")
    for engine, text in PER_JOB.items():
        out.append(f"| {_label(engine)} | {text} |")
    out.append("")

    if notes:
        out.append("## n/a\n")
        for engine, why in notes.items():
            out.append(f"- {_label(engine)}: {why}")
        out.append("")
    return "\n".join(out)


def _target(name: str, value: Optional[float], needed: float, *, at_most: bool = False, unit: str = "×",
            fmt: str = "{:.2f}") -> dict[str, Any]:
    if value is None:
        return {"target": name, "measured": "n/a", "needed": f"{'≤' if at_most else '≥'} {fmt.format(needed)}{unit}",
                "met": None, "value": None}
    met = value <= needed if at_most else value >= needed
    return {"target": name, "measured": fmt.format(value) + unit,
            "needed": f"{'≤' if at_most else '≥'} {fmt.format(needed)}{unit}", "met": met, "value": value}


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else a / b


def targets(results: dict[str, Any], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's targets, each as a ratio measured in this run."""
    e = lambda engine, metric="e2e_per_s": _get(results, "e2e", engine, metric)  # noqa: E731
    out = [
        _target("default durability end-to-end ÷ raw 1-txn/stmt NORMAL floor",
                _div(e("jobcore-sqlite"), e("raw-normal")), 1.0),
        _target('"full" durability end-to-end ÷ Huey', _div(e("jobcore-sqlite-full"), e("huey")), 2.0),
        _target('"full" durability end-to-end ÷ raw 1-txn/stmt FULL floor',
                _div(e("jobcore-sqlite-full"), e("raw-full")), 1.0),
        _target("concurrent producer+workers ÷ enqueue-then-drain (SQLite normal)",
                _div(_get(results, "concurrent", "jobcore-sqlite", "concurrent_per_s"), e("jobcore-sqlite")), 0.8),
        _target("enqueue_many ÷ raw batched floor's enqueue (INSERT, 500/txn)",
                _div(_get(results, "bulk", "jobcore-sqlite", "enqueue_many_per_s"),
                     _get(results, "bulk", "raw-batch", "enqueue_many_per_s")), 0.5),
        _target("enqueue_many ÷ raw batched floor's end-to-end (3 statements, 500/txn)",
                _div(_get(results, "bulk", "jobcore-sqlite", "enqueue_many_per_s"), e("raw-batch")), 0.5),
        _target("memory repository end-to-end ÷ stdlib heap floor", _div(e("jobcore-memory"), e("heap")), 0.25),
    ]
    pickup = results.get("pickup", {}).get("jobcore-sqlite", {})
    out.append(_target("pickup p50 on SQLite", pickup.get("p50_ms"), 0.5, at_most=True, unit=" ms", fmt="{:.3f}"))
    out.append(_target("pickup p99 on SQLite", pickup.get("p99_ms"), 2.0, at_most=True, unit=" ms", fmt="{:.3f}"))
    depth = results.get("depth", {})
    sizes = sorted((int(k) for k in depth if k.isdigit() and "error" not in depth[k]))
    if sizes:
        top = depth[str(sizes[-1])]
        label = f"{sizes[-1]:,}"
        suffix = "" if sizes[-1] >= 1_000_000 else " (this run's deepest; the target is at 1,000,000)"
        rss = max(top.get("fill_rss_mb", 0.0), top.get("rss_mb", 0.0))
        out.append(_target(f"RSS with {label} queued, worse of filling and started process{suffix}", rss, 500.0,
                           at_most=True, unit=" MB", fmt="{:.0f}"))
        if len(sizes) >= 2:
            low = depth[str(sizes[0])]
            out.append(_target(f"enqueue cost {label} ÷ {sizes[0]:,} deep{suffix}",
                               _div(top.get("enqueue_us"), low.get("enqueue_us")), 2.0, at_most=True))
            out.append(_target(f"claim cost {label} ÷ {sizes[0]:,} deep{suffix}",
                               _div(top.get("claim_us"), low.get("claim_us")), 2.0, at_most=True))
    procs = results.get("procs", {})
    out.append(_target("4 worker processes ÷ 1 process on one SQLite file",
                       _div(_get(results, "procs", "4", "procs_per_s"), _get(results, "procs", "1", "procs_per_s")),
                       1.0 + 1e-9 if procs else 1.0))
    return out


def _depth_table(out: list[str], depth: dict[str, Any], filled: str, started: str) -> None:
    """The rows of a depth sweep (`depth`: ops and one entry per depth), and the ratio of
    the deepest to the shallowest."""
    out.append(f"| depth | fill jobs/s | enqueue µs | claim µs/job | start() s | {filled} | {started} |")
    out.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    sizes = [k for k in depth if k.isdigit()]
    for size in sizes:
        entry = depth[size]
        if "error" in entry:
            out.append(f"| {int(size):,} | n/a ({entry['error']}) | | | | | |")
            continue
        out.append(f"| {int(size):,} | {_rate(entry.get('fill_per_s'))} | {entry.get('enqueue_us', 0):.0f} |"
                   f" {entry.get('claim_us', 0):.0f} | {entry.get('start_s', 0):.2f} |"
                   f" {entry.get('fill_rss_mb', 0):.0f} | {entry.get('rss_mb', 0):.0f} |")
    if len(sizes) >= 2 and all("error" not in depth[s] for s in (sizes[0], sizes[-1])):
        a, b = depth[sizes[0]], depth[sizes[-1]]
        out.append(f"| ratio {int(sizes[-1]):,} ÷ {int(sizes[0]):,} | | {_ratio(b.get('enqueue_us'), a.get('enqueue_us'))} |"
                   f" {_ratio(b.get('claim_us'), a.get('claim_us'))} | | | |")
    out.append("")
