"""`python -m benchmarks`: prepare data, run the selected benchmarks, write and print results."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    changes_bench,
    data,
    import_bench,
    layers_bench,
    machine,
    mount_bench,
    registry_bench,
    report,
)
from benchmarks.harness import Case, CaseResult, rmtree, run_case, unmount_under

BENCHMARKS: dict[str, Callable[[data.Dataset, bool], list[Case]]] = {
    "changes": changes_bench.cases,
    "import": import_bench.cases,
    "layers": layers_bench.cases,
    "mount": mount_bench.cases,
    "registry": registry_bench.cases,
}
"""Each benchmark turns a data set (and the --quick flag) into its cases."""

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="2 reps, no warm-up, smaller files and fewer layer images: the same code paths",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(sorted(BENCHMARKS))}",
    )
    p.add_argument("--reps", type=int, help="measured reps per contender (default 5, quick 2)")
    p.add_argument("--warmup", type=int, help="discarded warm-up rounds (default 1, quick 0)")
    p.add_argument("--data", choices=data.DATASETS, default="debian", help="input (default debian)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results dir (default {RESULTS})")
    p.add_argument("--scratch", type=Path, help="work dir (default: CACHE/scratch)")
    args = p.parse_args(argv)
    args.reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    if args.reps < 1 or args.warmup < 0:
        p.error("--reps must be at least 1 and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or sorted(BENCHMARKS)
    suite = names[0] if len(names) == 1 else "all"
    if args.data != "debian":
        suite += f"-{args.data}"

    dataset = data.prepare(args.data)
    scratch = args.scratch or data.cache_dir() / "scratch"
    unmount_under(scratch)  # an interrupted run's mounts: never delete through them
    rmtree(scratch)
    scratch.mkdir(parents=True)
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    results: list[CaseResult] = []
    try:
        for name in names:
            for case in BENCHMARKS[name](dataset, args.quick):
                sys.stderr.write(
                    f"{case.workload}: {len(case.contenders)} contenders, "
                    f"{args.warmup} warm-up + {args.reps} reps\n"
                )
                results.append(run_case(case, reps=args.reps, warmup=args.warmup, scratch=scratch))
    finally:  # also on Ctrl-C: nothing stays mounted, nothing stays behind
        unmount_under(scratch)
        rmtree(scratch)

    tools = ["tar"] + [t for r in results for c in r.case.contenders for t in c.requires]
    meta = {
        "suite": suite,
        "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "quick": args.quick,
        "reps": args.reps,
        "warmup": args.warmup,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "data": dataset.as_json(),
        "machine": machine.describe(tools, scratch.parent),
    }
    written = report.write(results, meta, args.out)
    print(report.table(results))
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    failed = [o.contender.name for r in results for o in r.outcomes if o.error and o.contender.ours]
    if failed:
        sys.stderr.write(f"benchmarks: ours failed: {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # everything was unmounted and removed on the way out
        sys.stderr.write("benchmarks: interrupted\n")
        raise SystemExit(130) from None
