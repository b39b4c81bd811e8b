#!/usr/bin/env python3
"""The README's GPU table from the results of ``tools/gpu_bench.py`` (``OUT/meta.json`` and ``OUT/stage_*.json``).

    python tools/gpu_readme_table.py gpu_results            # prints it and writes gpu_results/gpu_table.md

``tools/gpu_bench.py`` calls :func:`render` at its end; run this on its own to redo the table from the files of a run
that was cut short (every stage writes its figures as it goes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GIB = 2 ** 30
# issue 21's targets (fp16, default settings, whole pipeline per image)
TARGET_RATIO = 3.0
TARGET_PSNR = 40.0
TARGET_SECONDS = {512: 1.5, 1024: 6.0}
ESTIMATE_TOLERANCE = 0.25


def load(out: Path) -> tuple[dict, dict]:
    """(meta, {stage: its JSON}) of a results folder."""
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    stages = {}
    for path in sorted(out.glob("stage_*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        stages[data.get("stage", path.stem[len("stage_"):])] = data
    return meta, stages


def records(stages: dict, stage: str) -> list[dict]:
    return stages.get(stage, {}).get("records", [])


def fmt(value, pattern: str = "{:.2f}", missing: str = "-") -> str:
    if value is None:
        return missing
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def mark(ok: bool | None) -> str:
    return "?" if ok is None else ("yes" if ok else "**no**")


def find(items: list[dict], **keys) -> dict | None:
    for item in items:
        if all(item.get(k) == v for k, v in keys.items()) and item.get("status", "").startswith("ok"):
            return item
    return None


def header(meta: dict) -> str:
    if meta.get("gpu"):
        memory = f" ({meta['total_memory_bytes'] / GIB:.0f} GiB)" if meta.get("total_memory_bytes") else ""
        where = (f"{meta['gpu']}{memory}, driver {meta.get('driver') or '?'}, torch {meta.get('torch')} "
                 f"(CUDA {meta.get('cuda_runtime')}, cuDNN {meta.get('cudnn')})")
    else:
        where = f"CPU dry run, no GPU figure: {meta.get('cpu', '?')}, torch {meta.get('torch')}"
    peak = meta.get("peak_fp16_tflops")
    peak_text = (f"fp16 peak {peak:.0f} TFLOP/s dense ({meta.get('peak_source', 'datasheet')})" if peak
                 else "fp16 peak unknown for this card (no % column; give --peak-tflops)")
    return (f"**On a GPU**: {where}, {meta.get('date', '?')}; `tools/gpu_check.sh` (revision "
            f"{meta.get('revision') or '?'}), {meta.get('weights', '?')}, whole pipeline per image with the default "
            f"settings (tiling \"auto\"), input and output on the device, median of the timed runs after a warm-up; "
            f"{peak_text}.")


def speed_table(stages: dict) -> list[str]:
    speed, side, cap = records(stages, "speed"), records(stages, "side"), records(stages, "cap")
    sizes = sorted({r["size"] for r in speed if isinstance(r.get("size"), int)}
                   | {r["size"] for r in side if isinstance(r.get("size"), int)})
    lines = ["| LR side (-> output) | ours fp16 (s) | plan | official (s) | official / ours | PSNR vs official (dB) "
             "| peak ours (GiB) | estimate / peak | % of fp16 peak | ours bf16 (s) | 8 GiB cap (s) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        ours = find(speed, dtype="fp16", size=size)
        bf16 = find(speed, dtype="bf16", size=size)
        official = find(side, size=size)
        capped = next((r for r in cap if r.get("size") == size), None)
        ratio = (official["official_seconds"] / ours["seconds"]) if official and ours else None
        ratio_text = fmt(ratio, "{:.2f}x")
        if ratio is None and official:  # no default-settings time: the side-by-side's own (untiled) one
            ratio_text = fmt(official.get("speedup"), "{:.2f}x (untiled)")
        cap_text = "-"
        if capped:
            cap_text = (fmt(capped.get("seconds")) if str(capped.get("status", "")).startswith("ok")
                        else "**failed**" if str(capped.get("status", "")).startswith("failed") else "-")
        lines.append(" | ".join([
            f"| {size} px (-> {size * 4})",
            fmt(ours and ours["seconds"], "{:.3g}"),
            (ours or {}).get("plan") or "-",
            fmt(official and official["official_seconds"], "{:.3g}"),
            ratio_text,
            fmt(official and official.get("psnr_ours_vs_official"), "{:.1f}"),
            fmt(ours and ours.get("peak_gib")),
            fmt(ours and ours.get("estimate_ratio")),
            fmt(ours and ours.get("pct_fp16_peak"), "{:.1f}%"),
            fmt(bf16 and bf16["seconds"], "{:.3g}"),
            cap_text]) + " |")
    return lines


def compile_table(stages: dict) -> list[str]:
    rows = [r for r in records(stages, "compile") if r.get("size") is not None
            and (r.get("first_seconds") or str(r.get("status", "")).startswith("killed"))]
    if not rows:
        return []
    lines = ["`pipe.compile(mode=...)` (fp16, default settings; images in the order run: a first size, another size, "
             "the first again, ...; \"new graphs\": graphs dynamo compiled during that image):", "",
             "| mode | LR side | first call (s) | steady (s) | eager (s) | steady vs eager | new graphs "
             "| inductor cache |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        first = fmt(r.get("first_seconds"), "{:.1f}", r.get("status", "-"))
        lines.append(f"| {r['mode']} | {r['size']}{' (again)' if r.get('again') else ''} | "
                     f"{first} | {fmt(r.get('seconds'), '{:.3g}')} | "
                     f"{fmt(r.get('eager_seconds'), '{:.3g}')} | {fmt(r.get('speedup'), '{:.2f}x')} | "
                     f"{fmt(r.get('new_graphs'), '{}')} | {r.get('inductor_cache', '-')} |")
    return lines


def sdpa_table(stages: dict) -> list[str]:
    probes = [r for r in records(stages, "speed") if r.get("probe") == "sdpa" and r.get("keys")]
    if not probes:
        return []
    names = [name for name in ("default", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
             if any(name in r for r in probes)]
    lines = ["`scaled_dot_product_attention` at the autoencoder's attention shape (one head of 512 channels, "
             f"{probes[0]['dtype']}; ms, \"refused\": the backend does not take it):", "",
             "| queries x keys | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in probes:
        cells = []
        for name in names:
            value = r.get(name) or {}
            cells.append(fmt(value.get("seconds") and value["seconds"] * 1e3, "{:.2f}") if "seconds" in value
                         else "refused")
        lines.append(f"| {r['queries']} x {r['keys']} | " + " | ".join(cells) + " |")
    return lines


def stage_notes(stages: dict) -> list[str]:
    notes = []
    for name, data in stages.items():
        status = str(data.get("status", "?"))
        skipped = [r for r in data.get("records", []) if str(r.get("status", "")).startswith(("skipped", "failed",
                                                                                               "killed", "exit"))]
        if status != "done" or skipped:
            reasons = sorted({str(r["status"]) for r in skipped})
            notes.append(f"- stage `{name}`: {status}" + (f"; {'; '.join(reasons)}" if reasons else ""))
    return notes


def targets(stages: dict) -> list[str]:
    speed, side, cap = records(stages, "speed"), records(stages, "side"), records(stages, "cap")
    lines = []
    for size in (64, 256):
        ours, official = find(speed, dtype="fp16", size=size), find(side, size=size)
        if ours and official:
            ratio = official["official_seconds"] / ours["seconds"]
            psnr = official.get("psnr_ours_vs_official")
            lines.append(f"- {size} px: official / ours {ratio:.2f}x (>= {TARGET_RATIO:.0f}x: "
                         f"{mark(ratio >= TARGET_RATIO)}); untiled side by side {official.get('speedup', 0):.2f}x; "
                         f"PSNR {fmt(psnr, '{:.1f}')} dB "
                         f"(>= {TARGET_PSNR:.0f}: {mark(psnr >= TARGET_PSNR if psnr is not None else None)})")
    for size, limit in TARGET_SECONDS.items():
        ours = find(speed, dtype="fp16", size=size)
        if ours:
            lines.append(f"- {size} -> {size * 4} in {ours['seconds']:.2f} s (<= {limit} s: "
                         f"{mark(ours['seconds'] <= limit)})")
        capped = next((r for r in cap if r.get("size") == size), None)
        if capped:
            ok = str(capped.get("status", "")).startswith("ok")
            retries = capped.get("oom_retries")
            lines.append(f"- {size} px under the cap: {capped.get('status')} ({fmt(capped.get('seconds'))} s, peak "
                         f"{fmt(capped.get('peak_gib'))} GiB, plan {capped.get('plan') or '-'}, planned "
                         f"{capped.get('plan_planned') or '-'}, out-of-memory retries {fmt(retries, '{}')}): "
                         f"{mark(ok)}")
    within = [(r["size"], r["dtype"], r["estimate_ratio"]) for r in speed if r.get("estimate_ratio") is not None]
    if within:
        bad = [f"{s} px {d} {e:.2f}" for s, d, e in within if abs(e - 1) > ESTIMATE_TOLERANCE]
        lines.append(f"- memory estimate within 25% of the peak: {mark(not bad)}" + (f" (off: {', '.join(bad)})"
                                                                                    if bad else ""))
    compiled = [r for r in records(stages, "compile") if r.get("size") is not None]
    for mode in dict.fromkeys(r["mode"] for r in compiled):
        rows = [r for r in compiled if r["mode"] == mode]
        other = [r for r in rows if r.get("step", 0) > 1 and not r.get("again")]
        again = [r for r in rows if r.get("again") and r.get("status") == "ok"]
        if not other:
            continue
        texts, compiles = [], False
        for r in other:
            if r.get("status") == "ok":
                texts.append(f"{r['size']} px: {r['new_graphs']} new graphs, first call {r['first_seconds']:.1f} s")
                compiles |= r["new_graphs"] > 0
            else:
                texts.append(f"{r['size']} px: {r.get('status')}")
                compiles |= str(r.get("status", "")).startswith("killed")
        lines.append(f"- {mode}: an image of another size costs no new compile: {mark(not compiles)} "
                     f"({'; '.join(texts)})" + (f"; the first size again: {again[0]['new_graphs']} new graphs"
                                                 if again else ""))
    guard = [r for r in records(stages, "guard") if r.get("network") in ("unet", "decoder")]
    for r in guard:
        wider = ", ".join(r.get("rerun_dtypes") or []) or "-"
        lines.append(f"- fp16 overflow in the {r['network']}: {r.get('status')} (finite {r.get('finite')}, reruns "
                     f"{r.get('reruns')} in {wider}, {fmt(r.get('seconds'), '{:.3g}')} s against "
                     f"{fmt(r.get('clean_seconds'), '{:.3g}')} s clean)")
    for r in records(stages, "tests"):
        lines.append(f"- tests ({r.get('selection')}): {r.get('summary') or r.get('status')}"
                     + (f"; failed: {', '.join(r['failures'])}" if r.get("failures") else ""))
    return lines


def render(out: str | Path) -> str:
    out = Path(out)
    meta, stages = load(out)
    parts = [header(meta), "", *speed_table(stages)]
    compiled = compile_table(stages)
    if compiled:
        parts += ["", *compiled]
    sdpa = sdpa_table(stages)
    if sdpa:
        parts += ["", *sdpa]
    checks = targets(stages)
    if checks:
        parts += ["", "Issue 21's targets:", "", *checks]
    notes = stage_notes(stages)
    if notes:
        parts += ["", "Stages not complete:", "", *notes]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "gpu_results")
    table = render(out)
    (out / "gpu_table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
