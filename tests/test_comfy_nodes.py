"""Contract tests of the ComfyUI node pack against small stand-ins of the ComfyUI modules (tests/comfy_stubs/).

The repository root is imported the way ComfyUI imports a custom node folder (a package named after its path, the
folder not on sys.path), once with the V3 schema available and once without (classic mappings). The networks are
the small golden-fixture models, so every run takes well under a second.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
import uuid
from pathlib import Path

import pytest
import torch
from tiny_weights import (
    AUTOENCODER,
    INPAINT_AUTOENCODER,
    INPAINT_RELEASE,
    INPAINT_UNET,
    SR_RELEASE,
    UNET,
    hostile_pickle,
    pixel_space_unet,
)

REPO = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).resolve().parent / "comfy_stubs"
OTHER_PACK_NAMES = {"ResShiftLoader", "ResShiftUpscale", "RESSHIFT_MODEL"}
NODE_IDS = {"ResShiftPipelineLoader", "ResShiftPipelineUpscale", "ResShiftPipelineEncode", "ResShiftPipelineSample",
            "ResShiftPipelineDecode", "ResShiftPipelineInpaint", "ResShiftPipelineColorFix"}


# ------------------------------------------------------------------------------------------------- fixtures
# The stand-in modules and one V3 load of the pack are shared by the tests of this file (a pack load and the first
# memory estimate of a pipeline take seconds); what tests record or change is reset around each test.
@pytest.fixture(scope="module")
def comfy_session(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(STUBS))
        for name in [m for m in sys.modules if m == "comfy" or m.startswith(("comfy.", "comfy_api"))
                     or m == "folder_paths"]:
            patch.delitem(sys.modules, name)
        import comfy.model_management
        import folder_paths

        patch.setattr(folder_paths, "models_dir", str(tmp_path_factory.mktemp("session_models")))
        patch.setattr(folder_paths, "folder_names_and_paths", {})
        pack = load_pack(patch, v3=True)
        session = _Session(pack, v3_nodes(pack), comfy.model_management, folder_paths)
        yield session


class _Session:
    def __init__(self, pack, nodes, model_management, folder_paths):
        self.pack, self.nodes = pack, nodes
        self.model_management, self.folder_paths = model_management, folder_paths
        self.host = sys.modules[pack.__name__ + ".comfy_nodes.host"]
        self.pipelines = {}


@pytest.fixture
def stubs(comfy_session, tmp_path, monkeypatch):
    """The ComfyUI stand-ins for one test: a fresh models folder under tmp_path, recordings cleared, and a progress
    hook that records (value, total, preview) and honours the interrupt flag as ComfyUI's does."""
    import comfy.utils

    folder_paths = comfy_session.folder_paths
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", {})
    comfy_session.host.register_models_folder()
    model_management = comfy_session.model_management
    model_management.reset()
    progress = []

    def hook(value, total, preview, node_id=None):
        progress.append((value, total, preview))
        model_management.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(hook)
    yield _Comfy(models / "resshift", model_management, folder_paths, progress)
    comfy.utils.set_progress_bar_global_hook(None)
    model_management.reset()


class _Comfy:
    def __init__(self, resshift_dir, model_management, folder_paths, progress):
        self.resshift_dir = resshift_dir
        self.model_management = model_management
        self.folder_paths = folder_paths
        self.progress = progress

    def add_models(self, unet=UNET, autoencoder=AUTOENCODER, unet_name="tiny_unet.safetensors",
                   autoencoder_name="tiny_vae.safetensors"):
        self.resshift_dir.mkdir(parents=True, exist_ok=True)
        (self.resshift_dir / unet_name).write_bytes(Path(unet).read_bytes())
        (self.resshift_dir / autoencoder_name).write_bytes(Path(autoencoder).read_bytes())
        return unet_name, autoencoder_name


