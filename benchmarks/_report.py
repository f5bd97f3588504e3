"""Shared helpers for the benchmarks: machine facts, repeated timing, report sections.

Every benchmark writes its own section of ``docs/benchmarks.md`` between markers
``<!-- name:start -->`` and ``<!-- name:end -->`` so benchmarks can be rerun one at a
time without clobbering each other's results.
"""

import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine_line():
    """One line naming the machine, library versions and date of a run."""
    import keras
    import numpy as np

    try:
        import tensorflow as tf

        tf_version = tf.__version__
    except ImportError:  # pragma: no cover - other backends
        tf_version = "n/a"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{datetime.date.today().isoformat()} · {cpu} · {os.cpu_count()} cores · "
        f"Python {platform.python_version()} · NumPy {np.__version__} · "
        f"Keras {keras.__version__} ({keras.backend.backend()}) · TensorFlow {tf_version}"
    )


def median_time(fn, repeats=3):
    """Median wall time of ``fn()`` over ``repeats`` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def markdown_table(headers, rows):
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name, body, print_only=False):
    """Replace (or append) the section ``name`` of docs/benchmarks.md with ``body``.

    With ``print_only`` the section is printed and the file left alone.
    """
    if print_only:
        print(body)
        return
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
    print(f"wrote section '{name}' of {BENCHMARKS_MD}")


def add_report_options(parser, results=None, appends=True):
    """The options every benchmark's report takes; with `results` (a default path) also
    the JSON-lines results file and rebuilding the report from it. A benchmark that
    `appends` to the file across runs also gets `--fresh` (truncate it first)."""
    if results is not None:
        parser.add_argument("--results", default=results,
                            help="JSON-lines file the runs are written to")
        if appends:
            parser.add_argument("--fresh", action="store_true", help="truncate --results first")
        parser.add_argument("--report-only", action="store_true",
                            help="rebuild the doc section from --results, run nothing")
    parser.add_argument("--paragraph", default="",
                        help="text (or @file) for the closing paragraph of the section")
    parser.add_argument("--as-run", default=None,
                        help="the command line(s) the report cites (default: this one)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section, do not touch the docs")


def report_arguments(args, script):
    """The closing paragraph (`--paragraph` text or `@file`) and the command line a
    report cites (`--as-run`, or this run's own arguments)."""
    import sys

    paragraph = args.paragraph
    if paragraph.startswith("@"):
        paragraph = Path(paragraph[1:]).read_text()
    return paragraph, args.as_run or f"benchmarks/{script} " + " ".join(sys.argv[1:])


def load_records(path):
    """The JSON-lines results a benchmark has appended to `path` (none yet: [])."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_record(path, record, echo=True):
    """Append one result to the JSON-lines file `path` (and print it with `echo`)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if echo:
        print(json.dumps(record), flush=True)
