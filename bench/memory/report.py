"""The memory results as Markdown: tables and the reading of each part."""

from __future__ import annotations

import itertools
from typing import Any

from bench.memory.idle import WAVE
from bench.memory.proxy import LATENCY_CHANNELS, SETTLE


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _latency_cells(latency: dict[str, Any]) -> list[str]:
    cells = []
    for key, digits in (("get_all_studies", 2), ("optuna_trial", 1)):
        figures = latency[key]
        cells.append(f"failed: {figures['error']}" if "error" in figures
                     else f"{figures['p50_ms']:.{digits}f} / {figures['p99_ms']:.{digits}f}")
    return cells


def _split(counts: dict[str, Any]) -> str:
    return ", ".join(f"{w} {n}" for w, n in counts.items())


def _idle_lines(idle: dict[str, Any]) -> list[str]:
    asked = idle["connections_asked"]
    first = idle["rounds"][0]
    held = first["held"]
    nofile = ", ".join(f"{w} {soft}" for w, (soft, _) in idle["worker_nofile_limits"].items())
    by_worker = _split({w: _num(v) for w, v in idle["rss_per_connection_by_worker_kib"].items()})
    samples = idle["latency_before"].get("get_all_studies", {}).get("samples", 0)
    lines = [
        f"`shardproxy serve --workers {idle['workers']}`; {asked} channels asked over "
        f"{idle['client_processes']} client processes, each its own TCP connection that "
        f"served one GetAllStudies; opened in {first['open_seconds']:.1f} s. Workers' soft "
        f"open-file limit: {nofile}.", "",
        "| figure | value |", "|---|---:|",
        f"| connections held (server side: workers' sockets) | {held} of {asked} |",
        f"| split across workers | {_split(first['held_by_workers'])} |",
        f"| established in the kernel, accepted or not | {first['established_in_kernel']} |",
        f"| tree RSS before, MiB | {_mib(idle['rss_before']['total_kib'])} |",
        f"| tree RSS with them held, MiB | {_mib(first['rss']['total_kib'])} |",
        f"| **RSS per idle connection, KiB** | **{_num(idle['rss_per_connection_kib'])}** |",
        f"| per worker (its delta ÷ its connections), KiB | {by_worker} |",
        f"| tree RSS after they closed, MiB | {_mib(first['rss_after_close']['total_kib'])} |",
    ]
    rounds = idle["rounds"]
    for number, (previous, again) in enumerate(itertools.pairwise(rounds), 2):
        grown = again["rss"]["total_kib"] - previous["rss_after_close"]["total_kib"]
        lines += [
            f"| round {number} on the same proxy: held / tree RSS with them, MiB (growth "
            f"over the previous round's close) / after close, MiB "
            f"| {again['held']} / {_mib(again['rss']['total_kib'])} (+{_mib(grown)}) "
            f"/ {_mib(again['rss_after_close']['total_kib'])} |"]
    if "ping_after_idle" in first:
        ping = first["ping_after_idle"]
        lines.append(f"| held connections answering one more call after the idle window "
                     f"| {ping['answered']} of {held}"
                     f"{'; ' + str(ping['errors']) if ping['errors'] else ''} |")
    if "idle_cpu" in first:
        lines.append(f"| proxy CPU over {first['idle_cpu']['seconds']:.0f} s idle, without → "
                     f"with them, % of one core "
                     f"| {idle['idle_cpu_before']['cpu_percent_of_one_core']:.2f} → "
                     f"{first['idle_cpu']['cpu_percent_of_one_core']:.2f} |")
    lines += [
        f"| client errors | {first['errors'] or 'none'} |", "",
        "Responsiveness from a fresh client (p50 / p99, ms): GetAllStudies on raw bytes over "
        f"{LATENCY_CHANNELS} new connections ({samples} "
        "calls, one at a time; it reads the database), and one RandomSampler trial (`x**2`) "
        "through a new `GrpcStorageProxy` (`study.optimize(n_trials=1)`, wall time; the "
        "first includes loading the study).", "",
        "| when | GetAllStudies p50 / p99 | Optuna trial p50 / p99 |", "|---|---:|---:|",
        "| before the idle connections | " + " | ".join(_latency_cells(idle["latency_before"]))
        + " |",
        f"| with {held} idle connections held | "
        + " | ".join(_latency_cells(idle["latency_held"])) + " |", "",
    ]
    if held < asked:
        lines += [
            f"**Only {held} of {asked} connections were held.** A client process stops "
            f"opening at its first wave of {WAVE} with a failure; the errors were "
            f"{first['errors']}. Established in the kernel but never accepted by a worker: "
            f"{first['established_in_kernel'] - held}. The proxy's stderr (distinct lines, "
            "times seen):", "", "```",
            *(f"{n:5d}  {line}" for line, n in idle["proxy_stderr"].items()),
            *([] if idle["proxy_stderr"] else ["(nothing)"]), "```", ""]
    return lines