def load_pack(monkeypatch, v3: bool = True):
    """Import the repository root as ComfyUI's nodes.load_custom_node does; returns the package module."""
    if not v3:
        monkeypatch.setitem(sys.modules, "comfy_api", None)  # `import comfy_api...` then raises ImportError
        monkeypatch.setitem(sys.modules, "comfy_api.latest", None)
    name = f"/custom_nodes/ResShift_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def v3_nodes(pack) -> dict:
    extension = asyncio.run(pack.comfy_entrypoint())
    return {node.GET_SCHEMA().node_id: node for node in asyncio.run(extension.get_node_list())}


def run_v3(node, **inputs):
    return node.execute(**inputs).args


def image_batch(batch=1, height=12, width=10, seed=0) -> torch.Tensor:
    """ComfyUI IMAGE: (B, H, W, 3) float32 in [0, 1]."""
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def v3_pack(comfy_session, stubs):
    return comfy_session.nodes


@pytest.fixture
def sr_pipeline(comfy_session, stubs):
    """The loader's output for the small super-resolution model (loaded once per file, through the loader)."""
    if "sr" not in comfy_session.pipelines:
        unet_name, vae_name = stubs.add_models()
        (comfy_session.pipelines["sr"],) = run_v3(comfy_session.nodes["ResShiftPipelineLoader"],
                                                  unet_name=unet_name, vae_name=vae_name, release=SR_RELEASE,
                                                  dtype="auto")
    return comfy_session.pipelines["sr"]


# ------------------------------------------------------------------------------------------- registration
def test_v3_comfyui_gets_only_the_entrypoint_with_all_nodes(stubs, monkeypatch):
    pack = load_pack(monkeypatch, v3=True)
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # ComfyUI would prefer the mappings over the V3 entrypoint
    nodes = v3_nodes(pack)
    assert set(nodes) == NODE_IDS
    for node_id, node in nodes.items():
        schema = node.GET_SCHEMA()
        assert schema.category == "image/upscaling/ResShift"
        assert schema.description and schema.display_name
        assert all(spec.tooltip for spec in schema.inputs), node_id
        assert all(spec.tooltip for spec in schema.outputs), node_id


