"""Speed and memory: the original project's way vs this package's, side by side.

    python benchmarks/bench.py [--quick [--cli]] [--skip-cli] [--full-pipeline] [--write [PATH]]

Everything runs on synthetic CIFAR-shaped data (``data.make_synthetic``), not CIFAR-100.
Small samples are timed (``bench_measure``), scaled to the full split of 40,000 train /
10,000 validation images (``bench_estimate``) and written up (``bench_report``, prose in
``bench_report.md``). The report is printed; ``--write`` also saves it, by default as
docs/BENCHMARKS.md.
"""

import argparse
import os
import sys

import bench_measure
import bench_report

DEFAULT_OUTPUT = os.path.join(bench_measure.REPO_ROOT, "docs", "BENCHMARKS.md")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples, a few minutes")
    parser.add_argument("--skip-cli", action="store_true",
                        help="do not time `python -m cifar100cnn run --quick`")
    parser.add_argument("--cli", action="store_true",
                        help="with --quick: time `python -m cifar100cnn run --quick` as well")
    parser.add_argument("--full-pipeline", action="store_true",
                        help="also run and time the whole default pipeline on synthetic data of "
                             "full size (minutes on a GPU, hours on a CPU)")
    parser.add_argument("--full-timeout", type=int, default=3 * 3600,
                        help="seconds --full-pipeline may take (default 3 h)")
    parser.add_argument("--write", nargs="?", const=DEFAULT_OUTPUT, metavar="PATH",
                        help="also write the report to PATH (default docs/BENCHMARKS.md)")
    return parser.parse_args(argv)


def command_line(args):
    """The command as the report shows it (without --write)."""
    flags = [("--quick", args.quick), ("--skip-cli", args.skip_cli), ("--cli", args.cli),
             ("--full-pipeline", args.full_pipeline)]
    return " ".join(["python benchmarks/bench.py"] + [flag for flag, on in flags if on])


def cli_skipped(args):
    """Why the quick CLI run is not timed, or None."""
    if args.skip_cli:
        return "skipped (--skip-cli)"
    if args.quick and not args.cli:
        return "skipped in --quick mode (it alone takes minutes); run without --quick, or add --cli"
    return None


def write(report, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(report)
    print(f"Written to {path}")


def main(argv=None):
    args = parse_args(argv)
    measurements = bench_measure.measure_all(
        "quick" if args.quick else "full", command_line(args), cli_skipped(args),
        args.full_timeout if args.full_pipeline else None)
    report = bench_report.render(measurements)
    print(report)
    if args.write:
        write(report, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