def _trial_lines(trials: list[dict[str, Any]], limit: int) -> list[str]:
    lines = [
        "A study of N COMPLETE trials (one float parameter, one value), read once in full "
        "(raw GetTrials, `trial_id_greater_than` = -1) through a freshly started proxy; RSS "
        "delta of the worker that owns the study. The front is the worker the read's "
        "connection landed on (it forwards to the owner when they differ).", "",
        "| trials | owner | front | first full read, s | reply MiB | owner RSS delta, MiB "
        "| **bytes per cached trial** | owner delta on a 2nd full read, MiB "
        "| other worker delta, MiB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in trials:
        others = _split({w: _mib(d) for w, d in t["other_workers_delta_kib"].items()})
        lines.append(
            f"| {t['trials']:,} | {t['owner']} | {t['front_first_read']} "
            f"| {t['first_read_s']:.2f} | {t['reply_bytes'] / 2**20:.1f} "
            f"| {_mib(t['owner_delta_kib'])} | **{t['owner_per_trial_bytes']:,.0f}** "
            f"| {_mib(t['owner_second_read_delta_kib'])} | {others} |")
    per_trial = max(t["owner_per_trial_bytes"] for t in trials)
    reply_per_trial = max(t["reply_bytes"] / t["trials"] for t in trials)
    lines += [
        "", "A full read also leaves about the reply's size resident in the worker that sent "
        "the reply (freed, not returned to the system): see the other worker's column when "
        "it was the front, the owner's second read when the owner was. So a figure above "
        f"can include up to the reply's {reply_per_trial:,.0f} bytes per trial besides the "
        "cache itself.",
        "", f"Cache limit: `--cache-max-trials` defaults to {limit:,} trials per worker "
        f"(`shardproxy/config.py`: summed over the worker's studies, whole least-recently-used "
        f"studies evicted beyond it). At {per_trial:,.0f} bytes per trial of this shape (the "
        f"largest figure above), a full cache is about {limit * per_trial / 2**30:.1f} GiB "
        "per worker, times the worker count for the instance. Trials with more parameters, "
        "values or attributes cost more each.", ""]
    return lines


def _soak_lines(soak: dict[str, Any]) -> list[str]:
    bound = soak["cache_memory_bytes"]
    columns = list(soak["rss"])  # the tree, then each worker
    share = {c: bound if c == "tree" else bound / soak["workers"] for c in columns}

    def row(name: str, cell: Any) -> str:
        return f"| {name} | " + " | ".join(cell(c, soak["rss"][c]) for c in columns) + " |"

    over = soak["max_growth_over_bound"]
    lines = [
        f"`shardproxy serve --workers {soak['workers']} --cache-memory {bound}` "
        f"({bound / 2**20:,.1f} MiB for the instance, split evenly over the workers). "
        f"{soak['studies']} studies of {soak['trials_per_study']:,} COMPLETE trials (one "
        "float parameter, one value), "
        f"{soak['cached_bytes_by_cache_count'] / 2**20:,.1f} MiB by the cache's own count "
        f"of the {soak['studies_read']} read ({soak['cached_bytes_by_cache_count'] / bound:.1f}"
        " × the bound), read in full round-robin by "
        f"{soak['readers']} threads for {soak['seconds']:.0f} s: each worker keeps only "
        "the studies it read last, so after the first pass every read loads an evicted "
        "study again in full. RSS sampled once a second; the baseline after a warm-up "
        "and a small study read on each worker, the final value "
        f"{SETTLE:.0f} s after the last read; every sample is in the JSON.", "",
        "| RSS, MiB | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns),
        row("baseline", lambda c, f: _mib(f["baseline_kib"])),
        row("max", lambda c, f: _mib(f["max_kib"])),
        row("final", lambda c, f: _mib(f["final_kib"])),
        row("max growth over baseline", lambda c, f: _mib(f["max_growth_kib"])),
        row("**max growth ÷ bound** (a worker's: ÷ its share)",
            lambda c, f: f"**{f['max_growth_kib'] * 1024 / share[c]:.2f}**"), "",
        "| figure | value |", "|---|---:|",
        f"| full reads | {soak['reads']:,} ({soak['reads'] / soak['seconds']:.2f} a second) |",
        f"| data read, MiB (÷ bound) | {soak['reply_bytes'] / 2**20:,.0f} "
        f"({soak['reply_bytes'] / bound:,.1f}) |", "",
    ]
    if over > 1:
        lines += [f"**The tree grew {over:.2f} times the bound over its baseline**: beyond "
                  "what `--cache-memory` bounds.", ""]
    return lines


# The title names the parts measured (idle and limit both count idle connections).
_TITLES = {"idle": "per idle client connection", "cached_trials": "per cached trial",
           "limit": "per idle client connection", "soak": "under a cache bound"}


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    parts = [title for key, title in _TITLES.items() if key in data]
    lines = [
        f"# Memory: {', '.join(dict.fromkeys(parts))}", "",
        f"`{meta['command']}` — commit {meta['git']}, {meta['date']}, {meta['machine']}, "
        f"database {meta['db']}, run time {meta['elapsed_s']:.0f} s. Load average "
        f"{meta['load_before']} before, {meta['load_after']} after (this bench's own client "
        "processes included; the machine may also be shared with other work): the memory "
        "figures do not depend on it, the latencies do.", "",
        "How it is measured: `python -m bench.memory --help` and the docstrings of "
        "`bench/memory/`. RSS is the sum of VmRSS over the proxy's process tree (supervisor, "
        "workers, multiprocessing's resource tracker), read from /proc; per-process figures "
        "are in the JSON beside this file.", "",
    ]
    if "idle" in data:
        lines += ["## Idle client connections", "", *_idle_lines(data["idle"])]
    if "cached_trials" in data:
        limit = data["cache_limit"]["cache_max_trials_default"]
        lines += ["## Cached trials", "", *_trial_lines(data["cached_trials"], limit)]
    if "limit" in data:
        soft = data["meta"]["limit_nofile"]
        lines += [
            f"## At a soft open-file limit of {soft}", "",
            f"The same idle-connection measurement with the proxy started under a soft "
            f"RLIMIT_NOFILE of {soft} (1024 is the usual default soft limit on Linux): "
            "`shardproxy serve` raises it to the hard limit for its workers.",
            "", *_idle_lines(data["limit"])]
    if "soak" in data:
        lines += ["## Soak at the cache bound", "", *_soak_lines(data["soak"])]
    return "\n".join(lines)