def test_classic_comfyui_gets_mappings_built_from_the_same_definitions(stubs, monkeypatch):
    v3 = v3_nodes(load_pack(monkeypatch, v3=True))
    classic = load_pack(monkeypatch, v3=False)
    assert not hasattr(classic, "comfy_entrypoint")
    assert set(classic.NODE_CLASS_MAPPINGS) == NODE_IDS == set(classic.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, node_class in classic.NODE_CLASS_MAPPINGS.items():
        schema = v3[node_id].GET_SCHEMA()
        types = node_class.INPUT_TYPES()
        declared = {**types["required"], **types.get("optional", {})}
        assert list(declared) == [spec.id for spec in schema.inputs]
        assert set(types.get("optional", {})) == {spec.id for spec in schema.inputs if spec.optional}
        assert all(settings["tooltip"] for _, settings in declared.values())
        assert list(node_class.RETURN_TYPES) == [spec.io_type for spec in schema.outputs]
        assert node_class.DESCRIPTION == schema.description
        assert node_class.CATEGORY == schema.category
        assert classic.NODE_DISPLAY_NAME_MAPPINGS[node_id] == schema.display_name
        assert callable(getattr(node_class(), node_class.FUNCTION))


def test_node_ids_and_types_do_not_clash_with_the_other_resshift_pack(v3_pack):
    types = set()
    for node in v3_pack.values():
        schema = node.GET_SCHEMA()
        types |= {spec.io_type for spec in schema.inputs} | {spec.io_type for spec in schema.outputs}
    assert not (set(v3_pack) | types) & OTHER_PACK_NAMES
    assert {"RESSHIFT_PIPELINE", "RESSHIFT_LATENT"} <= types


def test_models_folder_is_registered_and_keeps_extra_model_paths_entries(stubs, monkeypatch, tmp_path):
    extra = tmp_path / "shared_models"
    extra.mkdir()
    (extra / "my_unet.safetensors").write_bytes(UNET.read_bytes())
    stubs.folder_paths.folder_names_and_paths["resshift"] = ([str(extra)], set())  # as extra_model_paths.yaml
    nodes = v3_nodes(load_pack(monkeypatch))
    paths, extensions = stubs.folder_paths.folder_names_and_paths["resshift"]
    assert paths == [str(stubs.resshift_dir), str(extra)]
    assert ".pth" in extensions and ".safetensors" in extensions
    stubs.add_models()
    loader = nodes["ResShiftPipelineLoader"].GET_SCHEMA()
    unet_options = next(spec for spec in loader.inputs if spec.id == "unet_name").options
    assert {"my_unet.safetensors", "tiny_unet.safetensors"} <= set(unet_options)
    assert "resshift_realsrx4_s4_v3.pth" in unet_options  # official names are offered for download
    release_options = next(spec for spec in loader.inputs if spec.id == "release").options
    assert release_options[0] == "auto" and SR_RELEASE in release_options


def test_each_file_list_keeps_to_its_kind_and_the_tooltip_says_what_will_download(stubs, v3_pack):
    stubs.add_models(unet_name="resshift_realsrx4_s4_v3.pth", autoencoder_name="autoencoder_vq_f4.pth")
    (stubs.resshift_dir / "mine.safetensors").write_bytes(UNET.read_bytes())  # a name that says nothing
    loader = v3_pack["ResShiftPipelineLoader"].GET_SCHEMA()
    unet_input, vae_input = (next(spec for spec in loader.inputs if spec.id == name)
                             for name in ("unet_name", "vae_name"))
    assert "autoencoder_vq_f4.pth" not in unet_input.options and "mine.safetensors" in unet_input.options
    assert "resshift_realsrx4_s4_v3.pth" not in vae_input.options and "mine.safetensors" in vae_input.options
    assert unet_input.options.index("resshift_realsrx4_s4_v3.pth") < unet_input.options.index("SinSR_v1.pth")
    assert "not there yet): " in unet_input.tooltip and "SinSR_v1.pth" in unet_input.tooltip  # to download
    assert "resshift_realsrx4_s4_v3.pth" not in unet_input.tooltip.split("not there yet): ")[1]  # present


# -------------------------------------------------------------------------------------------------- loading
def test_loader_wraps_both_networks_in_model_patchers_with_the_dtype_comfyui_chooses(stubs, v3_pack):
    import comfy.model_patcher

    unet_name, vae_name = stubs.add_models()
    stubs.model_management.UNET_DTYPE = torch.bfloat16
    (pipeline,) = run_v3(v3_pack["ResShiftPipelineLoader"], unet_name=unet_name, vae_name=vae_name,
                         release=SR_RELEASE, dtype="auto")
    assert [type(p) for p in pipeline.patchers] == [comfy.model_patcher.ModelPatcher] * 2
    networks = [p.model for p in pipeline.patchers]
    assert all(next(n.parameters()).dtype == torch.bfloat16 for n in networks)
    (question,) = stubs.model_management.DTYPE_CALLS
    assert question["model_params"] == sum(p.numel() for p in networks[0].parameters())
    assert torch.float32 in question["supported_dtypes"]


def test_explicit_dtype_wins_over_comfyui_choice(stubs, v3_pack):
    unet_name, vae_name = stubs.add_models()
    stubs.model_management.UNET_DTYPE = torch.bfloat16
    (pipeline,) = run_v3(v3_pack["ResShiftPipelineLoader"], unet_name=unet_name, vae_name=vae_name,
                         release=SR_RELEASE, dtype="fp32")
    assert next(pipeline.patchers[0].model.parameters()).dtype == torch.float32


def test_a_pixel_space_unet_loads_and_upscales_without_its_autoencoder(stubs, v3_pack, monkeypatch):
    """A model from the pack's trainer needs no autoencoder: vae_name (an official file not on disk) is neither
    loaded nor fetched, even offline, and the upscale node returns the 4x image."""
    monkeypatch.setenv("RESSHIFT_OFFLINE", "1")
    stubs.resshift_dir.mkdir(parents=True, exist_ok=True)
    pixel_space_unet(stubs.resshift_dir / "my_tiny.safetensors")
    (pipeline,) = run_v3(v3_pack["ResShiftPipelineLoader"], unet_name="my_tiny.safetensors",
                         vae_name="autoencoder_vq_f4.pth", release="auto", dtype="fp32")
    assert len(pipeline.patchers) == 1 and pipeline.pipeline.autoencoder is None
    out_image, _ = run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=pipeline, image=image_batch(height=12, width=10),
                          seed=3, tile_size=0, tile_overlap=-1)
    assert out_image.shape == (1, 48, 40, 3) and 0.0 <= out_image.min() and out_image.max() <= 1.0
    assert sorted(p.name for p in stubs.resshift_dir.iterdir()) == ["my_tiny.safetensors"]


