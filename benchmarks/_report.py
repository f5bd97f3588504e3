"""Shared helpers for the benchmarks: machine facts, repeated timing, report sections.

Every benchmark writes its own section of ``docs/benchmarks.md`` between markers
``<!-- name:start -->`` and ``<!-- name:end -->`` so benchmarks can be rerun one at a
time without clobbering each other's results, and its rows of the summary table that
opens the file (between ``<!-- summary:start -->`` and ``<!-- summary:end -->``; the
targets are listed in ``benchmarks/targets.py``). ``python -m benchmarks._report``
rebuilds the summary table alone, e.g. after a target was added.
"""

import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
RESULTS_DIR = ROOT / "benchmarks" / "results"


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


def median_or_nan(values):
    """The median of `values`, NaN for none (a cell without runs)."""
    return statistics.median(values) if values else float("nan")


def median_time(fn, repeats=3):
    """Median wall time of ``fn()`` over ``repeats`` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_rss_since_reset_mb():
    """Peak RSS (Linux VmHWM) since the last `clear_refs` reset, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def markdown_table(headers, rows):
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------- sections
def write_section(name, body, print_only=False, targets=None, doc=None):
    """Replace (or append) the section `name` of `doc` (docs/benchmarks.md) with `body`.

    `targets` maps keys of `benchmarks.targets.TARGETS` to `(measured, status)`; their
    rows of the summary table that opens docs/benchmarks.md are rewritten with them.
    With `print_only` the section and the targets are printed and no file is touched.
    """
    if print_only:
        print(body)
        for key, (measured, status) in (targets or {}).items():
            print(f"target {key}: {measured} → {status}")
        return
    doc = Path(doc) if doc is not None else BENCHMARKS_MD
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    # An anchor named after the benchmark: links read `benchmarks.md#bench_hybrid`.
    text = replace_block(text, name, f'<a id="{name}"></a>\n\n{body}')
    if doc == BENCHMARKS_MD:
        text = replace_block(text, SUMMARY, summary_table(text, targets or {}), before="<!-- ")
    doc.write_text(text)
    print(f"wrote section '{name}' of {doc}")


def replace_block(text, name, body, before=None):
    """`text` with the block between the markers of `name` set to `body`; a missing
    block goes before the first occurrence of `before`, or at the end."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    if before is not None and before in text:
        head, tail = text.split(before, 1)
        return head + block + "\n\n" + before + tail
    return text.rstrip() + "\n\n" + block + "\n"


# ---------------------------------------------------------------------- summary table
SUMMARY = "summary"
SUMMARY_HEADERS = ["target", "benchmark", "measured", "status"]


def _summary_rows(text):
    """{target text: (measured, status)} of the summary table already in `text`."""
    start, end = f"<!-- {SUMMARY}:start -->", f"<!-- {SUMMARY}:end -->"
    if start not in text or end not in text:
        return {}
    rows = {}
    for line in text.split(start, 1)[1].split(end, 1)[0].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == len(SUMMARY_HEADERS) and cells[0] not in ("target", "---"):
            rows[cells[0]] = (cells[2], cells[3].strip("*"))
    return rows


def summary_table(text, targets):
    """The summary table: every target of `benchmarks.targets`, in its order, with the
    `(measured, status)` given in `targets` (by key), else the one already in `text`,
    else "not measured yet"."""
    from benchmarks.targets import BY_KEY, MISSED, NOT_MEASURED, TARGETS

    unknown = set(targets) - set(BY_KEY)
    if unknown:
        raise KeyError(f"not in benchmarks/targets.py: {sorted(unknown)}")
    before = _summary_rows(text)
    rows = []
    for target in TARGETS:
        measured, status = targets.get(target.key) or before.get(target.text, ("–", NOT_MEASURED))
        written = target.benchmark and f"<!-- {target.benchmark}:start -->" in text
        rows.append([target.text, f"`{target.benchmark}`" if written else "not written yet",
                     measured, f"**{status}**" if status == MISSED else status])
    return markdown_table(SUMMARY_HEADERS, rows)


def met(ok):
    """The status of a target that `ok` says is met or not."""
    from benchmarks.targets import MET, MISSED

    return MET if ok else MISSED


# ---------------------------------------------------------------------- options, results
def default_results(name):
    """Where a benchmark appends its JSON-lines results unless told otherwise:
    benchmarks/results/<name>.jsonl, kept in git (small: a report can be rebuilt
    from the raw per-seed records in a later session)."""
    return str(RESULTS_DIR / f"{name}.jsonl")


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


# Options that only say where results go and how the report is written; the command a
# report cites leaves them out (a results path names this machine, not the benchmark).
_REPORT_FLAGS = {"--fresh": 0, "--report-only": 0, "--no-write": 0,
                 "--results": 1, "--paragraph": 1, "--as-run": 1}


def command_line(module, argv=None):
    """`python -m benchmarks.<module> ...` with this run's arguments (`argv`, default
    `sys.argv[1:]`) except the report options."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    kept = []
    while argv:
        arg = argv.pop(0)
        flag = arg.split("=", 1)[0]
        if flag in _REPORT_FLAGS:
            if "=" not in arg:
                del argv[:_REPORT_FLAGS[flag]]
            continue
        kept.append(arg)
    return " ".join([f"python -m benchmarks.{module}"] + kept)


def report_arguments(args, module):
    """The closing paragraph (`--paragraph` text or `@file`) and the command line a
    report cites (`--as-run`, or this run's own: `command_line(module)`)."""
    paragraph = args.paragraph
    if paragraph.startswith("@"):
        paragraph = Path(paragraph[1:]).read_text()
    return paragraph, args.as_run or command_line(module)


def load_records(path):
    """The JSON-lines results a benchmark has appended to `path` (none yet: [])."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_record(path, record, echo=True):
    """Append one result to the JSON-lines file `path` (and print it with `echo`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if echo:
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    text = BENCHMARKS_MD.read_text()
    BENCHMARKS_MD.write_text(replace_block(text, SUMMARY, summary_table(text, {}), before="<!-- "))
    print(f"rebuilt the summary table of {BENCHMARKS_MD}")
