"""SR-1080p local attention kernels (per-frame SDPA or FA4, one FA4 varlen call, one flex call), full-size random DiT.

    python benchmarks/local_attention.py --output local_attention.json           # CUDA, >= 80 GB
    python benchmarks/local_attention.py --tiny                                  # code path check on a CPU

Reports the DiT forward time (eager and with `compile_repeated_blocks(fullgraph=True)`), peak memory and the
relative L2 difference of the outputs between the two kernels (both compute the same single softmax; the difference
is bf16 rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_magihuman as bm  # noqa: E402

from diffusers_magihuman.models.transformer_magihuman import MagiHumanAttnProcessor  # noqa: E402


def set_kernel(model, kernel: str) -> None:
    """`per_frame` (SDPA, one call per query frame), `per_frame_fa4` (the same on FlashAttention-4), `varlen` (one
    FA4 varlen call per layer) or `flex` (one block-sparse flex call per layer)."""
    for block in model.blocks:
        processor = block.attn.processor
        processor.local_attn_kernel = "per_frame" if kernel == "per_frame_fa4" else kernel
        processor.use_flash_attention_4 = kernel in ("per_frame_fa4", "varlen")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--kernels", default="per_frame,flex", help="also: per_frame_fa4, varlen (FA4)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    model = bm.build_dit("sr_1080p", device, args.tiny, pad=8, seed=0)
    assert all(isinstance(b.attn.processor, MagiHumanAttnProcessor) for b in model.blocks)
    shapes = bm.clip_shapes("1080p", 5 if not args.tiny else 1, args.tiny)
    inputs = bm.make_dit_inputs(model, shapes, 300 if not args.tiny else 7, device, seed=0)
    results, outputs = [], {}
    for mode in args.modes.split(","):
        if mode == "compiled":
            model.compile_repeated_blocks(fullgraph=True)
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for kernel in args.kernels.split(","):
            set_kernel(model, kernel)
            if mode == "compiled":
                torch._dynamo.reset()
                model.compile_repeated_blocks(fullgraph=True)

            def forward():
                with torch.no_grad():
                    return model(**inputs, return_dict=False)

            row = {"mode": mode, "kernel": kernel}
            try:
                with bm.peak_memory(device, row):
                    row.update(bm.time_fn(forward, device, warmup=1, repeats=args.repeats))
                out = forward()
                outputs[(mode, kernel)] = out
                ref = outputs.get((mode, "per_frame"))
                if ref is not None and kernel != "per_frame":
                    row["rel_l2_vs_per_frame_video"] = bm.rel_l2(out[0], ref[0])
                    row["rel_l2_vs_per_frame_audio"] = bm.rel_l2(out[1], ref[1])
            except Exception as error:  # report and go on
                row["error"] = bm.short_error(error)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times_ms"}), flush=True)
    meta = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__}
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"meta": meta, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
