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
"""Random components built in code: the offline demo, the tests and (at full size) the benchmarks use them.

Random weights generate noise, not people. They exist so that every code path runs without downloading anything.
"""

from __future__ import annotations

import torch

from .constants import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD


TINY_TEXT_DIM = 16

_TINY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\":;<>-()"


def tiny_transformer_config(**overrides) -> dict:
    """A 2-layer MagiHuman DiT (layer 0 expert + gelu7, layer 1 shared swiglu7) that runs in milliseconds."""
    config = dict(
        num_layers=2,
        hidden_size=32,
        head_dim=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        in_channels=48,
        patch_size=(1, 2, 2),
        audio_in_channels=64,
        text_in_channels=TINY_TEXT_DIM,
        mm_layers=[0],
        gelu7_layers=[0],
        local_attn_layers=[],
        coords_style="v2",
    )
    config.update(overrides)
    return config


def full_transformer_config(variant: str = "base") -> dict:
    """The released architecture (15B): all defaults, plus local attention for the 1080p SR variant."""
    from .constants import SR_1080P_FRAME_RECEPTIVE_FIELD, SR_1080P_GLOBAL_LAYERS

    config: dict = {}
    if variant.startswith("sr"):
        config["coords_style"] = "v1"
    if variant == "sr_1080p":
        config["local_attn_layers"] = [i for i in range(40) if i not in SR_1080P_GLOBAL_LAYERS]
        config["frame_receptive_field"] = SR_1080P_FRAME_RECEPTIVE_FIELD
    return config


def make_tiny_transformer(seed: int = 0, **overrides):
    from .models.transformer_magihuman import MagiHumanTransformer3DModel

    torch.manual_seed(seed)
    model = MagiHumanTransformer3DModel(**tiny_transformer_config(**overrides)).eval()
    # Fresh norms are the identity and zero-init layers give zero outputs; perturb every parameter so that the
    # tiny model is a non-trivial function.
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype.is_floating_point:
                p.add_(torch.randn_like(p.float()).to(p.dtype) * 0.02)
    return model


def make_tiny_tokenizer():
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    for ch in _TINY_CHARS:
        vocab.setdefault(ch, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[])


def make_tiny_text_encoder(seed: int = 0, vocab_size: int | None = None):
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    vocab_size = vocab_size or len(make_tiny_tokenizer())
    module = dict(
        vocab_size=vocab_size,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        sliding_window=16,
        query_pre_attn_scalar=8,
        layer_types=["sliding_attention", "full_attention"],
    )
    torch.manual_seed(seed)
    config = T5GemmaConfig(encoder=module, decoder=module, is_encoder_decoder=False, vocab_size=vocab_size)
    return T5GemmaEncoderModel(config).eval()


def make_tiny_vae(seed: int = 0):
    """A 34k-parameter Wan2.2-shaped VAE (z=48, patch 2, x16 spatial, x4 temporal)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=list(WAN22_LATENTS_MEAN),
        latents_std=list(WAN22_LATENTS_STD),
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    ).eval()


def make_tiny_audio_vae(seed: int = 0):
    """A small Oobleck VAE with the real hop (2048 samples per latent frame) and 64 latent channels."""
    from diffusers import AutoencoderOobleck

    torch.manual_seed(seed)
    return AutoencoderOobleck(
        encoder_hidden_size=128,
        downsampling_ratios=[8, 16, 16],
        channel_multiples=[1, 1, 1],
        decoder_channels=4,
        decoder_input_channels=64,
        audio_channels=2,
        sampling_rate=44100,
    ).eval()


def tiny_turbo_vae_config() -> dict:
    """The shipped Turbo-VAE structure (layers 2,2,2,3,3; unpatchify; 7/7 windows) at widths 4/8/12/16."""
    return dict(
        latent_channels=48,
        out_channels=3,
        decoder_block_out_channels=[4, 8, 12, 16],
        decoder_layers_per_block=[2, 2, 2, 3, 3],
        decoder_spatio_temporal_scaling=[False, True, True, True],
        decoder_spatio_only=[False, True, False, False],
        decoder_is_dw_conv=[False, False, False, False, False],
        first_chunk_size=7,
        step_size=7,
        use_unpatchify=True,
    )


def make_tiny_turbo_vae(seed: int = 0):
    from .models.autoencoder_turbo_vaed import AutoencoderTurboVAED

    torch.manual_seed(seed)
    return AutoencoderTurboVAED(**tiny_turbo_vae_config()).eval()


def make_tiny_components(seed: int = 0, distilled: bool = True, with_turbo_vae: bool = True) -> dict:
    """All components of a tiny random [`MagiHumanPipeline`]."""
    from .schedulers.scheduling_magihuman import MagiHumanScheduler

    tokenizer = make_tiny_tokenizer()
    return dict(
        transformer=make_tiny_transformer(seed),
        scheduler=MagiHumanScheduler(sampler="dmd" if distilled else "unipc"),
        vae=make_tiny_vae(seed),
        audio_vae=make_tiny_audio_vae(seed),
        text_encoder=make_tiny_text_encoder(seed, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        turbo_vae=make_tiny_turbo_vae(seed) if with_turbo_vae else None,
    )


def make_tiny_pipeline(seed: int = 0, distilled: bool = True, with_turbo_vae: bool = True):
    from .pipelines.pipeline_magihuman import MagiHumanPipeline

    pipe = MagiHumanPipeline(**make_tiny_components(seed, distilled=distilled, with_turbo_vae=with_turbo_vae))
    pipe.set_progress_bar_config(disable=True)
    return pipe
