"""The benchmark scripts run end to end (on tiny models), so they cannot rot between GPU sessions."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_gpu_speed_script_runs_on_tiny_models():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_speed.py"), "--tiny"], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["runs"]["K=3"]["kept"] == [0, 3, 6, 8] and report["runs"]["K=1"]["kept"] is None
    assert report["runs"]["K=3"]["stages"]["total"] > 0 and report["speedup_K3_over_K1"] > 0
