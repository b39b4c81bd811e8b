"""Any output size: parsing and validating requests, target sizes, pass plans and the exact final resize."""

from __future__ import annotations

import json

import pytest
import torch

from resshift_core.errors import InvalidArgumentError
from resshift_core.sizing import (
    OutputSize,
    SizePlan,
    output_size,
    parse_size,
    plan_size,
    resize_exact,
    target_dimensions,
)

# --- parse_size ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, width, height", [
    ("2048x1536", 2048, 1536),
    ("2048x", 2048, None),
    ("x1536", None, 1536),
    (" 640 X 480 ", 640, 480),
    ("640×480", 640, 480),
    ("1x1", 1, 1),
    ("65536x", 65536, None),
])
def test_parse_size(text, width, height):
    assert parse_size(text) == OutputSize(width=width, height=height)


@pytest.mark.parametrize("text", ["", "x", "2048", "axb", "2048x1536x2", "-5x10", "0x100", "100x0", "1.5x2",
                                  "2048 1536", "65537x", "x99999999"])
def test_parse_size_refuses_bad_text(text):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_size(text)
    assert caught.value.argument == "size"
    assert caught.value.value == text


def test_parse_size_message_names_the_formats():
    with pytest.raises(InvalidArgumentError, match="WxH, Wx or xH with positive integers"):
        parse_size("big")


# --- output_size ---------------------------------------------------------------------------------------------------


def test_nothing_given_is_native():
    for empty in (None, 0, "", 0.0):
        request = output_size(scale=empty, size=empty, width=empty, height=empty, longest_side=empty)
        assert request.is_native(), empty
        assert request == OutputSize()
    assert not output_size(scale=4).is_native()


def test_zero_means_not_given_for_every_field():
    assert output_size(scale=0, width=2048, height=0) == OutputSize(width=2048)
    assert output_size(scale=2, width=0, longest_side=0, size="") == OutputSize(scale=2.0)
    assert output_size(size="x600", width=0) == OutputSize(height=600)
    assert output_size(longest_side=1024, scale=0.0) == OutputSize(longest_side=1024)


def test_output_size_accepts_front_end_types():
    assert output_size(width=2048.0, height="1536") == OutputSize(width=2048, height=1536)
    assert output_size(scale="1.5") == OutputSize(scale=1.5)
    assert output_size(size=(800, 0)) == OutputSize(width=800)


@pytest.mark.parametrize("kwargs", [
    {"scale": 2, "size": "2048x1536"},
    {"scale": 2, "width": 2048},
    {"scale": 1.5, "longest_side": 1000},
    {"size": "2048x", "height": 600},
    {"longest_side": 1000, "width": 300},
])
def test_two_kinds_of_request_are_refused(kwargs):
    with pytest.raises(InvalidArgumentError, match="give one of them"):
        output_size(**kwargs)


def test_scale_with_size_names_both():
    with pytest.raises(InvalidArgumentError) as caught:
        output_size(scale=2, size="2048x1536")
    assert caught.value.argument == "scale"
    assert "scale" in str(caught.value) and "size" in str(caught.value)


@pytest.mark.parametrize("kwargs, argument", [
    ({"scale": -2}, "scale"),
    ({"scale": 64.5}, "scale"),
    ({"scale": float("nan")}, "scale"),
    ({"scale": "fast"}, "scale"),
    ({"width": -1}, "width"),
    ({"height": 65537}, "height"),
    ({"width": 100.5}, "width"),
    ({"longest_side": -2048}, "longest_side"),
    ({"size": "2048y1536"}, "size"),
])
def test_out_of_range_values_are_refused(kwargs, argument):
    with pytest.raises(InvalidArgumentError) as caught:
        output_size(**kwargs)
    assert caught.value.argument == argument


def test_limits_are_inclusive():
    assert output_size(scale=64).scale == 64
    assert output_size(width=65536, height=1) == OutputSize(width=65536, height=1)


def test_output_size_constructed_directly_is_validated():
    with pytest.raises(InvalidArgumentError):
        OutputSize(width=0)  # only output_size reads 0 as "not given"
    with pytest.raises(InvalidArgumentError, match="give one of them"):
        OutputSize(scale=2.0, height=100)


