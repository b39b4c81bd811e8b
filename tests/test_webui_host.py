"""End to end in a real WebUI (AUTOMATIC1111 v1.10.1, Forge or reForge) through its HTTP API.

Skipped unless ``RESSHIFT_WEBUI_DIR`` names a prepared WebUI folder (with ``venv/``, see
``../shared/harness/README.md``). ``RESSHIFT_WEBUI_ARGS`` adds server flags (``--always-cpu`` on Forge / reForge);
``RESSHIFT_WEBUI_WEIGHTS`` names a folder with full-size files under their official names (default: the reduced
golden-fixture weights, saved under the official names, which run in seconds).

The shared harness (``run_e2e.py``) checks the listing, a single image, a batch, settings and host-level bad
requests; this test then checks, on the same server, that ``/sdapi/v1/progress`` moves during a run and that the
extension's own errors (a scale above 4, missing weights) reach the API as errors while the server keeps serving.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_weights import AUTOENCODER, UNET, pixel_space_unet

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "harness" / "webui" / "run_e2e.py"
WEBUI = os.environ.get("RESSHIFT_WEBUI_DIR")
V3 = "ResShift 4x real-world v3"
OWN = "ResShift: own_pixel"  # the entry of a pixel-space model of one's own (what train/export.py writes)

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not WEBUI, reason="set RESSHIFT_WEBUI_DIR to a prepared WebUI folder to run this test"),
    pytest.mark.skipif(not HARNESS.is_file(), reason=f"the WebUI harness is not at {HARNESS}"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def models_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    given = os.environ.get("RESSHIFT_WEBUI_WEIGHTS")
    if given:
        for path in Path(given).iterdir():
            (folder / path.name).symlink_to(path.resolve())
    else:
        shutil.copy(UNET, folder / "resshift_realsrx4_s4_v3.safetensors")
        shutil.copy(AUTOENCODER, folder / "autoencoder_vq_f4.safetensors")
    pixel_space_unet(folder / "own_pixel.safetensors")
    return folder


def call(base: str, method: str, path: str, body=None, timeout: float = 900):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def png_b64(width: int, height: int) -> str:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), ((x // 4 + y // 4) % 2) * 200], -1)
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def error_text(body) -> str:
    return json.dumps(body) if body is not None else ""


@pytest.fixture
def served_webui(tmp_path):
    """Runs the harness with --keep-running; yields (harness result, base URL, its output folder); stops the server
    afterwards."""
    port = free_port()
    models = models_folder(tmp_path)
    command = [sys.executable, str(HARNESS), "--ext", str(ROOT), "--webui", WEBUI, "--upscaler", V3,
               "--run-install", "--port", str(port), "--out", str(tmp_path / "out"), "--size", "32x24",
               f"--server-arg=--resshift-models-path={models}", "--keep-running",
               "--options", json.dumps({"resshift_seed": 1234, "resshift_tile_size": 256,
                                        "resshift_color_fix": "wavelet"})]
    command += [f"--server-arg={arg}" for arg in shlex.split(os.environ.get("RESSHIFT_WEBUI_ARGS", ""))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    found = re.search(r"server left running, PID (\d+)", result.stdout)
    try:
        yield result, f"http://127.0.0.1:{port}", tmp_path / "out"
    finally:
        if found:
            try:  # the WebUI keeps options in its config.json: leave downloads as they were
                call(f"http://127.0.0.1:{port}", "POST", "/sdapi/v1/options", {"resshift_download": True}, timeout=30)
            except OSError:
                pass
            pid = int(found.group(1))
            os.kill(pid, signal.SIGTERM)
            for _ in range(60):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)


def test_resshift_in_a_real_webui(served_webui):
    result, base, out_folder = served_webui
    assert re.search(r"^(\d+) passed, 0 failed$", result.stdout, re.M), result.stdout[-3000:] + result.stderr[-2000:]
    summary = json.loads((out_folder / "summary.json").read_text())
    single = next(check for check in summary["checks"] if check["check"] == "extra-single-image")
    assert "ResShift seed: 1234" in single["html_info"]  # the seed set through /sdapi/v1/options reached the infotext

    # /sdapi/v1/progress moves while a run is in progress.
    seen = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            status, body = call(base, "GET", "/sdapi/v1/progress?skip_current_image=true", timeout=30)
            if status == 200:
                seen.append((body["progress"], body["state"]["sampling_step"], body["state"]["sampling_steps"]))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    status, body = call(base, "POST", "/sdapi/v1/extra-single-image",
                        {"image": png_b64(64, 48), "upscaling_resize": 4, "upscaler_1": V3})
    done.set()
    poller.join(timeout=60)
    assert status == 200, body
    partial = [entry for entry in seen if 0 < entry[1] < entry[2]]
    assert partial, f"no progress between the first and the last step was seen: {seen[-20:]}"
    assert any(0.01 < progress < 1 for progress, _, _ in partial)

    # Any factor, with the colour fix set: x2 is one run and a resize, x8 two runs (the second tiled), exact sizes.
    for factor, image, size in ((2, png_b64(64, 48), (128, 96)), (8, png_b64(16, 12), (128, 96))):
        status, body = call(base, "POST", "/sdapi/v1/extra-single-image",
                            {"image": image, "upscaling_resize": factor, "upscaler_1": V3})
        assert status == 200, body
        with Image.open(io.BytesIO(base64.b64decode(body["image"]))) as upscaled:
            assert upscaled.size == size, (factor, upscaled.size)

    # The extension's own refusals are API errors, and the server keeps serving.
    assert call(base, "POST", "/sdapi/v1/options", {"resshift_download": False})[0] == 200
    status, body = call(base, "POST", "/sdapi/v1/extra-single-image",
                        {"image": png_b64(16, 12), "upscaling_resize": 4, "upscaler_1": "SinSR 4x v1"})
    assert status >= 400 and "SinSR_v1.pth" in error_text(body)
    assert call(base, "GET", "/sdapi/v1/upscalers")[0] == 200

    # A model of one's own is listed and runs (downloads are off now: it needs no autoencoder).
    status, upscalers = call(base, "GET", "/sdapi/v1/upscalers")
    assert status == 200 and OWN in [entry["name"] for entry in upscalers]
    status, body = call(base, "POST", "/sdapi/v1/extra-single-image",
                        {"image": png_b64(20, 12), "upscaling_resize": 4, "upscaler_1": OWN})
    assert status == 200, body
    with Image.open(io.BytesIO(base64.b64decode(body["image"]))) as upscaled:
        assert upscaled.size == (80, 48)
