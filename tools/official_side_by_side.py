"""The official ResShift sampler beside resshift_core, on the same weights and the same replayed noise: seconds per
image, peak memory and the PSNR between the two outputs (a benchmark tool, not a test).

The official code is not part of this project: give a checkout of https://github.com/zsyOAOA/ResShift (branch
journal) with ``--official DIR`` (or ``RESSHIFT_OFFICIAL``). Its classes are built from the realsr-v3 config and run
the way its sampler runs them: fp32 weights under autocast on CUDA (``--no-amp`` for fp32), images padded to 64 px.

    python tools/official_side_by_side.py --official /tmp/ResShift --unet U.safetensors \
        --autoencoder V.safetensors --sizes 64,256 --ours-dtype fp16
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNET_PARAMS = dict(image_size=64, in_channels=3, model_channels=160, out_channels=3,
                   attention_resolutions=[64, 32, 16, 8], dropout=0, channel_mult=[1, 2, 2, 4],
                   num_res_blocks=[2, 2, 2, 2], conv_resample=True, dims=2, use_fp16=False, num_head_channels=32,
                   use_scale_shift_norm=True, resblock_updown=False, swin_depth=2, swin_embed_dim=192, window_size=8,
                   mlp_ratio=4, cond_lq=True, lq_size=64)
VQ_PARAMS = dict(embed_dim=3, n_embed=8192, ddconfig=dict(double_z=False, z_channels=3, resolution=256, in_channels=3,
                                                         out_ch=3, ch=128, ch_mult=[1, 2, 4], num_res_blocks=2,
                                                         attn_resolutions=[], dropout=0.0, padding_mode="zeros"))
DIFFUSION = dict(sf=4, schedule_name="exponential", schedule_kwargs={"power": 0.3}, etas_end=0.99, steps=4,
                 min_noise_level=0.2, kappa=2.0, weighted_mse=False, predict_type="xstart", timestep_respacing=None,
                 scale_factor=1.0, normalize_input=True, latent_flag=True)


def load(module: torch.nn.Module, path) -> torch.nn.Module:
    """Our safetensors file (official key names) into an official module; the Swin buffers it recomputes may be
    absent."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    buffers = (".attn_mask", ".relative_position_index")
    if unexpected or not all(k.endswith(buffers) for k in missing):
        raise SystemExit(f"{path} does not fit the official network: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unet", required=True)
    parser.add_argument("--autoencoder", required=True)
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ours-dtype", default="fp16")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="official run in fp32 (default: autocast "
                                                                            "on CUDA, as its sampler)")
    parser.add_argument("--official", default=os.environ.get("RESSHIFT_OFFICIAL"),
                        help="checkout of the official code (or RESSHIFT_OFFICIAL)")
    options = parser.parse_args()
    if not options.official or not (Path(options.official) / "models" / "unet.py").is_file():
        parser.error("give the official checkout with --official DIR (it must hold models/unet.py)")
    sys.path.insert(0, str(Path(options.official).resolve()))
    device = torch.device(options.device)
    amp = options.amp and device.type == "cuda"

    from ldm.models.autoencoder import VQModelTorch
    from models import gaussian_diffusion
    from models.script_util import create_gaussian_diffusion
    from models.unet import UNetModelSwin

    import resshift_core as rc
    from resshift_core.bench import input_image

    unet = load(UNetModelSwin(**UNET_PARAMS), options.unet).to(device).eval()
    vae = load(VQModelTorch(**VQ_PARAMS), options.autoencoder).to(device).eval()
    diffusion = create_gaussian_diffusion(**DIFFUSION)
    ours = rc.ResShiftPipeline.from_files(options.unet, options.autoencoder, release="realsr-v3", device=device,
                                          dtype=options.ours_dtype)
    queue = []
    real_randn_like = gaussian_diffusion.th.randn_like

    def replayed_randn_like(like, *args, **kwargs):
        return queue.pop(0).to(like.device, like.dtype) if queue else real_randn_like(like, *args, **kwargs)

    gaussian_diffusion.th.randn_like = replayed_randn_like

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for size in [int(s) for s in options.sizes.split(",")]:
        image = input_image(size).to(device)
        generator = torch.Generator().manual_seed(size)
        draws = [torch.randn(1, 3, size, size, generator=generator) for _ in range(DIFFUSION["steps"] + 1)]

        def official_run():
            queue[:] = list(draws)
            y0 = image * 2 - 1
            with torch.no_grad(), torch.autocast(device.type, enabled=amp):
                out = diffusion.p_sample_loop(y=y0, model=unet, first_stage_model=vae, noise=None,
                                              clip_denoised=False, model_kwargs={"lq": y0}, progress=False)
            return (out.clamp(-1, 1) * 0.5 + 0.5).float()

        def our_run():
            return ours.upscale(image, noise=draws, tiles="off")

        record = {"size": size, "amp": amp, "ours_dtype": options.ours_dtype}
        for name, run in (("official", official_run), ("ours", our_run)):
            run()
            times = []
            for _ in range(options.repeat):
                sync()
                start = time.perf_counter()
                out = run()
                sync()
                times.append(time.perf_counter() - start)
            record[name + "_seconds"] = statistics.median(times)
            record[name + "_all"] = times
            record[name + "_peak_mib"] = (torch.cuda.max_memory_allocated() / 2 ** 20) if device.type == "cuda" \
                else None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            record[name] = out
        diff = (record.pop("official") - record.pop("ours")).float()
        record["psnr_ours_vs_official"] = float(10 * torch.log10(1 / diff.pow(2).mean().clamp_min(1e-12)))
        record["max_abs_diff"] = float(diff.abs().max())
        record["speedup"] = record["official_seconds"] / record["ours_seconds"]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