def test_autoencoder_given_as_unet_is_a_clear_node_error(stubs, v3_pack):
    _, vae_name = stubs.add_models()
    with pytest.raises(Exception) as caught:
        run_v3(v3_pack["ResShiftPipelineLoader"], unet_name=vae_name, vae_name=vae_name, release="auto",
               dtype="auto")
    assert type(caught.value).__name__ == "ResShiftNodeError"
    message = str(caught.value)
    assert "looks like the VQ autoencoder" in message and "the vae_name input" in message


def test_missing_official_file_offline_gives_the_core_offline_message(stubs, v3_pack, monkeypatch):
    monkeypatch.setenv("RESSHIFT_OFFLINE", "1")
    with pytest.raises(Exception) as caught:
        run_v3(v3_pack["ResShiftPipelineLoader"], unet_name="resshift_realsrx4_s4_v3.pth",
               vae_name="autoencoder_vq_f4.pth", release="auto", dtype="auto")
    message = str(caught.value)
    assert type(caught.value).__name__ == "ResShiftNodeError"
    assert "resshift_realsrx4_s4_v3.pth" in message and "autoencoder_vq_f4.pth" in message  # both, at once
    assert "https://" in message and str(stubs.resshift_dir) in message  # from where, to where
    assert not stubs.resshift_dir.exists() or not any(stubs.resshift_dir.iterdir())


def test_a_pickle_that_runs_code_is_refused_and_never_executed(stubs, v3_pack, tmp_path):
    marker = tmp_path / "code_ran"
    stubs.resshift_dir.mkdir(parents=True)
    hostile_pickle(stubs.resshift_dir / "hostile.pth", marker)
    _, vae_name = stubs.add_models()
    with pytest.raises(Exception) as caught:
        run_v3(v3_pack["ResShiftPipelineLoader"], unet_name="hostile.pth", vae_name=vae_name, release="auto",
               dtype="auto")
    assert type(caught.value).__name__ == "ResShiftNodeError" and "run code" in str(caught.value)
    assert not marker.exists()


def test_official_files_missing_from_the_folder_are_fetched_into_models_resshift(stubs, v3_pack, comfy_session,
                                                                                  monkeypatch):
    """The loader asks the core's downloader for the official names, with models/resshift as the destination (the
    download itself is the core's, tested there); here the 'download' copies the small models."""
    hub = sys.modules[comfy_session.pack.__name__ + ".resshift_core.hub"]
    fetched = []

    def fake_fetch_files(files, *, cache_dir=None, download=True, progress=True):
        paths = []
        for item in files:
            fetched.append((item.file_name, Path(cache_dir)))
            source = AUTOENCODER if item.file_name.startswith("autoencoder") else UNET
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            (Path(cache_dir) / item.file_name).write_bytes(source.read_bytes())
            progress(1, 1)
            paths.append(Path(cache_dir) / item.file_name)
        return paths

    monkeypatch.setattr(hub, "fetch_files", fake_fetch_files)
    (pipeline,) = run_v3(v3_pack["ResShiftPipelineLoader"], unet_name="resshift_realsrx4_s4_v3.pth",
                         vae_name="autoencoder_vq_f4.pth", release="auto", dtype="auto")
    assert [name for name, _ in fetched] == ["resshift_realsrx4_s4_v3.pth", "autoencoder_vq_f4.pth"]
    assert {folder for _, folder in fetched} == {stubs.resshift_dir}
    assert pipeline.pipeline.release.name == "realsr-v3"  # identified by its official name
    assert (stubs.resshift_dir / "autoencoder_vq_f4.pth").is_file()


