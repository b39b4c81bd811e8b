"""The memory estimate against the peak a run really reaches on the CPU (resident set size, glibc's default
allocator, as in a host's process), with the released realsr-v3 architecture (seeded random weights)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import gc, json, sys
import torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)

def status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

import resshift_core as rc
from resshift_core.models import descriptor_for
from resshift_core.nets import ResShiftUNet, VQAutoencoder

size, tiling = int(sys.argv[2]), sys.argv[3]
release = rc.get_release("realsr-v3")
torch.manual_seed(0)
unet, vae = ResShiftUNet(release.unet), VQAutoencoder(rc.AUTOENCODERS["vq-f4"].config)
pipe = rc.ResShiftPipeline.from_loaded(descriptor_for(unet, release=release), descriptor_for(vae))
options = {"tiles": tiling, "one_step": True}
estimated = pipe.working_memory(size, size, **options)
image = torch.rand(1, 3, size, size)
gc.collect()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS")
pipe.upscale(image, seed=0, **options)
measured = status("VmHWM") - before
print(json.dumps({"estimated": estimated, "measured": measured, "plan": pipe.last_plan.describe()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak reset")
# Feature maps above glibc's 32 MiB mmap threshold come and go with the mapping, so these peaks repeat from run to
# run; smaller tiles (maps of a few MiB) are kept or given back by glibc depending on the order of frees, and their
# peaks were seen to vary by +-25% between identical runs.
@pytest.mark.parametrize("size, tiling", [(64, "off"), (256, "latent")])
def test_cpu_memory_estimate_is_within_a_quarter_of_the_measured_peak(size, tiling):
    done = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(size), tiling], capture_output=True,
                          text=True, timeout=600, env={"RESSHIFT_CPU_ALLOCATOR": "default", "PATH": "/usr/bin:/bin",
                                                       "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert ("untiled" in record["plan"]) == (tiling == "off")
    ratio = record["estimated"] / record["measured"]
    # Tiled runs free and reuse tile-sized blocks, which glibc keeps or returns depending on the order of frees: the
    # same run measured 1.04-1.31 here, so an over-estimate gets more room there (an under-estimate never does).
    assert 0.75 <= ratio <= (1.25 if tiling == "off" else 1.4), record
