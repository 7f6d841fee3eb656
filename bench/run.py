"""Run the benchmarks and print one table (PERFORMANCE.md).

    python -m bench.run --size full          # make bench: a few minutes on 2 cores
    python -m bench.run --size quick         # make bench-quick: seconds, part of the tests
    python -m bench.run --size quick --only b2 --results-dir /tmp/results

Each benchmark writes bench/results/<name>.json. The exit code is 0 when every benchmark ran
and its correctness checks passed, whatever the speed: a missed goal is reported in the
table ("ok" column) and below it with what dominated, never as a failure of the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, SIZES, BenchPostgres, BenchResult, load_average, log, write_result

BENCHMARKS = {
    "b1": "bench.b1_email_drain",
    "b2": "bench.b2_enqueue",
    "b3": "bench.b3_reminder_scan",
    "b4": "bench.b4_backup_scan",
    "b5": "bench.b5_upload_drain",
    "b6": "bench.b6_archival_latency",
    "b7": "bench.b7_pdf_render",
}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def table(results: list[BenchResult]) -> str:
    header = ("benchmark", "figure", "value", "limit measured", "ratio", "goal", "ok")
    rows = []
    for r in results:
        for f in r.figures:
            limit = f"{_fmt(f.limit)} ({f.limit_label})" if f.limit is not None else f.limit_label or "-"
            ok = "-" if f.ok is None else ("yes" if f.ok else "NO")
            rows.append((r.title, f.figure, f"{_fmt(f.value)} {f.unit}", limit,
                         "-" if f.ratio is None else f"{f.ratio:.2f}", f.goal or "-", ok))
        rows.append((r.title, "correctness checks", "passed" if r.checks_ok else "FAILED", "-", "-", "-",
                     "yes" if r.checks_ok else "NO"))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def fmt(row) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"

    return "\n".join([line, fmt(header), line, *(fmt(r) for r in rows), line])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="quick")
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run (default: all): "
                        + ", ".join(BENCHMARKS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where to write <name>.json (default: bench/results)")
    args = parser.parse_args(argv)
    selected = [b.strip().lower() for b in args.only.split(",") if b.strip()] or list(BENCHMARKS)
    unknown = [b for b in selected if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    started = time.monotonic()
    load_before = load_average()
    log(f"size {args.size}: {', '.join(selected)}; load average {load_before}; starting PostgreSQL")
    pg = BenchPostgres().start()
    results: list[BenchResult] = []
    failed: list[str] = []
    try:
        for key in selected:
            module = importlib.import_module(BENCHMARKS[key])
            try:
                result = module.run(args.size, pg)
            except Exception as exc:  # noqa: BLE001 - the other benchmarks still run
                import traceback

                traceback.print_exc()
                failed.append(f"{key}: {exc.__class__.__name__}: {exc}")
                continue
            path = write_result(result, args.results_dir)
            log(f"{result.title}: wrote {path}")
            results.append(result)
    finally:
        pg.stop()

    print(f"\nbg_ops benchmarks, size {args.size} ({time.monotonic() - started:.0f} s; "
          f"load average before {load_before}, after {load_average()})")
    print(table(results))
    if load_before and load_before[0] > 0.5:
        print(f"note: the machine was already busy before the run (1-minute load {load_before[0]}): "
              "other processes share its cores, so the figures are pessimistic and noisy")
    for r in results:
        for f in r.goals_missed:
            print(f"goal missed: {r.title}, {f.figure}: ratio {f.ratio} (goal {f.goal}). {f.note}")
    for message in failed:
        print(f"benchmark failed to run: {message}")
    bad_checks = [r.title for r in results if not r.checks_ok]
    for title in bad_checks:
        print(f"correctness checks FAILED: {title} (see bench/results)")
    return 1 if failed or bad_checks else 0


if __name__ == "__main__":
    sys.exit(main())
