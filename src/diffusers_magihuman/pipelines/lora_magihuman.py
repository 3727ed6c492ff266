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
    (`transformer.blocks.{i}.attn.video.to_q.lora_A.weight`, ...). Every expert projection is an `nn.Linear`, so an
    adapter can target a single modality (`video.to_q`) or every projection (`["to_q", "to_k", "to_v", "to_out.0"]`).

    diffusers' transformer-only mixin (written for Mochi, with no key conversion) already does exactly this; we reuse
    it as is rather than copy its methods. Fusing rounds into the bf16 block weights.
    """

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        r"""
        diffusers' [`~loaders.lora_pipeline.Mochi1LoraLoaderMixin.lora_state_dict`], also reading files written by
        `pipe.transformer.save_lora_adapter(...)`: their keys have no `transformer.` prefix (`blocks.0.attn...`),
        which the pipeline-level loader would otherwise skip ("no LoRA keys found"). Such keys get the prefix, so
        both routes load through `pipe.load_lora_weights`; files written by `save_lora_weights` load unchanged, and
        load into the transformer alone with `transformer.load_lora_adapter(path, prefix="transformer")`.
        """
        out = super().lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        state_dict = out[0] if isinstance(out, tuple) else out
        prefix = f"{cls.transformer_name}."
        # A bare PEFT state dict (`transformer.save_lora_adapter`) gets the component prefix; a dict without LoRA keys
        # is passed on unchanged, so diffusers logs that no LoRA keys were found instead of failing inside PEFT.
        if state_dict and not any(k.startswith(prefix) for k in state_dict) and any(".lora_" in k for k in state_dict):
            state_dict = {prefix + k: v for k, v in state_dict.items()}
            if isinstance(out, tuple):
                metadata = out[1] if len(out) > 1 else None
                if metadata and not any(k.startswith(prefix) for k in metadata):
                    # the adapter config is filtered by the same prefix as the weights
                    metadata = {prefix + k: v for k, v in metadata.items()}
                out = (state_dict, metadata) + tuple(out[2:])
            else:
                out = state_dict
        return out
