"""The capacity benchmark's table, written to docs/performance.md."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

PASS_WORDS, PASS_P95_S = 0.95, 1.5


def passes(row: dict[str, Any]) -> bool:
    return bool(row["words_min"] >= PASS_WORDS and row["lag_p95_s"] <= PASS_P95_S)


def largest(rows: list[dict[str, Any]]) -> int:
    return max((r["sessions"] for r in rows if passes(r)), default=0)


def sec(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def times(n1: int, n0: int) -> str:
    return f"**{n1 / n0:.0f}x**" if n0 else f"{n1} vs 0"


def fmt_words(row: dict[str, Any]) -> str:
    heard = (f" | {row['heard']} | {sec(row['speech_lag_p95_s'])}"
             if row.get("heard") else " | - | -")
    return (f"{row['sessions']} | {100 * row['words_min']:.0f}% ({100 * row['words_mean']:.0f}%) "
            f"| {sec(row['lag_p50_s'])} / {sec(row['lag_p95_s'])} | {row['server_cores']:.2f} | "
            f"{'yes' if passes(row) else 'no'}" + heard)


def table(results: dict[str, Any], machine: str) -> str:
    base, now = results["baseline"], results["default"]
    n0, n1 = largest(base["words"]), largest(now["words"])
    q0, q1 = largest(base["words_silent"]), largest(now["words_silent"])
    s0, s1 = base["static"], now["static"]
    lines = [f"Measured by `make bench` (benchmarks/capacity.py) on {time.strftime('%Y-%m-%d')}, "
             f"{machine}; load average {results['load']:.1f} when it started (the machine is "
             "shared: figures are from one run, compare them as ratios within it). Server in "
             "its own process, all clients in the bench process on loopback.",
             "",
             "| | pre-tuning settings | today's defaults | ratio |",
             "|---|---|---|---|",
             f"| RapidOCR, one 640x480 word frame (median) | {results['ocr_stock_ms']:.0f} ms "
             f"| {results['ocr_tuned_ms']:.0f} ms | "
             f"**{results['ocr_stock_ms'] / results['ocr_tuned_ms']:.1f}x** |",
             f"| largest N with >= 95% words in every session and lag p95 <= 1.5 s | {n0} | "
             f"{n1} | {times(n1, n0)} |",
             f"| same, frames only (no speech) | {q0} | {q1} | {times(q1, q0)} |",
             f"| {s0['sessions']} sessions, static scene {s0['still_s']} s: server CPU | "
             f"{s0['server_cores']:.2f} cores | {s1['server_cores']:.2f} cores | "
             f"**{s0['server_cores'] / max(s1['server_cores'], 1e-3):.1f}x** less |",
             f"| same, then a new word: sessions that read it (lag p50 / p95) | "
             f"{100 * s0['change_read']:.0f}% ({sec(s0['change_lag_p50_s'])} / "
             f"{sec(s0['change_lag_p95_s'])} s) | {100 * s1['change_read']:.0f}% "
             f"({sec(s1['change_lag_p50_s'])} / {sec(s1['change_lag_p95_s'])} s) | |",
             "",
             f"Gate cost per window: {results['gate_us'][0]:.0f} us to reduce a 640x480 JPEG "
             f"to its 160x120 grey thumbnail, {results['gate_us'][1]:.0f} us to compare two.",
             ""]
    for name, res in (("pre-tuning settings", base["words"]), ("today's defaults", now["words"]),
                      ("pre-tuning settings, no speech", base["words_silent"]),
                      ("today's defaults, no speech", now["words_silent"])):
        lines += [f"Words workload, {name} (words read: worst session (mean); lag window close "
                  "-> first delta, s; server CPU in cores, its recognizer processes included; "
                  "utterances the speech handler transcribed, all sessions, and the p95 from an "
                  "utterance's end to its transcript, s, not scored):", "",
                  "| sessions | words read | lag p50 / p95 | server CPU | passes | heard | "
                  "transcript lag p95 |",
                  "|---|---|---|---|---|---|---|",
                  *("| " + fmt_words(r) + " |" for r in res), ""]
    return "\n".join(lines)


def write(text: str, path: Path) -> None:
    section = ("<!-- bench:capacity -->\n## Capacity: live sessions on the embedded default\n\n"
               + text + "\n<!-- /bench:capacity -->")
    doc = path.read_text() if path.exists() else "# Performance\n"
    if "<!-- bench:capacity -->" in doc:
        doc = re.sub(r"<!-- bench:capacity -->.*<!-- /bench:capacity -->", lambda _: section,
                     doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + section + "\n"
    path.write_text(doc)
