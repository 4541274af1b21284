"""``mercury-export PATH... --format parquet --out DIR``: recordings and incident bundles to Parquet.

Each PATH is a JSONL recording (``DIR/<stem>.parquet``) or an incident bundle directory, whose
``events.jsonl`` becomes ``DIR/<bundle id>.parquet``. Every input is checked before anything is
written, so a typo costs nothing. Bundles themselves stay JSONL: their lines are the evidence,
byte for byte; the export is a copy for queries.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from mercurystream.shared.recording import is_parquet

PROG = "mercury-export"
EXIT_OK = 0
EXIT_BAD_LINES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

BUNDLE_EVENTS = "events.jsonl"
PROGRESS_MIN_BYTES = 1 << 20
"""Smaller files convert before a progress bar would tell anything."""

EPILOG = """\
exit status: 0 every line converted; 1 some lines were bad (skipped, counted, their first line
numbers printed); 2 bad option, unreadable input or a failed write; 130 interrupted.
"""


class UsageError(Exception):
    """A bad command line or input; ``str()`` is the one line to show."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Convert JSONL recordings or incident bundles to zstd-compressed Parquet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a JSONL recording or an incident bundle directory")
    p.add_argument("--format", choices=["parquet"], default="parquet", help="output format (default parquet)")
    p.add_argument("--out", required=True, type=Path, help="directory for the converted files (created if missing)")
    p.add_argument(
        "--max-line-bytes",
        type=_positive_int,
        default=None,
        help="longer lines are skipped as oversize (default MAX_FRAME_BYTES's default, 1 MiB)",
    )
    return p


def _source(path: str) -> Path:
    """The JSONL file a PATH names, or raise :class:`UsageError` saying why it cannot be read."""
    p = Path(path)
    if p.is_dir():
        events = p / BUNDLE_EVENTS
        if not events.is_file():
            raise UsageError(f"{path} is a directory without {BUNDLE_EVENTS} (not an incident bundle)")
        p = events
    elif not p.exists():
        raise UsageError(f"no such file: {path}")
    if not os.access(p, os.R_OK):
        raise UsageError(f"permission denied: {p}")
    if is_parquet(p):
        raise UsageError(f"{p} is already Parquet")
    return p


def _target(path: str, source: Path, out: Path) -> Path:
    name = Path(path).name if source.name == BUNDLE_EVENTS and Path(path).is_dir() else source.stem
    return out / f"{name}.parquet"


def plan(paths: list[str], out: Path) -> list[tuple[Path, Path]]:
    """``(source, target)`` for every PATH; :class:`UsageError` for the first that cannot be converted."""
    pairs: list[tuple[Path, Path]] = []
    seen: dict[Path, str] = {}
    for path in paths:
        source = _source(path)
        target = _target(path, source, out)
        if target in seen:
            raise UsageError(f"{path} and {seen[target]} would both be written to {target}")
        seen[target] = path
        pairs.append((source, target))
    return pairs


def _summary(source: Path, target: Path, report) -> list[str]:
    size = target.stat().st_size
    per_row = f", {size / report.rows:.1f} B/row (JSONL {report.bytes_read / report.rows:.1f})" if report.rows else ""
    lines = [f"{source} -> {target}: {report.rows} rows, {size} bytes{per_row}"]
    if report.bad_total:
        reasons = ", ".join(f"{k}={v}" for k, v in report.bad.items() if v)
        numbers = ", ".join(map(str, report.bad_lines))
        more = ", ..." if report.bad_total > len(report.bad_lines) else ""
        lines.append(f"{source}: skipped {report.bad_total} bad lines ({reasons}); first at lines {numbers}{more}")
    return lines


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        pairs = plan(args.paths, args.out)
        args.out.mkdir(parents=True, exist_ok=True)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        _fail(f"cannot create {args.out}: {exc.strerror or exc}")
        return EXIT_USAGE
    from mercurystream.export.convert import convert
    from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES

    max_line = args.max_line_bytes or DEFAULT_MAX_FRAME_BYTES
    rc = EXIT_OK
    for source, target in pairs:
        try:
            with open(source, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                show = sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES
                with tqdm(
                    total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=source.name, file=sys.stderr,
                    disable=not show, leave=False,
                ) as bar:  # fmt: skip
                    report = convert(f, target, max_line, on_progress=lambda n, bar=bar: bar.update(n - bar.n))
        except KeyboardInterrupt:
            _fail(f"interrupted while converting {source}; {target} not written")
            return EXIT_INTERRUPTED
        except OSError as exc:
            _fail(f"converting {source} to {target} failed: {exc.strerror or exc}")
            return EXIT_USAGE
        for line in _summary(source, target, report):
            print(f"{PROG}: {line}")
        if report.bad_total:
            rc = EXIT_BAD_LINES
    return rc


if __name__ == "__main__":
    sys.exit(main())
