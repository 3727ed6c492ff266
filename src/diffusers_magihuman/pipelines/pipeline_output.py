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
from dataclasses import dataclass
from typing import Any

from diffusers.utils import BaseOutput


@dataclass
class MagiHumanPipelineOutput(BaseOutput):
    """Output of [`MagiHumanPipeline`] and [`MagiHumanSRPipeline`].

    Args:
        frames (`np.ndarray`, `torch.Tensor` or `list[list[PIL.Image.Image]]`):
            The video. `output_type="np"`: float array `(B, F, H, W, 3)` in `[0, 1]`; `"pt"`: tensor
            `(B, F, 3, H, W)` in `[0, 1]`; `"pil"`: `B` lists of `F` images; `"latent"`: the normalised Wan2.2
            video latent `(B, 48, T, H/16, W/16)`.
        audio (`np.ndarray` or `torch.Tensor`):
            The speech/sound track. Decoded: waveform `(B, 2, S)` in `[-1, 1]` at `pipe.audio_sample_rate`
            (44.1 kHz), numpy for `"np"`/`"pil"`, a tensor for `"pt"`; `"latent"`: the audio latent `(B, Na, 64)`.
    """

    frames: Any
    audio: Any