# -------------------------------------------------------------------------------------------------- upscale
@pytest.fixture
def batch_run(comfy_session, stubs, v3_pack, sr_pipeline):
    """One upscale of a batch of 2 through the V3 node, with what ComfyUI's stand-ins saw (run once per file)."""
    if "batch_run" not in comfy_session.pipelines:
        image = image_batch(batch=2)
        core_pipeline, estimates = sr_pipeline.pipeline, []
        estimate = core_pipeline.working_memory

        def recorded_estimate(*args, **kwargs):
            estimates.append((args, kwargs, estimate(*args, **kwargs)))
            return estimates[-1][2]

        core_pipeline.working_memory = recorded_estimate
        try:
            out_image, out_mask = run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=sr_pipeline, image=image,
                                         seed=3, tile_size=0, tile_overlap=-1)
        finally:
            del core_pipeline.working_memory
        comfy_session.pipelines["batch_run"] = {
            "image": image, "out_image": out_image, "out_mask": out_mask, "estimates": estimates,
            "loads": list(stubs.model_management.LOAD_CALLS), "progress": list(stubs.progress)}
    return comfy_session.pipelines["batch_run"]


def test_upscale_keeps_the_batch_and_returns_comfy_images_at_four_times_the_size(batch_run, stubs):
    out_image, out_mask = batch_run["out_image"], batch_run["out_mask"]
    assert out_image.shape == (2, 48, 40, 3) and out_image.dtype == torch.float32
    assert out_image.device == stubs.model_management.intermediate_device()
    assert 0.0 <= out_image.min() and out_image.max() <= 1.0
    assert not torch.equal(out_image[0], out_image[1])  # each image of the batch is its own
    assert out_mask.shape == (2, 48, 40) and not out_mask.any()  # no mask in: opaque


def test_upscale_loads_models_through_comfyui_with_the_core_memory_estimate(batch_run, sr_pipeline):
    (call,) = batch_run["loads"]
    assert call["models"] == sr_pipeline.patchers
    assert call["force_full_load"] is True
    (((height, width), settings, estimate),) = batch_run["estimates"]  # the core was asked for this input
    assert (height, width, settings["batch"]) == (12, 10, 2)
    assert call["memory_required"] == estimate > 0


def test_upscale_matches_the_core_pipeline_for_the_same_seed(batch_run, sr_pipeline):
    direct = sr_pipeline.pipeline.upscale(batch_run["image"].movedim(-1, 1), seed=3)
    torch.testing.assert_close(batch_run["out_image"], direct.movedim(1, -1))


def test_progress_bar_counts_every_network_call_and_shows_previews(batch_run):
    progress = batch_run["progress"]
    values = [value for value, _, _ in progress]
    totals = {total for _, total, _ in progress}
    assert len(totals) == 1 and values[-1] == totals.pop()
    assert values == sorted(values) and len(values) >= 4  # encode, the steps, decode
    previews = [preview for _, _, preview in progress if preview is not None]
    assert previews
    kind, picture, size = previews[0]
    assert kind == "JPEG" and size == 512 and picture.mode == "RGB"


def test_interrupt_stops_the_run_at_the_next_network_call(stubs, v3_pack, sr_pipeline, monkeypatch):
    calls = []
    unet = sr_pipeline.patchers[0].model
    original_forward = unet.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", counting_forward)

    def interrupt_after_first_step(value, total, preview, node_id=None):
        stubs.progress.append((value, total, preview))
        if calls:
            stubs.model_management.interrupt_current_processing(True)

    import comfy.utils

    comfy.utils.set_progress_bar_global_hook(interrupt_after_first_step)
    with pytest.raises(stubs.model_management.InterruptProcessingException):
        run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=sr_pipeline, image=image_batch(), seed=1,
               tile_size=0, tile_overlap=-1)
    assert len(calls) == 1  # the release has 4 steps; none ran after the cancel


