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
"""Hub-ready `README.md` model cards for converted folders.

Each converted folder gets a card for its variant: YAML metadata the Hub reads (license, `library_name: diffusers`,
`pipeline_tag`, `base_model`, tags), usage that fits the variant (the super-resolution chain for the SR variants),
credit and licence of every component in the folder, and limitations. Uploading the folder as it is gives a working
model page.
"""

from __future__ import annotations

import os


ORIGINAL_REPO = "GAIR/daVinci-MagiHuman"  # the Hub repository of the original release
CARD_VARIANTS = ("base", "distill", "sr_540p", "sr_1080p", "turbo_vae")

# name -> (what, credit, licence, source)
COMPONENTS = {
    "transformer": (
        "15B audio-video DiT",
        "GAIR-NLP and collaborators",
        "Apache-2.0",
        f"https://huggingface.co/{ORIGINAL_REPO}",
    ),
    "turbo_vae": (
        "distilled Turbo-VAE video decoder",
        "GAIR-NLP and collaborators",
        "Apache-2.0",
        f"https://huggingface.co/{ORIGINAL_REPO} (`turbo_vae/`)",
    ),
    "vae": (
        "Wan2.2 video VAE (48 channels, x16 spatial, x4 temporal)",
        "Wan team, Alibaba",
        "Apache-2.0",
        "https://huggingface.co/Wan-AI/Wan2.2-TI2V-5B-Diffusers (`vae/`)",
    ),
    "audio_vae": (
        "Stable Audio Open 1.0 Oobleck audio VAE",
        "Stability AI",
        "Stability AI Community License (not Apache-2.0: read it before commercial use)",
        "https://huggingface.co/stabilityai/stable-audio-open-1.0",
    ),
    "text_encoder": (
        "T5-Gemma 9B encoder (and its tokenizer)",
        "Google",
        "Gemma Terms of Use",
        "https://huggingface.co/google/t5gemma-9b-9b-ul2",
    ),
}

_TITLES = {
    "base": "daVinci-MagiHuman base (diffusers)",
    "distill": "daVinci-MagiHuman distilled, 8 steps (diffusers)",
    "sr_540p": "daVinci-MagiHuman 540p super-resolution (diffusers)",
    "sr_1080p": "daVinci-MagiHuman 1080p super-resolution (diffusers)",
    "turbo_vae": "daVinci-MagiHuman Turbo-VAE decoder (diffusers)",
}
_PIPELINE_TAG = {
    "base": "text-to-video",
    "distill": "text-to-video",
    "sr_540p": "video-to-video",
    "sr_1080p": "video-to-video",
    "turbo_vae": "text-to-video",
}
_SUMMARY = {
    "base": "The base checkpoint: 32 UniPC steps with classifier-free guidance (video 5.0, then 2.0 once t <= 500; "
    "audio 5.0). Slower than the distilled model; use it for the best quality or for fine-tuning.",
    "distill": "The DMD-2 distilled checkpoint: 8 steps, no classifier-free guidance (`guidance_scale` must stay 1, "
    "`negative_prompt` is not used). The fast default.",
    "sr_540p": "Latent super-resolution from the base resolution (256x448) to 540p (512x896): the base stage's "
    "latent is upsampled, re-noised at ZeroSNR index 220 and refined in 5 UniPC steps; the audio is the base stage's.",
    "sr_1080p": "Latent super-resolution to 1080p (1088x1920, 1080 rows padded to a multiple of 32): as 540p, with "
    "local attention (+-11 latent frames) on every layer but 3, 7, ..., 31, as the original.",
    "turbo_vae": "The distilled Turbo-VAE video decoder: decodes the Wan2.2-normalised latents the DiT produces, "
    "much faster than the full Wan2.2 VAE. Loaded as the `turbo_vae` component of a MagiHuman pipeline.",
}
_EXAMPLE_PROMPT = (
    "A young woman with shoulder-length black hair sits at a wooden desk in a sunlit home office, facing the camera "
    "in a medium close-up. She wears a light blue shirt; bookshelves and a green plant blur softly behind her. She "
    "smiles, leans slightly forward and speaks warmly, her eyebrows rising on the question. "
    'Dialogue: <Woman, English>: "Hi! Thanks for stopping by. Shall we get started?"'
)