@pytest.mark.parametrize("request_, text", [
    (OutputSize(), "model scale"),
    (OutputSize(scale=2.0), "x2"),
    (OutputSize(scale=1.5), "x1.5"),
    (OutputSize(width=2048, height=1536), "2048x1536"),
    (OutputSize(width=2048), "2048x(auto)"),
    (OutputSize(height=1536), "(auto)x1536"),
    (OutputSize(longest_side=2048), "longest side 2048"),
])
def test_describe(request_, text):
    assert request_.describe() == text


# --- target_dimensions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, size", [
    (2, (80, 64)), (3, (120, 96)), (8, (320, 256)), (16, (640, 512)), (1.5, (60, 48)), (1, (40, 32)),
    (0.01, (1, 1)),  # never below one pixel
])
def test_target_for_a_factor(scale, size):
    assert target_dimensions(40, 32, output_size(scale=scale)) == size


def test_native_target_is_the_model_scale():
    assert target_dimensions(40, 32, OutputSize()) == (160, 128)
    assert target_dimensions(40, 32, OutputSize(), model_scale=2) == (80, 64)


def test_one_side_keeps_the_aspect_ratio():
    assert target_dimensions(40, 32, output_size(width=100)) == (100, 80)
    assert target_dimensions(40, 32, output_size(height=100)) == (125, 100)
    assert target_dimensions(300, 200, output_size(width=100)) == (100, 67)  # 66.67 rounds to the nearest pixel
    assert target_dimensions(1000, 1, output_size(width=10)) == (10, 1)  # at least one pixel


def test_both_sides_are_taken_as_they_are():
    assert target_dimensions(40, 32, output_size(size="100x100")) == (100, 100)


def test_longest_side():
    assert target_dimensions(40, 32, output_size(longest_side=200)) == (200, 160)
    assert target_dimensions(32, 40, output_size(longest_side=200)) == (160, 200)
    assert target_dimensions(50, 50, output_size(longest_side=75)) == (75, 75)


def test_halves_round_up():
    assert target_dimensions(43, 41, output_size(scale=1.5)) == (65, 62)  # 64.5 -> 65, 61.5 -> 62


# --- plan_size -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, passes, resized", [
    (1, 1, True),     # one pass, downscaled back to the input size
    (2, 1, True),
    (3, 1, True),
    (4, 1, False),
    (8, 2, True),
    (16, 2, False),
    (64, 3, False),
])
def test_passes_for_a_factor(scale, passes, resized):
    plan = plan_size(40, 32, output_size(scale=scale))
    assert plan.passes == passes
    assert plan.needs_resize is resized
    assert (plan.out_width, plan.out_height) == (round(40 * scale), round(32 * scale))
    assert plan.pass_sizes == tuple((40 * 4 ** n, 32 * 4 ** n) for n in range(1, passes + 1))


def test_just_above_the_model_scale_takes_a_second_pass():
    plan = plan_size(400, 300, output_size(scale=4.01))
    assert (plan.out_width, plan.out_height) == (1604, 1203)
    assert plan.passes == 2 and plan.needs_resize
    # On a small input, 4.01 rounds to exactly x4: the output size decides, not the factor.
    assert plan_size(40, 32, output_size(scale=4.01)).passes == 1


def test_native_request_is_one_pass_without_resize():
    plan = plan_size(40, 32, OutputSize())
    assert (plan.passes, plan.needs_resize, plan.out_width, plan.out_height) == (1, False, 160, 128)


def test_exact_size_needs_both_sides_covered():
    plan = plan_size(40, 32, output_size(size="161x100"))  # width just past x4: a second pass for it
    assert plan.passes == 2 and plan.pass_sizes[-1] == (640, 512)


def test_more_passes_than_allowed_tells_the_largest_factor():
    with pytest.raises(InvalidArgumentError, match=r"at most x16") as caught:
        plan_size(40, 32, output_size(scale=17), max_passes=2)
    assert caught.value.argument == "scale"
    with pytest.raises(InvalidArgumentError, match=r"at most x256 .*10240x8192") as caught:
        plan_size(40, 32, output_size(width=20000))
    assert caught.value.argument == "width"
    assert plan_size(40, 32, output_size(scale=16), max_passes=2).passes == 2  # the limit itself is allowed