def test_mask_path_carries_alpha_to_the_output_size(stubs, v3_pack, sr_pipeline):
    mask = torch.zeros(1, 12, 10)
    mask[:, :, :5] = 1.0  # left half transparent, as LoadImage gives alpha = 0 there
    _, out_mask = run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=sr_pipeline, image=image_batch(), seed=1,
                         tile_size=0, tile_overlap=-1, mask=mask)
    assert out_mask.shape == (1, 48, 40)
    assert torch.all(out_mask[:, :, :16] > 0.99) and torch.all(out_mask[:, :, 24:] < 0.01)
    assert 0.0 <= out_mask.min() and out_mask.max() <= 1.0


def test_placeholder_mask_of_another_size_is_resized(stubs, v3_pack, sr_pipeline):
    # LoadImage gives a 64x64 zero mask for images without alpha
    _, out_mask = run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=sr_pipeline, image=image_batch(batch=2),
                         seed=1, tile_size=0, tile_overlap=-1, mask=torch.zeros(1, 64, 64))
    assert out_mask.shape == (2, 48, 40) and not out_mask.any()


def test_bad_tile_size_is_a_node_error_naming_the_input(stubs, v3_pack, sr_pipeline):
    with pytest.raises(Exception) as caught:
        run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=sr_pipeline, image=image_batch(), seed=1,
               tile_size=3, tile_overlap=-1)
    assert type(caught.value).__name__ == "ResShiftNodeError"
    assert "tile_size" in str(caught.value)


def test_wrong_pipeline_input_is_a_node_error(stubs, v3_pack):
    with pytest.raises(Exception, match="Load ResShift Pipeline"):
        run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline="not a pipeline", image=image_batch(), seed=1,
               tile_size=0, tile_overlap=-1)


# ---------------------------------------------------------------------------------- split and inpainting
def test_encode_sample_decode_equals_one_node_upscale(stubs, v3_pack, sr_pipeline, batch_run):
    loads_before = len(stubs.model_management.LOAD_CALLS)
    (latent,) = run_v3(v3_pack["ResShiftPipelineEncode"], pipeline=sr_pipeline, image=batch_run["image"],
                       tile_size=0, tile_overlap=-1)
    (sampled,) = run_v3(v3_pack["ResShiftPipelineSample"], pipeline=sr_pipeline, latent=latent, seed=3)
    (split,) = run_v3(v3_pack["ResShiftPipelineDecode"], pipeline=sr_pipeline, latent=sampled)
    torch.testing.assert_close(split, batch_run["out_image"])
    assert len(stubs.model_management.LOAD_CALLS) - loads_before == 3  # each stage has ComfyUI load the networks


def test_inpaint_fills_the_mask_and_keeps_the_rest(stubs, v3_pack):
    unet_name, vae_name = stubs.add_models(INPAINT_UNET, INPAINT_AUTOENCODER, "inpaint_unet.safetensors",
                                           "inpaint_vae.safetensors")
    (pipeline,) = run_v3(v3_pack["ResShiftPipelineLoader"], unet_name=unet_name, vae_name=vae_name,
                         release=INPAINT_RELEASE, dtype="auto")
    image = image_batch(height=16, width=16)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1.0
    (out,) = run_v3(v3_pack["ResShiftPipelineInpaint"], pipeline=pipeline, image=image, mask=mask, seed=2,
                    tile_size=0, tile_overlap=-1)
    assert out.shape == image.shape
    keep = mask[0] == 0
    torch.testing.assert_close(out[0][keep], image[0][keep])
    assert not torch.allclose(out[0][~keep], image[0][~keep])


def test_inpaint_with_a_super_resolution_release_is_a_node_error(stubs, v3_pack, sr_pipeline):
    with pytest.raises(Exception) as caught:
        run_v3(v3_pack["ResShiftPipelineInpaint"], pipeline=sr_pipeline, image=image_batch(),
               mask=torch.ones(1, 12, 10), seed=1, tile_size=0, tile_overlap=-1)
    assert type(caught.value).__name__ == "ResShiftNodeError"
    assert "inpaint" in str(caught.value)


