"""The soak of gmpo serve (marked slow: ~1-3 min): benchmarks/serve_load.py sends 2,000 requests from 16
concurrent openai clients to a `gmpo serve` process with the tiny model; no request may fail and the
server's resident memory must stay flat after warm-up."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_soak_2000_requests_16_clients_no_failure_flat_memory():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--tiny", "--soak", "2000",
                          "--soak-clients", "16", "--max-tokens", "16", "--threads", "1", "--no-write"],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("soak: "))
    assert "2000 requests from 16 clients" in line and ", 0 errors;" in line
    growth = float(re.search(r"\(([+-]\d+) MB\)", line).group(1))
    assert growth < 30, line  # MB of RSS growth from the end of warm-up to the end
