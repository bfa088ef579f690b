"""Local replay of the official SegFM3D evaluation: simulated user, metrics, per-case loop, reports.

    python -m inference.harness run CASES_DIR OUT_DIR [--predictor CMD | --docker IMAGE] [--no-box]
    python -m inference.harness report OUT_DIR/metrics*.csv --out DIR
"""