# ----------------------------------------------------------------------------------------- classic style
def test_classic_nodes_run_on_the_march_2024_load_models_gpu(stubs, monkeypatch):
    """The classic nodes run the same upscale; the March 2024 engine's load_models_gpu takes only
    (models, memory_required), without force_full_load."""
    calls = []

    def old_load_models_gpu(models, memory_required=0):
        calls.append(memory_required)

    monkeypatch.setattr(stubs.model_management, "load_models_gpu", old_load_models_gpu)
    classic = load_pack(monkeypatch, v3=False).NODE_CLASS_MAPPINGS
    unet_name, vae_name = stubs.add_models()
    loader = classic["ResShiftPipelineLoader"]()
    (pipeline,) = getattr(loader, loader.FUNCTION)(unet_name=unet_name, vae_name=vae_name, release=SR_RELEASE,
                                                   dtype="auto")
    upscale = classic["ResShiftPipelineUpscale"]()
    image, mask = getattr(upscale, upscale.FUNCTION)(pipeline=pipeline, image=image_batch(), seed=4, tile_size=0,
                                                     tile_overlap=-1)
    assert image.shape == (1, 48, 40, 3) and mask.shape == (1, 48, 40)
    assert len(calls) == 1 and calls[0] > 0


# ------------------------------------------------------------------------------------- missing dependency
def test_missing_dependency_is_one_log_line_and_nodes_still_list_with_an_error_on_use(stubs, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if it were not installed
    with caplog.at_level(logging.ERROR):
        pack = load_pack(monkeypatch, v3=True)
    lines = [r for r in caplog.records if "safetensors" in r.getMessage()]
    assert len(lines) == 1 and "requirements.txt" in lines[0].getMessage()
    nodes = v3_nodes(pack)
    assert set(nodes) == NODE_IDS
    with pytest.raises(Exception, match="safetensors") as caught:
        run_v3(nodes["ResShiftPipelineLoader"], unet_name="x.pth", vae_name="y.pth", release="auto", dtype="auto")
    assert type(caught.value).__name__ == "ResShiftNodeError"


def test_only_host_module_imports_comfyui_at_import_time():
    """The layering: definitions, nodes and the two style builders are host-neutral; host.py alone imports
    ComfyUI's modules (the V3 check in comfy_nodes/__init__.py imports comfy_api inside a function)."""
    for path in (REPO / "comfy_nodes").glob("*.py"):
        top_level_imports = [line for line in path.read_text().splitlines()
                             if line.startswith(("import comfy", "from comfy", "import folder_paths"))]
        assert bool(top_level_imports) == (path.name == "host.py"), path.name


def test_requirements_name_what_the_nodes_import_without_pinning_torch_or_numpy():
    requirements = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    requirements = [r for r in requirements if r]
    names = {r.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip().lower() for r in requirements}
    assert {"torch", "numpy", "safetensors", "pillow"} <= names
    for requirement in requirements:
        if requirement.lower().startswith(("torch", "torchvision", "numpy")):
            assert requirement.lower() in ("torch", "torchvision", "numpy"), requirement


def test_pyproject_has_the_comfy_registry_table():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11: the table is simple enough to read line by line
        tomllib = None
    text = (REPO / "pyproject.toml").read_text()
    if tomllib is not None:
        comfy_table = tomllib.loads(text)["tool"]["comfy"]
    else:
        section = text.split("[tool.comfy]", 1)[1].split("\n[", 1)[0]
        comfy_table = dict(line.split(" = ", 1) for line in section.strip().splitlines() if " = " in line)
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy_table)
    assert (REPO / comfy_table["Icon"].strip('"')).is_file()


