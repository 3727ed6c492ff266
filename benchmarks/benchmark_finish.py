# Copyright 2026 The diffusers-magihuman Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Where the time of a pipeline's decode goes: the latents-to-numpy step after the last denoising step.

    python benchmarks/benchmark_finish.py --output finish.json            # ~1-2 min on an H100
    python benchmarks/benchmark_finish.py --tiny --output /tmp/finish.json  # CPU code-path check

For a 5 s clip at 256p / 540p / 1080p (random latents, full-size random Turbo-VAE and Oobleck weights, bf16 Turbo-VAE,
fp32 Oobleck as the pipelines run them), each row times one part of `MagiHumanPipeline._finish` with
`output_type="np"` (one warm-up, then `--repeats` CUDA-synchronised calls, median):

* `turbo_decode`: `turbo_vae.decode(...)` alone (the default CUDA decode options);
* `whole_clip_to_numpy`: the earlier way to numpy: the whole clip cast to float32, clamped and scaled on the GPU, then
  one pageable device-to-host copy;
* `postprocess_video`: the pipeline's way (`video_to_numpy`: pieces through pinned buffers), with a check that both
  give the same values;
* `audio`: Oobleck decode, resampling, trimming and the copy to numpy;
* `finish`: the whole `_finish` (everything above plus the NaN checks), as a pipeline call runs it.

Then the host copy alone, to tell bandwidth from the rest: a contiguous float32 tensor of the 1080p clip's size to a
new pageable host tensor, to an already-touched one, and to a pinned one, and the bf16 tensor to a new pageable one.

A card with more than `--cap-gib` GiB (an H200) is capped with `torch.cuda.set_per_process_memory_fraction`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_magihuman as bm  # noqa: E402  (also puts the source checkout on sys.path)
from benchmark_pipeline import build_audio_vae  # noqa: E402

from diffusers_magihuman import MagiHumanPipeline, MagiHumanScheduler  # noqa: E402
from diffusers_magihuman.pipelines.pipeline_magihuman_base import _to_unit_range  # noqa: E402


GIB = 1024**3


def legacy_to_numpy(video: torch.Tensor):
    """The earlier copy to numpy: the whole clip scaled on its device, then one (pageable) copy to the host."""
    return _to_unit_range(video).permute(0, 2, 3, 4, 1).cpu().numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--resolutions", default="256p,540p,1080p")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap-gib", type=float, default=79.0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    meta = {
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "seconds": args.seconds,
    }
    meta.update(bm.cap_memory(device, args.cap_gib))
    results = []

    def record(**row):
        results.append(row)
        print(json.dumps(row, default=str), flush=True)
        if args.output:
            with open(args.output, "w") as handle:
                json.dump({"meta": meta, "results": results}, handle, indent=1, default=str)

    def timed(fn, repeats=args.repeats):
        out = fn()
        bm.sync(device)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            bm.sync(device)
            times.append(time.perf_counter() - t)
        return out, statistics.median(times), [round(x, 4) for x in times]

    turbo = bm.build_turbo_vae(device, args.tiny, dtype)
    audio_vae = build_audio_vae(device, args.tiny)
    pipe = MagiHumanPipeline(
        transformer=None, scheduler=MagiHumanScheduler(sampler="dmd"), vae=None, audio_vae=audio_vae,
        text_encoder=None, tokenizer=None, turbo_vae=turbo,
    )  # fmt: skip
    for resolution in [r for r in args.resolutions.split(",") if r]:
        s = bm.clip_shapes(resolution, args.seconds, args.tiny)
        g = torch.Generator().manual_seed(0)
        latent_shape = (1, 48, s["latent_frames"], s["latent_height"], s["latent_width"])  # the DiT's 48 channels
        latents = torch.randn(*latent_shape, generator=g).to(device)
        audio_latents = torch.randn(1, s["audio_frames"], 64, generator=g).to(device)
        row = {"resolution": resolution}
        raw, row["turbo_decode_s"], _ = timed(lambda: pipe._decode_latents_raw(latents, "turbo"))
        row["video_shape"] = list(raw.shape)
        row["video_gib_fp32"] = raw.numel() * 4 / GIB
        # before: the whole clip cast to float32 and scaled on the GPU, then one pageable device-to-host copy
        legacy, row["whole_clip_to_numpy_s"], row["whole_clip_times_s"] = timed(lambda: legacy_to_numpy(raw))
        new, row["postprocess_video_s"], row["postprocess_times_s"] = timed(lambda: pipe.postprocess_video(raw, "np"))
        row["same_values_as_whole_clip"] = bool(np.array_equal(legacy, new))
        del legacy, new
        video = raw

        def audio():
            wave = pipe.decode_audio_latents(audio_latents)
            return pipe.postprocess_audio(pipe.trim_audio_to_video(wave, video.shape[2]), "np")

        _, row["audio_s"], _ = timed(audio)
        _, row["finish_s"], row["finish_times_s"] = timed(lambda: pipe._finish(latents, audio_latents, "np", "turbo", True))
        record(**row)
        del video
        bm.free_memory()

    if device.type == "cuda":
        s = bm.clip_shapes("1080p", args.seconds, False)
        shape = (1, 4 * (s["latent_frames"] - 1) + 1, s["height"], s["width"], 3)
        x = torch.rand(shape, device=device)
        row = {"name": "host copy of a 1080p clip", "gib_fp32": x.numel() * 4 / GIB}
        _, row["to_new_pageable_s"], _ = timed(lambda: x.cpu())
        touched = torch.empty(shape)
        touched.fill_(0)
        _, row["to_touched_pageable_s"], _ = timed(lambda: touched.copy_(x))
        pinned = torch.empty(shape, pin_memory=True)
        _, row["to_pinned_s"], _ = timed(lambda: pinned.copy_(x))
        t = time.perf_counter()
        fresh = torch.empty(shape)
        fresh.fill_(0)
        row["new_pageable_first_touch_s"] = time.perf_counter() - t
        xb = x.to(torch.bfloat16)
        _, row["bf16_to_new_pageable_s"], _ = timed(lambda: xb.cpu())
        _, row["host_bf16_to_fp32_s"], _ = timed(lambda: xb.cpu().float())
        record(**row)


if __name__ == "__main__":
    main()