def _yaml(variant: str) -> str:
    tags = ["diffusers-magihuman", "magihuman", "audio-video", "talking-head", "text-to-speech", "video-generation"]
    if variant.startswith("sr_"):
        tags.append("super-resolution")
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: diffusers",
        f"pipeline_tag: {_PIPELINE_TAG[variant]}",
        "base_model:",
        f"  - {ORIGINAL_REPO}",
        "tags:",
        *[f"  - {tag}" for tag in tags],
        "---",
    ]
    return "\n".join(lines)


def _usage(variant: str, repo_id: str, base_repo_id: str) -> str:
    p = repr(_EXAMPLE_PROMPT)
    if variant in ("base", "distill"):
        return f"""```bash
pip install "diffusers-magihuman[video]"
magihuman generate --model {repo_id} --prompt-file prompt.txt --seconds 5 --output hello.mp4
```

```python
import torch
import diffusers_magihuman  # registers the MagiHuman classes with diffusers
from diffusers import DiffusionPipeline
from diffusers_magihuman import export_to_video

pipe = DiffusionPipeline.from_pretrained("{repo_id}", dtype=torch.bfloat16).to("cuda")  # ~60 GB; else enable_model_cpu_offload()
prompt = {p}
out = pipe(prompt, height=256, width=448, seconds=5, generator=torch.Generator("cuda").manual_seed(42))
export_to_video(out.frames[0], "hello.mp4", fps=25, audio=out.audio[0], audio_sample_rate=pipe.audio_sample_rate)
```

Modes: `image=` (the first frame, image+text to video) and `audio=` (audio-driven lip-sync). For 540p / 1080p,
chain the output into the super-resolution folders (`output_type="latent"`, see their cards)."""
    size = "height=512, width=896" if variant == "sr_540p" else "height=1088, width=1920"
    flag = "540p" if variant == "sr_540p" else "1080p"
    return f"""This folder holds the super-resolution DiT and scheduler; it refines the latent of a base-stage pipeline
(e.g. `{base_repo_id}`), whose text encoder and VAEs it shares, as they are loaded.

```bash
pip install "diffusers-magihuman[video]"
magihuman generate --model {base_repo_id} --sr {flag} --sr-model {repo_id} --prompt-file prompt.txt --output hello_{flag}.mp4
```

```python
import torch
import diffusers_magihuman
from diffusers import DiffusionPipeline
from diffusers_magihuman import MagiHumanScheduler, MagiHumanSRPipeline, MagiHumanTransformer3DModel, export_to_video

pipe = DiffusionPipeline.from_pretrained("{base_repo_id}", dtype=torch.bfloat16)
sr_dit = MagiHumanTransformer3DModel.from_pretrained("{repo_id}", subfolder="transformer", dtype=torch.bfloat16)
sr_scheduler = MagiHumanScheduler.from_pretrained("{repo_id}", subfolder="scheduler")
pipe.enable_model_cpu_offload()              # two 15B DiTs: keep only the running one on the GPU (80 GB card)
prompt = {p}
low = pipe(prompt, height=256, width=448, seconds=5, output_type="latent")
sr = MagiHumanSRPipeline(**{{**pipe.components, "transformer": sr_dit, "scheduler": sr_scheduler}})  # shares the rest
sr.enable_model_cpu_offload()
out = sr(prompt, latents=low.frames, audio_latents=low.audio, {size})
export_to_video(out.frames[0], "hello_{flag}.mp4", fps=25, audio=out.audio[0], audio_sample_rate=sr.audio_sample_rate)
```"""


def _turbo_usage(repo_id: str, base_repo_id: str) -> str:
    return f"""```python
import torch
from diffusers_magihuman import AutoencoderTurboVAED, MagiHumanPipeline

turbo = AutoencoderTurboVAED.from_pretrained("{repo_id}", dtype=torch.bfloat16)
pipe = MagiHumanPipeline.from_pretrained("{base_repo_id}", turbo_vae=turbo, dtype=torch.bfloat16)
```"""


