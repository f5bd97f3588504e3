"""The project's benchmarks. Run each as a module from the repository root, e.g.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_hybrid --help

Each writes its section of docs/benchmarks.md (`_report.write_section`) and its rows of
the summary table at the top (targets from `targets.py`); the shared models, SGD
baseline and `main()` skeleton are in `common.py`.
"""
