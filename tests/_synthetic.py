"""Stand-ins used by the loop-parity tests (the fixtures' deterministic synthetic DiT, spec fixtures README)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file


FIXTURES = Path(__file__).parent / "fixtures" / "upstream_pipeline"


def load_fixture(name: str):
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    return meta, tensors


class SyntheticDiT(ModelMixin, ConfigMixin):
    """Computes the fixtures' stand-in velocity with the MagiHuman transformer's forward signature.

    base: v_video = 0.5*x + 0.1*sin(x) + (0.2*s)*cos(x) + 0.01*k ; v_audio = 0.5*a + 0.1*sin(a) + (0.2*s)*cos(a) - 0.01*k
    sr:   v_video = 0.4*x + 0.1*sin(x) + (0.2*s)*cos(x) + 0.02*k ; v_audio = 0.3*a + 0.05
    s = mean of the real text rows (float64 -> Python float), k = 0-based step index within one pipeline call.
    """

    @register_to_config
    def __init__(
        self,
        calls_per_step: int = 2,
        sr: bool = False,
        in_channels: int = 48,
        audio_in_channels: int = 64,
        coords_style: str = "v2",
    ):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the module a device/dtype
        self.calls = 0
        self.seen_video = []
        self.seen_s = []

    def forward(
        self,
        hidden_states,
        audio_hidden_states,
        encoder_hidden_states,
        audio_attention_mask=None,
        encoder_attention_mask=None,
        attention_kwargs=None,
        return_dict=True,
    ):
        k = self.calls // self.config.calls_per_step
        self.calls += 1
        rows = encoder_hidden_states[0]
        if encoder_attention_mask is not None:
            rows = rows[encoder_attention_mask[0].bool()]
        s = float(rows.double().mean())
        self.seen_s.append(s)
        self.seen_video.append(hidden_states.clone())
        x, a = hidden_states, audio_hidden_states
        if self.config.sr:
            v = 0.4 * x + 0.1 * torch.sin(x) + (0.2 * s) * torch.cos(x) + 0.02 * k
            va = 0.3 * a + 0.05
        else:
            v = 0.5 * x + 0.1 * torch.sin(x) + (0.2 * s) * torch.cos(x) + 0.01 * k
            va = 0.5 * a + 0.1 * torch.sin(a) + (0.2 * s) * torch.cos(a) - 0.01 * k
        return (v, va) if not return_dict else {"sample": v, "audio_sample": va}


def text_inputs(meta, tensors, negative_words: int | None = None):
    """Padded fixture text embeddings and their masks (cond length from the json; uncond from the stub's rule)."""
    from diffusers_magihuman.constants import DEFAULT_NEGATIVE_PROMPT

    ctx, ctx_null = tensors["context"], tensors["context_null"]
    n = meta["stages"]["base"]["context_len"] if "base" in meta["stages"] else meta["stages"]["sr"]["context_len"]
    n_null = min(1 + len(DEFAULT_NEGATIVE_PROMPT.split()), ctx_null.shape[1]) if negative_words is None else negative_words
    mask = torch.zeros(ctx.shape[:2], dtype=torch.bool)
    mask[:, :n] = True
    mask_null = torch.zeros(ctx_null.shape[:2], dtype=torch.bool)
    mask_null[:, :n_null] = True
    return ctx, mask, ctx_null, mask_null
