"""``info``: what a weight file is (kind, architecture, release, schedule, parameters, dtypes, metadata)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ..checkpoints import AUTOENCODER_KIND, BUFFER_SUFFIXES, METADATA_PREFIX, UNET_KIND, identify_raw, read_checkpoint
from .common import EXIT_FAILED, EXIT_OK


def describe_checkpoint(path: str | os.PathLike) -> dict:
    """What a weight file is, as :func:`~resshift_core.checkpoints.identify_checkpoint` decides it, plus counts.

    ``dtypes`` counts every tensor by dtype (parameters and stored buffers); ``dtype`` is the parameters' own.
    Raises the library's CheckpointError for unsafe, damaged or unreadable files.
    """
    path = Path(path)
    raw = read_checkpoint(path)
    identity = identify_raw(raw)
    parameters = {k: t for k, t in raw.tensors.items() if not k.endswith(BUFFER_SUFFIXES)}
    parameter_dtypes = Counter(str(t.dtype).replace("torch.", "") for t in parameters.values())
    all_dtypes = Counter(str(t.dtype).replace("torch.", "") for t in raw.tensors.values())
    info: dict = {
        "file": str(path), "size_bytes": path.stat().st_size,
        "format": "safetensors" if raw.metadata or path.suffix.lower() == ".safetensors" else "torch pickle",
        "kind": identity.kind or "unknown", "tensors": len(raw.tensors),
        "parameters": int(sum(t.numel() for t in parameters.values())),
        "dtype": parameter_dtypes.most_common(1)[0][0] if parameter_dtypes else None, "dtypes": dict(all_dtypes),
        "metadata": dict(raw.metadata),
    }
    config = identity.config
    if identity.kind == UNET_KIND:
        info["architecture"] = {
            **config.to_dict(), "levels": len(config.channel_mult), "lr_feature_stages": config.feature_stages,
            "lr_path": ("LR image concatenated to the latent" if config.feature_stages == 0 else
                        f"LR feature extractor, {config.feature_stages} stride-2 stages "
                        f"(/{2 ** config.feature_stages})"),
        }
        named = raw.metadata.get(METADATA_PREFIX + "release")
        if named and (identity.release is None or identity.release_source != "file metadata"):
            info["release_note"] = f"the metadata names an unknown release {named!r}"
        info["release"] = identity.release.name if identity.release else None
        info["release_source"] = identity.release_source
        info["schedule"] = identity.schedule.to_dict() if identity.schedule else None
        info["one_step"] = identity.one_step
        info["space"] = "latent" if identity.latent_space else "pixel"
        info["autoencoder"] = identity.autoencoder
        info["tile_size"] = identity.tile_size
        info["scale"] = identity.scale
        info["task"] = identity.task
        if identity.release is not None:
            info["matches_release_architecture"] = identity.matches_release
    elif identity.kind == AUTOENCODER_KIND:
        info["architecture"] = {**config.to_dict(), "downsample_factor": config.downsample_factor}
        info["autoencoder"] = identity.autoencoder
    else:
        info["first_keys"] = list(raw.tensors)[:8]
    return info


def format_info(info: dict) -> str:
    kinds = {"unet": "UNet (ResShift diffusion network)", "autoencoder": "VQ autoencoder",
             "unknown": "unknown: neither a ResShift UNet nor its VQ autoencoder"}
    lines = [f"file:         {info['file']} ({info['size_bytes'] / 1e6:.1f} MB, {info['format']})",
             f"kind:         {kinds[info['kind']]}"]
    arch = info.get("architecture")
    if info["kind"] == "unet":
        lines += [
            f"architecture: {arch['levels']} levels, model channels {arch['model_channels']} x "
            f"{tuple(arch['channel_mult'])}, res blocks {tuple(arch['num_res_blocks'])}",
            f"              Swin: depth {arch['swin_depth']}, embed {arch['swin_embed_dim']}, {arch['num_heads']} "
            f"heads, window {arch['window_size']}, mlp ratio {arch['mlp_ratio']:g}, at latent sizes "
            f"{tuple(arch['attention_resolutions'])}",
            f"              latent channels in/out {arch['in_channels']}/{arch['out_channels']}, "
            f"mask input: {'yes' if arch['cond_mask'] else 'no'}, LR path: {arch['lr_path']}",
            f"              construction size: latent {arch['image_size']}, LR {arch['lq_size']} px "
            f"(padding multiple)"]
        if info["release"]:
            fits = "" if info.get("matches_release_architecture", True) else \
                " (but its architecture differs from the release's: a reduced or retrained model)"
            lines.append(f"release:      {info['release']} (from the {info['release_source']}; {info['task']}, "
                         f"x{info['scale']}){fits}")
        else:
            lines.append("release:      unknown: pass --release NAME when using it (see `releases`), or convert it "
                         "with `convert IN OUT --release NAME`")
        if info["space"] == "pixel":
            lines.append(f"space:        pixels (no autoencoder), x{info['scale']}"
                         + (f", tile {info['tile_size']} px (its training crop)" if info["tile_size"] else ""))
        if info["schedule"]:
            s = info["schedule"]
            steps = f"{s['steps']} steps" + (" (one network call: SinSR)" if info["one_step"] else "")
            lines.append(f"schedule:     {steps}, kappa {s['kappa']:g}, power {s['power']:g}, min noise level "
                         f"{s['min_noise_level']:g}, eta_T end {s['etas_end']:g}")
        else:
            lines.append("schedule:     unknown: pass --release")
    elif info["kind"] == "autoencoder":
        lines += [f"architecture: latent {arch['embed_dim']} channels, codebook {arch['n_embed']}, ch {arch['ch']} x "
                  f"{tuple(arch['ch_mult'])}, res blocks {tuple(arch['num_res_blocks'])}, downsampling "
                  f"/{arch['downsample_factor']}",
                  f"identified:   {info['autoencoder'] or 'not an official file name'}"]
    else:
        lines.append(f"first keys:   {', '.join(info['first_keys'])}")
    lines.append(f"parameters:   {info['parameters']:,} in {info['tensors']} tensors")
    counts = ", ".join(f"{count} {name}" for name, count in sorted(info["dtypes"].items()))
    lines.append(f"dtype:        {info['dtype']} (tensors: {counts})")
    if info["metadata"]:
        lines.append("metadata:")
        lines.extend(f"  {key} = {value}" for key, value in sorted(info["metadata"].items()))
    return "\n".join(lines)


def cmd_info(args) -> int:
    info = describe_checkpoint(args.file)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return EXIT_OK if info["kind"] != "unknown" else EXIT_FAILED