def test_absurd_pass_output_is_refused():
    with pytest.raises(InvalidArgumentError, match="65536 pixels") as caught:
        plan_size(20000, 100, OutputSize())  # x4 would be 80000 px wide
    assert caught.value.argument == "scale"
    with pytest.raises(InvalidArgumentError, match="65536 pixels"):
        plan_size(10000, 10000, output_size(width=60000))  # the target fits, the second pass (160000) does not
    assert plan_size(16384, 100, OutputSize()).pass_sizes == ((65536, 400),)  # exactly the limit is fine


def test_restoration_model_scale_1_is_one_pass_and_a_resize():
    plan = plan_size(40, 32, output_size(scale=2), model_scale=1)
    assert plan.passes == 1 and plan.pass_sizes == ((40, 32),) and plan.needs_resize


def test_plan_describe():
    plan = plan_size(40, 32, output_size(scale=8))
    assert plan.describe() == "2 passes: 40x32 -> 160x128 -> 640x512, resized to 320x256"
    assert plan_size(40, 32, OutputSize()).describe() == "1 pass: 40x32 -> 160x128"


def test_metadata_is_json_serialisable():
    plan = plan_size(40, 32, output_size(width=300))
    record = plan.metadata()
    assert json.loads(json.dumps(record)) == record
    assert record["passes"] == 2
    assert record["pass_sizes"] == [[160, 128], [640, 512]]
    assert record["output_size"] == [300, 240]
    assert record["request"] == {"width": 300}
    assert record["resized"] is True


def test_size_plan_is_a_plain_record():
    plan = SizePlan(10, 10, 40, 40, 1, ((40, 40),), 4)
    assert not plan.needs_resize and plan.request.is_native()


# --- resize_exact --------------------------------------------------------------------------------------------------


def test_resize_exact_shape_dtype_and_range():
    images = torch.rand(2, 3, 37, 53, dtype=torch.float64)
    out = resize_exact(images, 20, 11)
    assert out.shape == (2, 3, 11, 20)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_resize_exact_clamps_bicubic_overshoot():
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1.0  # a hard edge: bicubic overshoots on both sides of it
    up = resize_exact(edge, 32, 32)
    assert up.shape == (1, 1, 32, 32)
    assert up.min() >= 0.0 and up.max() <= 1.0


def test_resize_exact_identity_when_already_that_size():
    images = torch.rand(1, 3, 16, 24)
    assert resize_exact(images, 24, 16) is images


def test_resize_exact_antialiases_a_downscale():
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = ((rows + cols) % 2).float().expand(1, 3, 64, 64)  # the highest frequency there is
    out = resize_exact(checker, 16, 16)
    assert out.shape == (1, 3, 16, 16)
    assert (out - 0.5).abs().max() <= 0.05


def test_resize_exact_filters_noise_on_a_downscale():
    # A 1-px checkerboard sampled at pixel centres gives 0.5 even unfiltered; noise tells the filter apart: its
    # standard deviation (0.29) drops to about 0.06 when 16 pixels are averaged, only to about 0.21 without it.
    noise = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert resize_exact(noise, 64, 64).std() < 0.1


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_exact_keeps_the_channels(channels):
    images = torch.rand(2, channels, 40, 32)
    images[:, -1] = 0.25  # a flat alpha stays flat
    out = resize_exact(images, 10, 8)
    assert out.shape == (2, channels, 8, 10)
    assert torch.allclose(out[:, -1], torch.full_like(out[:, -1], 0.25), atol=1e-5)


def test_resize_exact_mixed_axes():
    out = resize_exact(torch.rand(1, 3, 20, 80), 40, 40)  # width shrinks, height grows
    assert out.shape == (1, 3, 40, 40) and out.min() >= 0.0 and out.max() <= 1.0


def test_resize_exact_refuses_bad_input():
    with pytest.raises(ValueError):
        resize_exact(torch.rand(3, 8, 8), 4, 4)
    with pytest.raises(ValueError):
        resize_exact(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 4, 4)
    with pytest.raises(InvalidArgumentError):
        resize_exact(torch.rand(1, 3, 8, 8), 0, 4)
