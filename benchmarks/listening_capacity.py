"""Capacity with speech against frames only, for this tree and another, in one run.

``python -m benchmarks.listening_capacity --compare TREE``: the capacity benchmark's words
workload (benchmarks/capacity.py: a new word every second, looping flite speech at 24 kHz, every
default handler) on the embedded default with its default settings, with speech and with frames
only, for TREE (e.g. an export of the code before a change) and for this tree; the trees
alternate, ``--rounds`` times, so both see the same load on a shared machine. Each row: the
largest N that passes the benchmark's own criterion (every session reads >= 95% of its words,
lag p95 <= 1.5 s), the server's CPU (its recognizer processes included) and the utterances the
speech handler transcribed. Written to docs/performance.md (``bench:listening-capacity``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import capacity, capacity_report
from benchmarks.docs import write_block
from benchmarks.run import ROOT, machine


async def one(tree: Path, sessions: list[int], seconds: int) -> dict[str, Any]:
    server = capacity.Server(None, cwd=tree)
    try:
        frames = {w: capacity.jpeg_url(w) for w in capacity.WORDS[:2]}
        await capacity.session(server.url, capacity.WORDS[:2], frames, None)  # warm
        return {"speech": await capacity.words(server, sessions, seconds),
                "frames": await capacity.words(server, sessions, seconds, speech=False)}
    finally:
        server.stop()


def row(name: str, i: int, res: dict[str, Any]) -> str:
    sp, fr = res["speech"], res["frames"]

    def at(rows: list[dict[str, Any]], n: int) -> str:
        r = next((r for r in rows if r["sessions"] == n), None)
        if r is None:
            return "-"
        return (f"{100 * r['words_min']:.0f}%, p95 {capacity_report.sec(r['lag_p95_s'])} s, "
                f"{r['server_cores']:.2f} cores")

    return (f"| {name} | {i + 1} | **{capacity_report.largest(sp)}** | "
            f"{capacity_report.largest(fr)} | {at(sp, 12)} | {at(fr, 12)} | "
            f"{next((r['heard'] for r in sp if r['sessions'] == 12), '-')} |")


def table(results: dict[str, Any]) -> str:
    lines = [f"Measured by `python -m benchmarks.listening_capacity` on "
             f"{time.strftime('%Y-%m-%d')}, {results['machine']}; load average "
             f"{results['load']:.1f} when it started; {results['seconds']} s per step, sessions "
             f"{results['sessions']}. Largest N passing (>= 95% words in every session, lag "
             "p95 <= 1.5 s); at 12 sessions: words read in the worst session, lag p95, server "
             "CPU with its recognizer processes, and utterances the speech handler transcribed "
             "(all sessions).", "",
             "| code | round | capacity with speech | frames only | 12 with speech | "
             "12 frames only | utterances heard at 12 |",
             "|---|---|---|---|---|---|---|"]
    for i, rnd in enumerate(results["rounds"]):
        for name, res in rnd.items():
            lines.append(row(name, i, res))
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.listening_capacity",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, metavar="TREE", required=True,
                        help="the other tree (its benchmarks.server runs with cwd=TREE)")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="this side's tree (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--sessions", type=int, nargs="+", default=[4, 8, 12, 16])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "listening.json")
    parser.add_argument("--no-write", action="store_true", help="leave docs/performance.md")
    args = parser.parse_args()
    trees = {"before": args.compare.resolve(), "after": args.tree.resolve()}
    results: dict[str, Any] = {"load": os.getloadavg()[0], "machine": machine(),
                               "seconds": args.seconds, "sessions": args.sessions, "rounds": []}
    for _ in range(args.rounds):
        rnd = {}
        for name, tree in trees.items():
            print(name, tree, flush=True)
            rnd[name] = await one(tree, args.sessions, args.seconds)
        results["rounds"].append(rnd)
        args.out.write_text(json.dumps(results, indent=1))
    text = table(results)
    print(text)
    if not args.no_write:
        write_block("listening-capacity", "<!-- bench:listening-capacity -->\n" + text
                    + "\n<!-- /bench:listening-capacity -->")


if __name__ == "__main__":
    asyncio.run(main())
