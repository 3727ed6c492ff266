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
"""Pipeline-level LoRA loading (`load_lora_weights`, `save_lora_weights`, `set_adapters`, `fuse_lora`, ...)."""

from diffusers.loaders.lora_pipeline import Mochi1LoraLoaderMixin


class MagiHumanLoraLoaderMixin(Mochi1LoraLoaderMixin):
    r"""
    LoRA for the MagiHuman pipelines: adapters live on the `transformer` only, in diffusers/peft key format
    (`transformer.blocks.{i}.attn.to_qkv_video.lora_A.weight`, ...). Every expert projection is an `nn.Linear`, so an
    adapter can target a single modality (`to_qkv_video`) or all of them (`to_qkv`, ...).

    diffusers' transformer-only mixin (written for Mochi, with no key conversion) already does exactly this; we reuse
    it as is rather than copy its methods. Fusing rounds into the bf16 block weights.
    """
