"""Make ``loadtests`` importable when Locust loads a scenario file by path (``locust -f ...``)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
