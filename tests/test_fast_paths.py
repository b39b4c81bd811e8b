"""The speed paths compute the same thing as the plain ones: channels-last memory format, 1x1 convolutions as GEMMs,
and the tuned CPU allocator (which must also really be in force, or the speed it buys is lost silently)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resshift_core import ResShiftPipeline
from resshift_core.nets.layers import NearestUpsampleConv, PointwiseConv2d, is_channels_last
from resshift_core.nets.swin import SwinTransformerBlock
from resshift_core.nets.vqgan import AttnBlock

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/golden/public"


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_equals_conv2d_and_keeps_the_memory_format(batch, channels_last):
    torch.manual_seed(0)
    layer = PointwiseConv2d(24, 40)
    x = torch.randn(batch, 24, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = layer(x)
    torch.testing.assert_close(out, F.conv2d(x.contiguous(), layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    assert is_channels_last(out) == channels_last
    strided = torch.randn(batch, 24, 9, 14)[..., ::2]  # neither layout: the generic conv path
    torch.testing.assert_close(layer(strided), F.conv2d(strided, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_conv_equals_nearest_upsampling_then_the_3x3_conv(channels_last):
    torch.manual_seed(0)
    layer = NearestUpsampleConv(6, 5)
    x = torch.randn(2, 6, 5, 7)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def reference():
        return layer.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    with torch.no_grad():
        out = layer(x)
        assert out.shape == (2, 5, 10, 14) and is_channels_last(out) == channels_last
        torch.testing.assert_close(out, reference(), atol=1e-5, rtol=1e-5)
        layer.conv.weight.mul_(-2)  # weights changed in place (as load_state_dict does): the folded cache follows
        torch.testing.assert_close(layer(x), reference(), atol=1e-5, rtol=1e-5)

    # Training goes through the same path: gradients reach the official 3x3 weight.
    x.requires_grad_(True)
    layer(x).square().sum().backward()
    fast_grads = (x.grad.clone(), layer.conv.weight.grad.clone())
    x.grad, layer.conv.weight.grad = None, None
    reference().square().sum().backward()
    torch.testing.assert_close(fast_grads[0], x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_grads[1], layer.conv.weight.grad, atol=1e-4, rtol=1e-4)


def test_attention_blocks_agree_across_memory_formats():
    torch.manual_seed(0)
    swin = SwinTransformerBlock(64, level_size=16, num_heads=4, window=8, shift=4, mlp_ratio=2.0).eval()
    attn = AttnBlock(64).eval()
    x = torch.randn(2, 64, 16, 16)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for block in (swin, attn):
            plain, fast = block(x), block(x_cl)
            torch.testing.assert_close(fast, plain, atol=2e-5, rtol=1e-5)
            assert is_channels_last(fast), f"{type(block).__name__} dropped the channels-last format"
            assert plain.is_contiguous()


def test_channels_last_pipeline_matches_nchw_and_stays_channels_last():
    pipe = ResShiftPipeline.from_files(FIXTURE / "unet.safetensors", FIXTURE / "vae.safetensors", release="realsr-v3")
    assert pipe.channels_last, "channels-last is the default"
    image = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(1))

    dropped = []

    def watch(module, args, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and not is_channels_last(output):
            dropped.append(type(module).__name__)

    watched = (torch.nn.Conv2d, SwinTransformerBlock, AttnBlock)
    hooks = [m.register_forward_hook(watch) for net in (pipe.unet, pipe.autoencoder)
             for m in net.modules() if isinstance(m, watched) and not (isinstance(m, torch.nn.Conv2d)
                                                                       and m.out_channels == 1)]
    fast = pipe.upscale(image, seed=5, tiles="off")
    for hook in hooks:
        hook.remove()
    assert not dropped, f"these layers gave NCHW maps in a channels-last run: {sorted(set(dropped))}"

    pipe.to(channels_last=False)
    assert pipe.unet.out[2].weight.is_contiguous()
    plain = pipe.upscale(image, seed=5, tiles="off")
    torch.testing.assert_close(fast, plain, atol=2e-4, rtol=0)


def _run_python(code: str, **env_overrides) -> str:
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_overrides)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


_ALLOCATOR_PROBE = """
    import ctypes
    from resshift_core.runtime import tune_cpu_allocator
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    first, second = tune_cpu_allocator(), tune_cpu_allocator()
    block = libc.malloc(64 << 20)  # a 64 MiB feature map
    info = libc.mallinfo2()
    libc.free(block)
    print(first, second, "mmap" if info.hblkhd >= 64 << 20 else "heap")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the allocator setting is glibc's (Linux)")
def test_tuned_allocator_serves_large_blocks_from_the_heap_and_can_be_declined():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system")
    assert _run_python(_ALLOCATOR_PROBE) == "True True heap"
    assert _run_python(_ALLOCATOR_PROBE, RESSHIFT_CPU_ALLOCATOR="default") == "False False mmap"


def test_importing_the_library_leaves_the_allocator_alone():
    code = "import resshift_core, resshift_core.pipeline, resshift_core.runtime as r; print(r.cpu_allocator_tuned())"
    assert _run_python(code) == "False"


def test_networks_trace_as_one_graph_and_compiled_runs_match_eager():
    """torch.compile must see each network whole: a graph break (e.g. at the Swin bias cache) splits the UNet into
    dozens of graphs and hits dynamo's recompile limit, silently falling back to slow eager frames."""
    import torch._dynamo

    pipe = ResShiftPipeline.from_files(FIXTURE / "unet.safetensors", FIXTURE / "vae.safetensors", release="realsr-v3")
    latent = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    calls = [(pipe.unet, (latent, torch.tensor([2])), {"lq_features": latent}),
             (pipe.autoencoder.encode, (torch.rand(1, 3, 64, 64) * 2 - 1,), {}),
             (pipe.autoencoder.decoder, (latent,), {})]
    with torch.inference_mode():
        for network, args, kwargs in calls:
            torch._dynamo.reset()
            explained = torch._dynamo.explain(network)(*args, **kwargs)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons

    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    eager = pipe.upscale(image, seed=3, tiles="off")
    torch._dynamo.reset()
    pipe.compile(backend="aot_eager")  # traced and run through autograd's graph, no C++ compiler needed
    try:
        compiled = pipe.upscale(image, seed=3, tiles="off")
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)


def test_upsample_conv_reports_the_multiply_adds_it_saves():
    from torch.utils.flop_counter import FlopCounterMode

    layer = NearestUpsampleConv(4, 3)
    x = torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        layer(x)  # folds (and caches) the kernel: a one-off einsum not counted below
        with FlopCounterMode(display=False) as fast:
            layer(x)
    with torch.no_grad(), FlopCounterMode(display=False) as official:
        layer.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert official.get_total_flops() - fast.get_total_flops() == 2 * layer.multiply_adds_saved(tuple(x.shape))
