"""Where a worker's time goes: a py-spy profile summed by package and by function.

    py-spy record -p <worker pid> --gil -d 10 -r 250 -f raw -o worker.raw --nonblocking
    python -m bench.profile_summary worker.raw [--top 20]

`--gil` keeps only the samples of the thread holding the GIL, which is the CPU a
Python process spends; without it, threads blocked in C (a lock, a socket read)
are counted as busy too. The worker to profile is the `shardproxy serve` child
with the most CPU time (the others are the resource tracker and the standby).

Three tables, in Markdown: the running frame's package (PyMySQL, SQLAlchemy,
gRPC, shardproxy, ...), the functions with the most samples of their own, and
shardproxy's functions with the samples of everything they call.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

PACKAGES = ("sqlalchemy", "pymysql", "MySQLdb", "psycopg2", "grpc", "shardproxy", "optuna",
            "threading", "concurrent", "queue", "socket", "ssl")
_LINE = re.compile(r":\d+\)$")


def package_of(frame: str) -> str:
    """The package of a frame "function (path/to/file.py:line)"."""
    match = re.search(r"\(([^()]*)\)$", frame)
    path = match.group(1) if match else frame
    for name in PACKAGES:
        if f"/{name}/" in path or path.startswith(f"{name}/") or path.endswith(f"/{name}.py") \
                or path.startswith(f"{name}.py"):
            return name
    return path.rsplit("/", 1)[-1].split(":")[0] or "(native)"


def summarize(lines: list[str], top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        line = line.rstrip()
        if not line:
            continue
        stack, count_text = line.rsplit(" ", 1)
        count = int(count_text)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        packages[package_of(stack.split(";")[-1])] += count
        for frame in set(frames):
            if "shardproxy/" in frame:
                inclusive[frame] += count
    if total == 0:
        return "no samples\n"

    def table(title: str, counter: collections.Counter[str], rows: int) -> str:
        body = "".join(f"| {100 * n / total:.1f} % | `{name}` |\n"
                       for name, n in counter.most_common(rows))
        return f"\n{title}\n\n| share | |\n|---:|---|\n{body}"

    return (f"{total} samples\n"
            + table("Running frame, by package:", packages, 12)
            + table("Functions, own samples:", own, top)
            + table("shardproxy's functions, with what they call:", inclusive, top))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("raw", help="py-spy record -f raw output")
    parser.add_argument("--top", type=int, default=20, help="functions per table")
    args = parser.parse_args(argv)
    with open(args.raw) as raw:
        sys.stdout.write(summarize(raw.readlines(), args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