def model_card_text(
    variant: str,
    components: list[str] | tuple[str, ...] = (),
    repo_id: str | None = None,
    base_repo_id: str | None = None,
) -> str:
    """
    The `README.md` text for a converted folder.

    Args:
        variant (`str`): `base`, `distill`, `sr_540p`, `sr_1080p` or `turbo_vae`.
        components (`list[str]`): the components bundled besides the transformer and scheduler (`vae`, `audio_vae`,
            `text_encoder`, `turbo_vae`); the card credits each and says how to pass the missing ones.
        repo_id (`str`, *optional*): the Hub repo id the folder will be uploaded to, for the usage code
            (defaults to `your-org/magihuman-<variant>`).
        base_repo_id (`str`, *optional*): the base-stage repo id the SR usage chains from
            (defaults to `your-org/magihuman-distill`).

    Returns:
        `str`: Markdown with YAML front matter.
    """
    if variant not in CARD_VARIANTS:
        raise ValueError(f"No model card for variant {variant!r}; choose one of {', '.join(CARD_VARIANTS)}.")
    repo_id = repo_id or f"your-org/magihuman-{variant.replace('_', '-')}"
    base_repo_id = base_repo_id or "your-org/magihuman-distill"
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"Unknown components {unknown}; known: {', '.join(sorted(COMPONENTS))}.")
    present = ["turbo_vae"] if variant == "turbo_vae" else ["transformer", *[c for c in COMPONENTS if c in components and c != "transformer"]]
    rows = "\n".join(
        f"| `{name}` | {COMPONENTS[name][0]} | {COMPONENTS[name][1]} | {COMPONENTS[name][2]} | {COMPONENTS[name][3]} |"
        for name in present
    )
    missing = [c for c in ("text_encoder", "vae", "audio_vae") if c not in components]
    if variant == "turbo_vae":
        missing_note = ""
    elif variant.startswith("sr_"):
        missing_note = (
            "\nThe SR folder carries no text encoder or VAEs of its own unless they were bundled: the SR pipeline shares "
            "the base pipeline's (`MagiHumanSRPipeline(**{**pipe.components, \"transformer\": sr_dit})`).\n"
        )
    elif missing:
        missing_note = (
            f"\nNot bundled here: {', '.join(f'`{m}`' for m in missing)}. Pass them when loading, e.g. "
            "`from_pretrained(repo, vae=..., audio_vae=..., text_encoder=..., tokenizer=...)` (sources in the table).\n"
        )
    else:
        missing_note = ""
    usage = _turbo_usage(repo_id, base_repo_id) if variant == "turbo_vae" else _usage(variant, repo_id, base_repo_id)
    return f"""{_yaml(variant)}

# {_TITLES[variant]}

Text (+ image, + audio) to a talking-human video **with synchronized speech**, from GAIR-NLP's
[daVinci-MagiHuman](https://github.com/GAIR-NLP/daVinci-MagiHuman), converted from the original release to the
[diffusers](https://github.com/huggingface/diffusers) format with
[diffusers-magihuman](https://pypi.org/project/diffusers-magihuman/) (`magihuman convert`).

{_SUMMARY[variant]}

## Usage

`import diffusers_magihuman` (or any import from it) registers the MagiHuman classes, after which diffusers'
`DiffusionPipeline.from_pretrained` loads this repository.

{usage}

### Prompts

The model was trained on long descriptive prompts (about 150-200 words: the person, the scene, the camera, the
voice) with the speech written as `Dialogue: <Speaker, Language>: "..."`. Short prompts give blurry, static clips.
`diffusers_magihuman.utils.prompt.build_prompt(...)` writes that format.

## Components and licences

| component | what | by | licence | source |
|---|---|---|---|---|
{rows}
{missing_note}
The MagiHuman weights are Apache-2.0; every other component keeps its own licence, which applies to its files in
this repository.

## Limitations

* Trained on 5 s clips at 25 fps and on the prompt format above; clips longer than about 10 s and other frame rates
  are untested by the authors (the pipeline caps clips at 60 s).
* 256p output blurs faces and hands; the super-resolution stages fix most of it. Speech is best in the languages
  of the training data (English and Chinese first).
* The model generates realistic people and voices: do not use it to impersonate real people, to deceive, or for
  content that violates the licences above.

## Credit

Model, weights and original inference code: GAIR-NLP and collaborators,
[daVinci-MagiHuman](https://github.com/GAIR-NLP/daVinci-MagiHuman) (Apache-2.0). Wan2.2 VAE: Wan team, Alibaba.
Stable Audio Open: Stability AI. T5-Gemma: Google. diffusers format: diffusers-magihuman (independent
re-implementation, Apache-2.0).
"""


def write_model_card(
    folder: str | os.PathLike,
    variant: str,
    components: list[str] | tuple[str, ...] = (),
    repo_id: str | None = None,
    base_repo_id: str | None = None,
) -> str:
    """Writes `folder/README.md` ([`model_card_text`]); returns its path."""
    path = os.path.join(os.fspath(folder), "README.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(model_card_text(variant, components, repo_id, base_repo_id))
    return path
