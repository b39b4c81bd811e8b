"""Make the ComfyUI pictures and UI workflows of the README from a real ComfyUI and its real front-end.

    python docs/comfyui_screenshot.py --comfy-dir COMFY --python COMFY_VENV/bin/python --models FOLDER

starts ComfyUI on 127.0.0.1 in a temporary base folder (this repository linked into ``custom_nodes/``, FOLDER into
``models/resshift``), opens its page in headless Chromium (Playwright), loads each API workflow of
``example_workflows/api/`` (except the failing and interrupt ones) with the front-end's own ``loadApiJson``, lays it
out, and writes the front-end's UI-format graph to ``example_workflows/<name>.json`` (what ComfyUI's template browser
lists) and a screenshot of the one-node upscale graph to ``docs/comfyui_graph.png``. Nothing of ComfyUI is written
into the repository: the picture is of our nodes as the front-end draws them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_WORKFLOWS = REPO / "example_workflows" / "api"
TEMPLATES = ("upscale", "upscale_alpha", "upscale_batch", "split")
INPUT_NAME = "example.png"  # the picture ComfyUI ships in its input folder, so the templates open anywhere

# Where each node goes in the picture and the templates (x, y), by API node id, per workflow.
LAYOUTS = {
    "upscale": {"1": (40, 60), "2": (40, 440), "3": (400, 160), "4": (780, 160)},
    "upscale_alpha": {"1": (40, 60), "2": (40, 440), "3": (400, 160), "5": (780, 160), "4": (1100, 160)},
    "upscale_batch": {"1": (40, 60), "5": (400, 60), "2": (40, 440), "3": (720, 160), "4": (1100, 160)},
    "split": {"1": (40, 60), "2": (40, 440), "3": (400, 160), "5": (760, 160), "6": (1100, 160), "4": (1420, 160)},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {process.returncode} during start-up")
        try:
            with urllib.request.urlopen(url + "/system_stats", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"ComfyUI not ready after {timeout} s")


def sample_picture(path: Path) -> None:
    """The input shown on LoadImage: a smooth colour pattern of our own (ComfyUI's example.png is not copied)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:96, 0:128] / 96.0
    rgb = np.stack([0.5 + 0.5 * np.sin(6 * x + 2 * y), 0.5 + 0.5 * np.sin(5 * y - 2 * x + 1),
                    0.6 + 0.4 * np.cos(4 * (x + y))], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy-dir", required=True, type=Path)
    parser.add_argument("--python", required=True)
    parser.add_argument("--models", required=True, type=Path, help="folder with the model files the workflows name")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--screenshot", type=Path, default=REPO / "docs" / "comfyui_graph.png")
    parser.add_argument("--templates", type=Path, default=REPO / "example_workflows")
    options = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    base = Path(tempfile.mkdtemp(prefix="resshift_screenshot_"))
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir()
    (base / "custom_nodes" / "ComfyUI-ResShift").symlink_to(REPO)
    (base / "models" / "resshift").symlink_to(options.models.resolve())
    sample_picture(base / "input" / INPUT_NAME)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True,  # no first-run template dialog
                                    "Comfy.Minimap.Visible": False}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(base / "comfyui.log", "wb") as log:
        process = subprocess.Popen([options.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                    "--base-directory", str(base), "--disable-auto-launch", "--disable-api-nodes",
                                    "--database-url", "sqlite:///:memory:"],
                                   cwd=options.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        try:
            wait_ready(url, process)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=options.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1800, "height": 1000}, device_scale_factor=1)
                page.goto(url)
                page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
                page.wait_for_timeout(3000)
                for name in TEMPLATES:
                    graph = json.loads((API_WORKFLOWS / f"{name}.json").read_text())
                    for node in graph.values():
                        if node["class_type"] == "LoadImage":
                            node["inputs"]["image"] = INPUT_NAME
                        if node["class_type"] == "SaveImage":
                            node["inputs"]["filename_prefix"] = f"ResShift/{name}"
                    workflow = page.evaluate("""async ([graph, name, layout]) => {
                        await window.app.loadApiJson(graph, name);
                        for (const [id, [x, y]] of Object.entries(layout)) {
                            const node = window.app.graph.getNodeById(+id);
                            node.pos = [x, y];
                            for (const widget of node.widgets ?? []) {
                                if (widget.name === "control_after_generate") widget.value = "fixed";  // reproducible
                            }
                        }
                        window.app.canvas.ds.offset = [120, 110];
                        window.app.canvas.ds.scale = 1;
                        window.app.graph.setDirtyCanvas(true, true);
                        return window.app.graph.serialize();
                    }""", [graph, name, LAYOUTS[name]])
                    (options.templates / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
                    if name == "upscale":
                        page.wait_for_timeout(3000)
                        page.screenshot(path=str(options.screenshot), clip=page.evaluate("""() => {
                            const canvas = window.app.canvas, rect = canvas.canvas.getBoundingClientRect();
                            let left = Infinity, top = Infinity, right = -Infinity, bottom = -Infinity;
                            for (const node of window.app.graph._nodes) {
                                const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - 40]);
                                const [x2, y2] = canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0],
                                                                                  node.pos[1] + node.size[1]]);
                                left = Math.min(left, x); top = Math.min(top, y);
                                right = Math.max(right, x2); bottom = Math.max(bottom, y2);
                            }
                            const margin = 24;
                            return {x: rect.left + left - margin, y: rect.top + top - margin,
                                    width: right - left + 2 * margin, height: bottom - top + 2 * margin};
                        }"""))
                browser.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
            shutil.rmtree(base, ignore_errors=True)
    print(f"wrote {options.screenshot} and {len(TEMPLATES)} templates in {options.templates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