def test_template_workflows_match_their_api_copies():
    """The UI-format templates (ComfyUI's template browser) and the API copies the end-to-end test runs describe
    the same graphs, with the same ResShift settings."""
    templates = sorted((REPO / "example_workflows").glob("*.json"))
    assert {p.stem for p in templates} == {"upscale", "upscale_batch", "upscale_alpha", "split"}
    for template in templates:
        ui = json.loads(template.read_text())
        api = json.loads((REPO / "example_workflows" / "api" / template.name).read_text())
        assert sorted(n["type"] for n in ui["nodes"]) == sorted(n["class_type"] for n in api.values())
        for node in ui["nodes"]:
            if node["type"] == "ResShiftPipelineLoader":
                (loader,) = [n for n in api.values() if n["class_type"] == node["type"]]
                assert node["widgets_values"] == [loader["inputs"][k] for k in ("unet_name", "vae_name", "release",
                                                                                  "dtype")]
        assert len(ui["links"]) == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_networks_run_where_comfyui_loads_them_in_its_dtype(stubs, v3_pack, batch_run):
    """With ComfyUI on a GPU: the loader builds on the offload device, load_models_gpu moves the networks to CUDA,
    auto dtype follows ComfyUI (float16 here), and IMAGE comes back on the intermediate device (the CPU)."""
    stubs.model_management.TORCH_DEVICE = torch.device("cuda")
    stubs.model_management.UNET_DTYPE = torch.float16
    unet_name, vae_name = stubs.add_models()
    (pipeline,) = run_v3(v3_pack["ResShiftPipelineLoader"], unet_name=unet_name, vae_name=vae_name,
                         release=SR_RELEASE, dtype="auto")
    assert all(next(p.model.parameters()).device.type == "cpu" for p in pipeline.patchers)
    out_image, _ = run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=pipeline, image=batch_run["image"], seed=3,
                          tile_size=0, tile_overlap=-1)
    assert all(next(p.model.parameters()).device.type == "cuda" for p in pipeline.patchers)
    assert next(pipeline.patchers[0].model.parameters()).dtype == torch.float16
    assert out_image.device.type == "cpu" and out_image.shape == batch_run["out_image"].shape
    assert (out_image - batch_run["out_image"]).abs().mean() < 0.02  # float16 on CUDA vs float32 on the CPU


def _unet_out_of_memory_once(sr_pipeline, monkeypatch) -> list:
    """The UNet's first call raises the out-of-memory error CUDA raises; returns the list that records it."""
    unet = sr_pipeline.patchers[0].model
    original_forward, failures = unet.forward, []

    def forward_failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward_failing_once)
    return failures


def test_out_of_memory_inside_the_node_retries_with_smaller_tiles_and_the_same_noise(stubs, v3_pack, sr_pipeline,
                                                                                      batch_run, monkeypatch):
    failures = _unet_out_of_memory_once(sr_pipeline, monkeypatch)
    out_image, _ = run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=sr_pipeline, image=batch_run["image"],
                          seed=3, tile_size=0, tile_overlap=-1)
    assert failures == [1]
    torch.testing.assert_close(out_image, batch_run["out_image"])


@pytest.mark.parametrize("freed", [1 << 28, 0], ids=["comfyui-freed-memory", "nothing-to-free"])
def test_out_of_memory_first_asks_comfyui_to_free_other_models(stubs, v3_pack, sr_pipeline, batch_run, monkeypatch,
                                                                freed):
    """ComfyUI's memory goes first: other models are unloaded (ours kept) and its cache emptied; when that freed
    memory the run is tried again with the same tiles, and only otherwise are the tiles halved."""
    failures = _unet_out_of_memory_once(sr_pipeline, monkeypatch)
    monkeypatch.setattr(stubs.model_management, "FREE_BYTES", freed)
    stubs.model_management.FREE_CALLS.clear()
    out_image, _ = run_v3(v3_pack["ResShiftPipelineUpscale"], pipeline=sr_pipeline, image=batch_run["image"],
                          seed=3, tile_size=0, tile_overlap=-1)
    calls = stubs.model_management.FREE_CALLS
    assert calls[0]["memory_required"] > 0 and {"soft_empty_cache": True} in calls
    tiles = sr_pipeline.pipeline.last_plan.tiles
    assert tiles.mode == ("auto" if freed else "latent")  # the same tiles after ComfyUI made room, else smaller ones
    torch.testing.assert_close(out_image, batch_run["out_image"])  # one tile either way here: the same image
