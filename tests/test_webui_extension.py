"""Contract tests of the WebUI extension against small stand-ins of the WebUI modules it imports
(tests/webui_stubs/modules), with the reduced golden-fixture weights under the official file names."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resshift_core as rc
from tiny_weights import AUTOENCODER, UNET

ROOT = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).resolve().parent / "webui_stubs"
V3 = "ResShift 4x real-world v3"
ENTRY_ORDER = ["ResShift 4x real-world v3", "ResShift 4x real-world v1", "ResShift 4x real-world v2",
               "ResShift 4x bicubic", "SinSR 4x v1", "SinSR 4x v2"]


def _forget_host_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in ("modules", "webui_extension", "backend") or name.startswith("resshift_webui_script"):
            del sys.modules[name]


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """A stand-in WebUI with the extension's script loaded; models/ResShift holds the tiny v3 files."""
    _forget_host_modules()
    monkeypatch.syspath_prepend(str(STUBS))
    monkeypatch.syspath_prepend(str(ROOT))  # the WebUI puts the extension root on sys.path while scripts load
    from modules import devices, modelloader, paths, script_callbacks, shared

    models = tmp_path / "models"
    folder = models / "ResShift"
    folder.mkdir(parents=True)
    shutil.copy(UNET, folder / "resshift_realsrx4_s4_v3.safetensors")
    shutil.copy(AUTOENCODER, folder / "autoencoder_vq_f4.safetensors")
    paths.models_path = shared.models_path = str(models)
    shared.opts.resshift_seed = 7

    spec = importlib.util.spec_from_file_location("resshift_webui_script", ROOT / "scripts" / "resshift_upscaler.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    modelloader.load_upscalers()
    host = types.SimpleNamespace(shared=shared, modelloader=modelloader, devices=devices, script=script,
                                 callbacks=script_callbacks, folder=folder, paths=paths)
    yield host
    script_callbacks.script_unloaded_callback()
    _forget_host_modules()


@pytest.fixture
def core_calls(monkeypatch):
    """Replaces the core's run by a nearest-neighbour x4 that records its keyword arguments, for tests about what
    the extension does around the run (the real run is covered by the tests without this fixture)."""
    import torch.nn.functional as F
    from resshift_core.images import finish_output, prepare_input
    from resshift_core.sizing import resize_exact

    calls = []

    def fake_upscale(self, images, **kwargs):
        calls.append(kwargs)
        batch, pil_context = prepare_input(images)
        plan = self.plan_size(batch.shape[-1], batch.shape[-2], kwargs.get("size"))
        result = F.interpolate(batch, scale_factor=self.scale ** plan.passes, mode="nearest")
        return finish_output(resize_exact(result, plan.out_width, plan.out_height), pil_context)

    monkeypatch.setattr(rc.ResShiftPipeline, "upscale", fake_upscale)
    return calls


def entry(host, name=V3):
    return next(data for data in host.shared.sd_upscalers if data.name == name)


def pattern(width: int, height: int, mode: str = "RGB") -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), ((x // 2 + y // 2) % 2) * 200],
                   axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        image.putalpha(Image.fromarray(np.where(x < width // 2, 0, 255).astype(np.uint8), "L"))
    return image


def count_runs(monkeypatch, upscaler):
    calls = []
    original = type(upscaler).do_upscale

    def counted(self, img, selected_model, size=None):
        calls.append(img.size)
        return original(self, img, selected_model, size)

    monkeypatch.setattr(type(upscaler), "do_upscale", counted)
    return calls


def test_every_x4_release_is_listed_in_menu_order_with_local_file_or_official_url(webui):
    names = [data.name for data in webui.shared.sd_upscalers]
    assert names == ["None", "Lanczos"] + ENTRY_ORDER
    v3 = entry(webui)
    assert v3.scale == 4
    assert Path(v3.data_path) == webui.folder / "resshift_realsrx4_s4_v3.safetensors"
    assert entry(webui, "SinSR 4x v1").data_path == rc.RELEASES["sinsr-v1"].url


def test_scale_4_runs_the_model_once_and_returns_exactly_4x(webui, monkeypatch):
    data = entry(webui)
    calls = count_runs(monkeypatch, data.scaler)
    image = pattern(12, 8)
    result = data.scaler.upscale(image, 4, data.data_path)
    assert result.size == (48, 32)
    assert calls == [(12, 8)]
    lanczos = image.resize((48, 32), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(result, np.int16) - np.asarray(lanczos, np.int16)).mean() > 1.0


def test_fixed_seed_repeats_and_reaches_the_infotext(webui):
    data = entry(webui)
    state = webui.shared.state
    state.begin(job="extras")
    pp = webui.script.ScriptPostprocessingResShiftSeed()
    image = pattern(12, 8)
    first = data.scaler.upscale(image, 4, data.data_path)
    second = data.scaler.upscale(image, 4, data.data_path)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    post = types.SimpleNamespace(image=first, info={})
    pp.process(post)
    assert post.info == {"ResShift seed": "7"}


def test_random_seed_is_drawn_per_image_and_written_down(webui, core_calls):
    data = entry(webui)
    webui.shared.opts.resshift_seed = -1
    state = webui.shared.state
    state.begin(job="txt2img")
    image = pattern(12, 8)
    data.scaler.upscale(image, 4, data.data_path)
    data.scaler.upscale(image, 4, data.data_path)
    p = types.SimpleNamespace(extra_generation_params={})
    webui.script.ScriptResShiftSeed().postprocess_batch(p)
    seeds = [call["seed"] for call in core_calls]
    assert len(seeds) == 2 and all(0 <= seed < 2 ** 31 for seed in seeds)
    assert p.extra_generation_params["ResShift seed"] == ", ".join(map(str, dict.fromkeys(seeds)))


def test_scale_below_4_runs_once_and_resizes_down(webui, monkeypatch, core_calls):
    data = entry(webui)
    calls = count_runs(monkeypatch, data.scaler)
    result = data.scaler.upscale(pattern(12, 8), 2, data.data_path)
    assert calls == [(12, 8)]
    assert result.size == (24, 16)


def test_scale_above_4_runs_two_passes_to_the_exact_size(webui, monkeypatch):
    data = entry(webui)
    calls = count_runs(monkeypatch, data.scaler)
    events = []
    from webui_extension import progress

    original = progress.Bridge.on_step
    monkeypatch.setattr(progress.Bridge, "on_step", lambda self, step: (events.append(step), original(self, step)))
    result = data.scaler.upscale(pattern(12, 8), 8, data.data_path)
    assert calls == [(12, 8)] and result.size == (96, 64)  # one request, two x4 passes, one resize
    assert data.scaler._pipeline.last_size_plan.passes == 2
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1].done == events[-1].total


def test_alpha_is_kept(webui, core_calls):
    data = entry(webui)
    result = data.scaler.upscale(pattern(12, 8, "RGBA"), 4, data.data_path)
    assert result.mode == "RGBA" and result.size == (48, 32)
    alpha = np.asarray(result.getchannel("A"))
    assert alpha[:, :20].max() <= 10 and alpha[:, 28:].min() >= 245


def test_progress_counters_move_and_extras_bar_is_not_full_before_the_end(webui, monkeypatch):
    data = entry(webui)
    state = webui.shared.state
    state.begin(job="extras")
    state.job_count = 1
    state.nextjob()  # Extras counts the image before processing it
    webui.script.ScriptPostprocessingResShiftSeed().process_firstpass(types.SimpleNamespace(image=None, info={}))
    seen = []
    from webui_extension import progress

    original = progress.Bridge.on_step

    def watch(self, step):
        original(self, step)
        seen.append((state.job_no, state.sampling_step, state.sampling_steps))

    monkeypatch.setattr(progress.Bridge, "on_step", watch)
    webui.shared.opts.live_previews_enable = True
    data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    assert seen, "no progress reported"
    steps = [step for _, step, _ in seen]
    assert steps == sorted(steps) and steps[-1] == seen[-1][2] >= 4 + 2  # encoder, 4 steps, decoder
    assert {job_no for job_no, _, _ in seen} == {0}
    assert state.job_no == 1  # put back after the run
    assert state.current_image is not None and state.current_image.mode == "RGB"  # the core's cheap preview


def test_interrupt_raises_instead_of_returning_a_lanczos_image(webui):
    data = entry(webui)
    webui.shared.state.begin()
    webui.shared.state.interrupted = True
    with pytest.raises(rc.CancelledError):
        data.scaler.upscale(pattern(12, 8), 4, data.data_path)


def test_interrupt_between_steps_stops_the_run(webui, monkeypatch):
    data = entry(webui)
    state = webui.shared.state
    state.begin()
    from webui_extension import progress

    original = progress.Bridge.on_step

    def interrupt_after_first(self, step):
        original(self, step)
        state.interrupted = True

    monkeypatch.setattr(progress.Bridge, "on_step", interrupt_after_first)
    with pytest.raises(rc.CancelledError):
        data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    assert state.sampling_step < state.sampling_steps


def test_missing_weights_and_failed_download_give_the_core_offline_message(webui):
    data = entry(webui, "SinSR 4x v1")
    with pytest.raises(rc.ResShiftError) as caught:
        data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    message = str(caught.value)
    assert isinstance(caught.value, rc.OfflineError)
    assert str(webui.folder / "SinSR_v1.pth") in message and rc.RELEASES["sinsr-v1"].url in message
    assert "Temporary failure in name resolution" in message and "S-Lab License 1.0" in message
    assert [file.name for file in caught.value.files] == ["SinSR_v1.pth"]  # the autoencoder is there
    assert webui.modelloader.download_attempts[0][0] == rc.RELEASES["sinsr-v1"].url


def test_every_missing_file_is_named_at_once(webui):
    for path in webui.folder.iterdir():
        path.unlink()
    data = entry(webui)
    with pytest.raises(rc.OfflineError) as caught:
        data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    assert [file.name for file in caught.value.files] == ["resshift_realsrx4_s4_v3.pth", "autoencoder_vq_f4.pth"]


def test_download_switched_off_does_not_try(webui):
    webui.shared.opts.resshift_download = False
    data = entry(webui, "SinSR 4x v1")
    with pytest.raises(rc.OfflineError, match="SinSR_v1.pth") as caught:
        data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    assert webui.modelloader.download_attempts == []
    assert "Settings > Upscaling > Download missing ResShift weights" in str(caught.value)


def test_downloaded_files_are_used(webui, core_calls):
    release = rc.RELEASES["realsr-v1"]
    webui.modelloader.remote_files[release.url] = UNET.read_bytes()
    data = entry(webui, "ResShift 4x real-world v1")
    result = data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    assert result.size == (48, 32)
    assert (webui.folder / release.file_name).is_file()


def test_models_of_ones_own_are_listed_and_run_with_what_their_files_say(webui):
    """Files from the project's trainer get their own entries (from the file header, by the core); a pixel-space one
    runs with no autoencoder at all, a latent one fetches the autoencoder its file names; other files are not listed."""
    from tiny_weights import SR_RELEASE, pixel_space_unet

    pixel_space_unet(webui.folder / "my_tiny.safetensors")
    latent = rc.load_model(UNET, expect="unet", release=SR_RELEASE).network
    rc.save_unet(latent, webui.folder / "my_latent.safetensors", schedule=rc.RELEASES[SR_RELEASE].schedule, scale=4,
                 autoencoder="vq-f4")
    shutil.copy(AUTOENCODER, webui.folder / "some_vae.safetensors")  # not a UNet: no entry
    shutil.copy(UNET, webui.folder / "renamed_unet.safetensors")  # no metadata: nothing says how to run it
    webui.modelloader.load_upscalers()
    names = [data.name for data in webui.shared.sd_upscalers]
    assert names == ["None", "Lanczos"] + ENTRY_ORDER + ["ResShift: my_latent", "ResShift: my_tiny"]

    (webui.folder / "autoencoder_vq_f4.safetensors").unlink()
    webui.shared.opts.resshift_download = False
    tiny = entry(webui, "ResShift: my_tiny")
    assert tiny.scale == 4 and Path(tiny.data_path) == webui.folder / "my_tiny.safetensors"
    assert tiny.scaler.upscale(pattern(12, 8), 4, tiny.data_path).size == (48, 32)
    own = entry(webui, "ResShift: my_latent")
    with pytest.raises(rc.OfflineError) as caught:
        own.scaler.upscale(pattern(12, 8), 4, own.data_path)
    assert [file.name for file in caught.value.files] == ["autoencoder_vq_f4.pth"]
    shutil.copy(AUTOENCODER, webui.folder / "autoencoder_vq_f4.safetensors")
    assert own.scaler.upscale(pattern(12, 8), 4, own.data_path).size == (48, 32)


def test_settings_are_registered_in_the_upscaling_section(webui, monkeypatch):
    if "gradio" not in sys.modules:  # a stand-in for this test only: the app's tests need the real one afterwards
        monkeypatch.setitem(sys.modules, "gradio", types.SimpleNamespace(Number=object, Slider=object, Radio=object,
                                                                         Checkbox=object))
    webui.callbacks.ui_settings_callback()
    labels = webui.shared.opts.data_labels
    for key in ("resshift_seed", "resshift_tile_size", "resshift_tile_overlap", "resshift_dtype",
                "resshift_keep_loaded", "resshift_download"):
        assert labels[key].section == ("upscaling", "Upscaling")
    assert "S-Lab License 1.0" in labels["resshift_download"].comment_after


def test_tile_setting_reaches_the_core_and_zero_means_the_default(webui, core_calls):
    data = entry(webui)
    webui.shared.opts.resshift_tile_size = 0
    data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    webui.shared.opts.resshift_tile_size = 64
    webui.shared.opts.resshift_tile_overlap = 16
    data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    default = rc.TileSettings.resolve("cpu", tiling="auto")
    assert core_calls[0]["tiles"] == default  # 0: the core's default, as in every front-end
    tiles = core_calls[1]["tiles"]
    assert (tiles.mode, tiles.tile_size, tiles.overlap, core_calls[1]["seed"]) == ("auto", 64, 16, 7)


def test_tile_slider_offers_only_sizes_the_core_takes(webui):
    from webui_extension import settings

    slider = next(s for s in settings.SETTINGS if s.key == "resshift_tile_size").component_args
    minimum, step = rc.official_tile_range()
    offered = range(slider["minimum"] + slider["step"], slider["maximum"] + 1, slider["step"])
    assert slider["minimum"] == 0 and slider["step"] == step
    for value in offered:  # every non-zero stop is a valid tile for the released models
        rc.TileSettings.resolve("cpu", tile_size=value, latent_multiple=minimum)


def test_model_stays_loaded_unless_the_setting_says_otherwise(webui, core_calls):
    data = entry(webui)
    data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    kept = data.scaler._pipeline
    data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    assert kept is not None and data.scaler._pipeline is kept
    webui.shared.opts.resshift_keep_loaded = False
    data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    assert data.scaler._pipeline is None


def test_no_half_and_dtype_setting_choose_the_precision(webui):
    import torch

    scaler = entry(webui).scaler
    assert scaler.device_and_dtype() == (torch.device("cpu"), torch.float32)
    webui.shared.opts.resshift_dtype = "bfloat16"
    assert scaler.device_and_dtype()[1] == torch.bfloat16


def test_forge_memory_is_freed_before_a_run(webui, monkeypatch, core_calls):
    calls = []
    memory_management = types.SimpleNamespace(
        free_memory=lambda required, device, **kw: calls.append(("free", required)),
        get_torch_device=lambda: "cpu", unload_all_models=lambda: calls.append(("unload_all",)))
    monkeypatch.setitem(sys.modules, "backend", types.SimpleNamespace(memory_management=memory_management))
    monkeypatch.setitem(sys.modules, "backend.memory_management", memory_management)
    data = entry(webui)
    data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    data.scaler.upscale(pattern(12, 8), 4, data.data_path)
    assert calls[0] == ("unload_all",)  # nothing of ours loaded yet: everything goes
    assert calls[1][0] == "free" and calls[1][1] > data.scaler._pipeline.weight_bytes()  # the core's estimate


def test_fixed_upscaler_list_of_reforge_gets_our_entries_once(webui):
    from modules import modelloader, shared

    # Undo our wrapper, replace the loader by a fixed-list one, then load the script again as the fork would.
    webui.callbacks.script_unloaded_callback()
    webui.callbacks.callbacks_script_unloaded.clear()

    def fixed_list_loader():
        shared.sd_upscalers = []

    modelloader.load_upscalers = fixed_list_loader
    webui.script.install()
    modelloader.load_upscalers()
    modelloader.load_upscalers()
    assert [data.name for data in shared.sd_upscalers] == ENTRY_ORDER
    webui.callbacks.script_unloaded_callback()
    assert modelloader.load_upscalers is fixed_list_loader


def test_preload_adds_the_models_path_option(webui):
    import argparse

    spec = importlib.util.spec_from_file_location("resshift_preload", ROOT / "preload.py")
    preload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preload)
    parser = argparse.ArgumentParser()
    preload.preload(parser)
    assert parser.parse_args(["--resshift-models-path", "/x"]).resshift_models_path == "/x"
    assert parser.parse_args([]).resshift_models_path.endswith("ResShift")


def test_install_py_installs_nothing_outside_the_webui(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "nothing to install" in result.stdout


def test_install_py_uses_the_webui_helpers_for_what_is_missing(tmp_path):
    (tmp_path / "launch.py").write_text(
        "installed = []\n"
        "def is_installed(name):\n    return name != 'safetensors'\n"
        "def run_pip(command, desc=None):\n    print('PIP', command)\n")
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["PIP install safetensors"]


@pytest.mark.cuda
def test_on_cuda_automatic_precision_is_half_and_lowvram_brings_the_networks_back(webui, monkeypatch):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    webui.shared.cmd_opts.use_cpu = []
    data = entry(webui)
    seen = []
    original = rc.ResShiftPipeline.upscale

    def spy(self, images, **kwargs):
        weight = next(self.unet.parameters())
        seen.append((weight.device.type, weight.dtype))
        return original(self, images, **kwargs)

    monkeypatch.setattr(rc.ResShiftPipeline, "upscale", spy)
    assert data.scaler.upscale(pattern(12, 8), 4, data.data_path).size == (48, 32)
    assert next(data.scaler._pipeline.unet.parameters()).device.type == "cuda"  # kept loaded on the device
    webui.shared.cmd_opts.lowvram = True
    assert data.scaler.upscale(pattern(12, 8, "RGBA"), 4, data.data_path).mode == "RGBA"
    assert seen == [("cuda", torch.float16), ("cuda", torch.float16)]
    assert next(data.scaler._pipeline.unet.parameters()).device.type == "cpu"  # --lowvram: back after the run
