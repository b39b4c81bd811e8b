"""The benchmark command runs end to end and reports what the speed issue asks for (figures, not a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/golden/public"


def test_bench_reports_time_memory_flops_and_peak_fraction(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "resshift_core.bench", "--unet", str(FIXTURE / "unet.safetensors"),
         "--autoencoder", str(FIXTURE / "vae.safetensors"), "--release", "realsr-v3", "--cases", "24,48-tiled",
         "--tile-size", "16", "--tile-overlap", "4", "--vae-tile-size", "16", "--dtype", "fp32", "--repeat", "1",
         "--warmup", "1", "--peak-seconds", "0.05", "--threads", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["peaks"]["fp32"]["gflops"] > 0
    cases = {case["case"]: case for case in report["cases"]}
    assert set(cases) == {"24", "48-tiled"}
    for name, side in (("24", 24), ("48-tiled", 48)):
        case = cases[name]
        assert case["status"] == "ok", case
        assert case["output"] == [4 * side, 4 * side]
        assert case["seconds"] > 0 and case["flops"] > 0 and case["peak_memory_mib"] > 0
        assert 0 < case["device_peak"]["gflops"] and len(case["device_peak"]["measured"]) == 2
        assert case["channels_last"] is True
        # upsampling convolutions run on the source map: less work than the official graph, which is reported too
        assert case["flops_official_graph"] > case["flops"]
    # the tiled case really ran several UNet tiles per step: more UNet calls than steps
    assert cases["48-tiled"]["network_calls"]["unet"] > cases["24"]["network_calls"]["unet"]
    assert "% peak" in done.stdout and "48-tiled" in done.stdout and "in the official graph" in done.stdout
    assert '"device_peak"' not in done.stdout  # the JSON goes to the file only (--json - prints it)
    for case in cases.values():  # the library's memory estimate is reported next to the measured growth
        assert case["estimated_working_mib"] > 0 and "estimated" in done.stdout
