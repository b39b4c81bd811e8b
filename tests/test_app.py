"""The gradio demo (resshift_core.app): its service and handlers without a browser, then the page in headless Chromium.

The model is the small seeded-random fixture pair (official key names, realsr-v3 schedule), so outputs are noise but
have the right size, and a run takes a second or two on a CPU.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resshift_core.app import (
    LOCAL_CHOICE,
    AppSettings,
    AppSetupError,
    PipelineCache,
    UpscaleService,
    comparison_html,
    parse_args,
)
from resshift_core.errors import CancelledError, InputImageError, ResShiftError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "golden" / "public"
UNET = FIXTURES / "unet.safetensors"
VAE = FIXTURES / "vae.safetensors"
MAX_PIXELS = 64 * 64  # small, so that "too large" is cheap to provoke
SCREENSHOT = Path("/tmp/app_screenshot.png")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def astronaut(size: int = 32, top: int = 100, left: int = 200) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()[top:top + size, left:left + size])


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


class Recorder:
    """Stands in for gr.Progress: records (fraction, desc) and can run a hook on each call."""

    def __init__(self, hook=None):
        self.calls = []
        self.hook = hook

    def __call__(self, fraction, desc=None, **_):
        self.calls.append((fraction, desc))
        if self.hook:
            self.hook(fraction, desc)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    settings = AppSettings(unet=str(UNET), autoencoder=str(VAE), release="realsr-v3", max_pixels=MAX_PIXELS,
                           device="cpu", output_dir=str(tmp_path_factory.mktemp("app_out")))
    return UpscaleService(settings)


@pytest.fixture()
def gr():
    return pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")


# ------------------------------------------------------------------------------------------ without gradio
def test_library_and_app_module_import_without_gradio():
    code = ("import sys; sys.modules['gradio'] = None\n"
            "import resshift_core, resshift_core.app as app\n"
            "assert 'gradio' not in sys.modules or sys.modules['gradio'] is None\n"
            "sys.exit(app.main(['--port', '1']))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install gradio" in done.stderr and ".[app]" in done.stderr


def test_importing_the_library_does_not_import_gradio():
    code = "import sys, resshift_core, resshift_core.app; print('gradio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_arguments_and_defaults():
    args = parse_args([])
    assert (args.host, args.port, args.release, args.concurrency, args.share) == ("127.0.0.1", 7860, "realsr-v3",
                                                                                  1, False)
    assert args.max_pixels == 1024 * 1024 and args.unet is None and args.dtype == "auto"  # the core's rule
    with pytest.raises(AppSetupError, match="both --unet and --autoencoder"):
        AppSettings(unet=str(UNET))
    with pytest.raises(ResShiftError, match="unknown release"):
        AppSettings(release="nope")
    with pytest.raises(ResShiftError, match="dtype"):
        AppSettings(dtype="fp8")


def test_model_menu_offers_local_files_first(service):
    choices = service.model_choices()
    assert choices[0][1] == LOCAL_CHOICE and "unet.safetensors" in choices[0][0]
    assert "realsr-v3" in [value for _, value in choices] and service.default_choice() == LOCAL_CHOICE
    assert "S-Lab License 1.0" in service.describe("realsr-v3")
    assert UpscaleService(AppSettings(output_dir=service.settings.output_dir)).default_choice() == "realsr-v3"


def test_service_run_gives_a_4x_png_with_per_step_progress(service):
    progress = Recorder()
    result = service.run(astronaut(), LOCAL_CHOICE, seed=7, chop_size=0,
                         progress=lambda fraction, desc: progress(fraction, desc))
    assert result.output_size == (128, 128) and result.input_size == (32, 32) and result.seed == 7
    with Image.open(result.result_path) as image:
        assert (image.format, image.size) == ("PNG", (128, 128))
    with Image.open(result.before_path) as image:
        assert image.size == (128, 128)
    steps = [desc for _, desc in progress.calls if desc and desc.startswith("step")]
    assert steps == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    # the bar counts every network call of the run: encoder, 4 UNet steps, decoder
    fractions = [f for f, desc in progress.calls if desc and desc[:4] in ("step", "enco", "deco")]
    assert fractions == pytest.approx([n / 6 for n in range(1, 7)])


def test_same_seed_same_image_random_seed_is_reported(service):
    small = astronaut(16)
    first = service.run(small, LOCAL_CHOICE, seed=3)
    second = service.run(small, LOCAL_CHOICE, seed=3)
    assert np.array_equal(np.asarray(Image.open(first.result_path)), np.asarray(Image.open(second.result_path)))
    drawn = service.run(small, LOCAL_CHOICE, seed=3, random_seed=True)
    assert 0 <= drawn.seed < 2 ** 31 and f"seed {drawn.seed}" in drawn.summary


def test_chopped_run_reports_patches(service):
    progress = Recorder()
    wide = astronaut(24).crop((0, 0, 24, 16))  # 24x16: two 16 px patches side by side
    result = service.run(wide, LOCAL_CHOICE, seed=1, chop_size=16, chop_stride=8,
                         progress=lambda fraction, desc: progress(fraction, desc))
    assert result.output_size == (96, 64) and "2 patches of 16 px" in result.summary
    steps = [desc for _, desc in progress.calls if desc and desc.startswith("step")]
    assert steps[0] == "step 1/4, patch 1/2" and steps[-1] == "step 4/4, patch 2/2" and len(steps) == 8


def test_latent_tiling_options_reach_the_pipeline(service):
    progress = Recorder()
    wide = astronaut(24).crop((0, 0, 24, 16))
    result = service.run(wide, LOCAL_CHOICE, seed=1, tile_size=16, tile_overlap=4,
                         progress=lambda fraction, desc: progress(fraction, desc))
    assert result.output_size == (96, 64) and "UNet in 3 tiles" in result.summary
    fractions = [f for f, desc in progress.calls if desc and desc[:4] in ("step", "enco", "deco")]
    assert any("tile " in desc for _, desc in progress.calls if desc)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)  # decoding ends the run


def test_input_checks(service, tmp_path):
    with pytest.raises(InputImageError, match="accepts at most 4,096 pixels"):
        service.run(astronaut(65), LOCAL_CHOICE)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputImageError, match="not an image"):
        service.run(str(text), LOCAL_CHOICE)
    with pytest.raises(InputImageError, match="upload an image first"):
        service.run(None, LOCAL_CHOICE)
    with pytest.raises(ResShiftError, match="stride"):  # the core's chop rule
        service.run(astronaut(16), LOCAL_CHOICE, chop_size=16, chop_stride=32)
    with pytest.raises(InputImageError, match="seed"):
        service.run(astronaut(16), LOCAL_CHOICE, seed=None)


def test_oversized_file_is_refused_before_decoding(service, tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("RGB", (5000, 5000)).save(big)
    from PIL import ImageFile

    opened = []
    original = ImageFile.ImageFile.load

    def spy(self, *args, **kwargs):
        opened.append(self.size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(InputImageError, match="5000x5000"):
        service.open_image(str(big))
    assert (5000, 5000) not in opened


def test_cancel_stops_between_steps(service):
    with pytest.raises(CancelledError):
        service.run(astronaut(16), LOCAL_CHOICE, cancel=lambda: True)


def test_pipeline_cache_loads_each_model_once_under_concurrency(monkeypatch):
    cache = PipelineCache(AppSettings(unet=str(UNET), autoencoder=str(VAE), device="cpu", max_loaded=1))
    loads = []

    def fake_load(choice, on_download):
        loads.append(choice)
        time.sleep(0.2)
        return object()

    monkeypatch.setattr(cache, "_load", fake_load)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(LOCAL_CHOICE))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [LOCAL_CHOICE] and len({id(pipe) for pipe in got}) == 1
    cache.get("realsr-v3")  # max_loaded=1: the local pipeline is dropped
    assert not cache.loaded(LOCAL_CHOICE) and cache.loaded("realsr-v3")


def test_comparison_html_fallback_escapes_and_stacks_both_images():
    page = comparison_html("gradio_api/file=/tmp/a b.png", 'gradio_api/file=/tmp/"x".png', 128, 96)
    assert page.count("<img") == 2 and 'type="range"' in page and "&quot;x&quot;" in page
    assert "aspect-ratio:128/96" in page


# -------------------------------------------------------------------------------------- gradio handlers
def call_run(run, image, model=LOCAL_CHOICE, seed=12345, random_seed=False, chop_size=0, chop_stride=0, mask=None,
             request=None, progress=None):
    return run(image, model, seed, random_seed, chop_size, chop_stride, mask, None, None, request=request,
               progress=progress or Recorder())


def test_handler_returns_slider_pair_file_and_seed(service, gr, tmp_path):
    from resshift_core.app import make_handlers

    run, _, describe = make_handlers(service)
    source = tmp_path / "astronaut.png"
    astronaut().save(source)
    progress = Recorder()
    pair, download, summary, seed = call_run(run, str(source), progress=progress)
    assert Path(download).name.startswith("astronaut_resshift_realsr-v3_x4_seed12345")
    assert [Image.open(p).size for p in pair] == [(128, 128), (128, 128)] and pair[1] == download
    assert seed == 12345 and "32x32 → 128x128" in summary
    assert sum(1 for _, desc in progress.calls if desc and desc.startswith("step")) == 4
    assert "realsr-v3" in describe(LOCAL_CHOICE)


def test_handler_errors_are_gr_errors_with_clear_messages(service, gr, tmp_path):
    from resshift_core.app import make_handlers

    run, _, _ = make_handlers(service)
    big = tmp_path / "big.png"
    astronaut(80).save(big)
    with pytest.raises(gr.Error, match="accepts at most 4,096 pixels"):
        call_run(run, str(big))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(gr.Error, match="not an image"):
        call_run(run, str(notes))
    with pytest.raises(gr.Error, match="upload an image first"):
        call_run(run, None)


def test_handler_wrong_model_files(gr, tmp_path):
    from resshift_core.app import make_handlers

    swapped = UpscaleService(AppSettings(unet=str(VAE), autoencoder=str(UNET), output_dir=str(tmp_path)))
    run, _, _ = make_handlers(swapped)
    with pytest.raises(gr.Error, match="cannot be used.*autoencoder"):
        call_run(run, astronaut(16))


def test_handler_offline_release_points_to_the_local_model(service, gr, tmp_path, monkeypatch):
    from resshift_core.app import make_handlers

    monkeypatch.setenv("RESSHIFT_OFFLINE", "1")
    offline = UpscaleService(AppSettings(unet=str(UNET), autoencoder=str(VAE), cache_dir=str(tmp_path / "cache"),
                                         output_dir=str(tmp_path / "out")))
    run, _, _ = make_handlers(offline)
    with pytest.raises(gr.Error) as caught:
        call_run(run, astronaut(16), model="realsr-v3")
    message = str(caught.value)
    assert "resshift_realsrx4_s4_v3.pth" in message and "local files" in message


def test_stop_button_cancels_the_running_job(service, gr):
    from resshift_core.app import make_handlers

    run, stop, _ = make_handlers(service)
    request = types.SimpleNamespace(session_hash="session-a")

    def press_stop(fraction, desc):
        if desc and desc.startswith("step 1"):
            stop(types.SimpleNamespace(session_hash="session-a"))

    with pytest.raises(gr.Error, match="stopped"):
        call_run(run, astronaut(16), request=request, progress=Recorder(press_stop))
    # the next run of the session starts afresh
    pair, _, _, _ = call_run(run, astronaut(16), request=request)
    assert Image.open(pair[1]).size == (64, 64)


def test_build_demo_with_slider_and_html_fallback(service, gr):
    from resshift_core.app import build_demo

    for slider in (True, False):
        demo = build_demo(service, slider=slider)
        kinds = {type(block).__name__ for block in demo.blocks.values()}
        assert ("ImageSlider" in kinds) == slider and "File" in kinds


# ------------------------------------------------------------------------------------------------ browser
def find_chromium() -> str | None:
    for candidate in (os.environ.get("RESSHIFT_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The app in a subprocess: yields (url, path of its log)."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
    port = free_port()
    folder = tmp_path_factory.mktemp("app_server")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", RESSHIFT_OFFLINE="1",
               RESSHIFT_CACHE=str(folder / "cache"), GRADIO_TEMP_DIR=str(folder / "gradio"), NO_PROXY="127.0.0.1",
               no_proxy="127.0.0.1")
    log_path = folder / "server.log"
    log = open(log_path, "w+")
    server = subprocess.Popen([sys.executable, "-m", "resshift_core.app", "--host", "127.0.0.1", "--port", str(port),
                               "--unet", str(UNET), "--autoencoder", str(VAE), "--release", "realsr-v3",
                               "--max-pixels", str(MAX_PIXELS), "--concurrency", "1", "--device", "cpu"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"the app exited with {server.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the app did not answer on {url} within 90 s:\n{log.read()}")
            time.sleep(0.3)
        yield url, log_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def app_url(app_server):
    return app_server[0]


@pytest.fixture(scope="module")
def browser_context(app_url):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set RESSHIFT_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="resshift_chromium_"), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


def open_page(context, url, image: Image.Image, folder: Path, name: str):
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#run-button")
    path = folder / f"{name}.png"
    image.save(path)
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#input-image img")
    return page


def wait_for_result(page, timeout_ms: int = 45_000) -> bytes:
    """The downloadable PNG of the finished run (its bytes, fetched through the page's own link)."""
    link = page.wait_for_selector("#result-file a[download]", timeout=timeout_ms)
    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    return response.body()


@pytest.mark.browser
def test_browser_upload_run_and_download(browser_context, app_url, tmp_path):
    page = open_page(browser_context, app_url, astronaut(32), tmp_path, "astronaut")
    assert "S-Lab License 1.0" in page.inner_text("#license")
    page.click("#run-button")
    result = wait_for_result(page)
    assert png_size(result) == (128, 128)
    # the comparison slider shows the bicubic input and the result, both at the output size
    page.wait_for_function("[...document.querySelectorAll('#result-slider img')].filter(i => i.naturalWidth).length"
                           " >= 2")
    widths = page.evaluate("[...document.querySelectorAll('#result-slider img')].map(i => [i.naturalWidth, "
                           "i.naturalHeight])")
    assert [128, 128] in widths and all(size == [128, 128] for size in widths if size[0])
    assert "32x32 → 128x128" in page.inner_text("#run-info")
    page.get_by_text("large images: tiling").click()  # show the options in the screenshot
    page.wait_for_selector("#chop-size input")
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.close()


@pytest.mark.browser
def test_browser_two_users_are_queued_and_both_finish(browser_context, app_server, tmp_path):
    app_url, log_path = app_server
    logged_before = log_path.read_text().count("job started")
    pages = [open_page(browser_context, app_url, astronaut(16, left=200 + 40 * i), tmp_path, f"user{i}")
             for i in range(2)]
    for page in pages:
        page.click("#run-button")
    for page in pages:
        assert png_size(wait_for_result(page)) == (64, 64)
        assert "16x16 → 64x64" in page.inner_text("#run-info")
        page.close()
    # --concurrency 1: the second job started only after the first had finished
    events = [line.split(": ")[1].split(":")[0] for line in log_path.read_text().splitlines()
              if "job started" in line or "job finished" in line]
    assert events[2 * logged_before:] == ["job started", "job finished"] * 2, events


@pytest.mark.browser
def test_browser_oversized_image_shows_an_error(browser_context, app_url, tmp_path):
    page = open_page(browser_context, app_url, astronaut(80), tmp_path, "big")
    page.click("#run-button")
    page.get_by_text("accepts at most 4,096 pixels").first.wait_for(timeout=20_000)
    assert page.locator("#result-file a[download]").count() == 0
    page.close()
