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
"""Facts of the original daVinci-MagiHuman release that several modules need. One place per fact."""

# Wan2.2 (TI2V-5B) latent statistics, 48 channels. The DiT works on
# normalised latents ``(z - mean) * (1 / std)``.
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip

# The original's default negative prompt: video, audio and speech blocks joined with ", " (1719 characters).
_NEGATIVE_VIDEO = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)
_NEGATIVE_AUDIO = (
    "low quality, worst quality, poor quality, noise, background noise, hiss, hum, buzz, crackle, static, "
    "compression artifacts, MP3 artifacts, digital clipping, distortion, muffled, muddy, unclear, echo, reverb, "
    "room echo, over-reverberated, hollow sound, distant, washed out, harsh, shrill, piercing, grating, tinny, thin "
    "sound, boomy, bass-heavy, flat EQ, over-compressed, abrupt cut, jarring transition, sudden silence, looping "
    "artifact, music, instrumental, sirens, alarms, crowd noise, unrelated sound effects, chaotic, disorganized, "
    "messy, cheap sound"
)
_NEGATIVE_SPEECH = (
    "emotionless, flat delivery, deadpan, lifeless, apathetic, robotic, mechanical, monotone, flat intonation, "
    "undynamic, boring, reading from a script, AI voice, synthetic, text-to-speech, TTS, insincere, fake emotion, "
    "exaggerated, overly dramatic, melodramatic, cheesy, cringey, hesitant, unconfident, tired, weak voice, "
    "stuttering, stammering, mumbling, slurred speech, mispronounced, bad articulation, lisp, vocal fry, creaky "
    "voice, mouth clicks, lip smacks, wet mouth sounds, heavy breathing, audible inhales, plosives, p-pops, "
    "coughing, clearing throat, sneezing, speaking too fast, rushed, speaking too slow, dragged out, unnatural "
    "pauses, awkward silence, choppy, disjointed, multiple speakers, two voices, background talking, out of tune, "
    "off-key, autotune artifacts"
)
DEFAULT_NEGATIVE_PROMPT = ", ".join([_NEGATIVE_VIDEO, _NEGATIVE_AUDIO, _NEGATIVE_SPEECH])

# Text encoder output is padded / trimmed to this many tokens.
TEXT_MAX_SEQUENCE_LENGTH = 640
# Video frame rate; also the audio latent rate.
DEFAULT_FPS = 25
# Default sampling settings of the shipped configs.
BASE_NUM_INFERENCE_STEPS = 32
DISTILL_NUM_INFERENCE_STEPS = 8
SR_NUM_INFERENCE_STEPS = 5
# Base-stage video CFG: ``guidance_scale`` while t > 500, then a hard-coded 2.0.
VIDEO_GUIDANCE_SWITCH_TIMESTEP = 500
VIDEO_LATE_GUIDANCE_SCALE = 2.0
DEFAULT_GUIDANCE_SCALE = 5.0
DEFAULT_AUDIO_GUIDANCE_SCALE = 5.0
# Super-resolution stage.
SR_NOISE_VALUE = 220
SR_AUDIO_NOISE_SCALE = 0.7
SR_CFG_TRICK_START_FRAME = 13
SR_CFG_TRICK_VALUE = 2.0
# Local attention of the 1080p SR model: every layer but these is local.
SR_1080P_GLOBAL_LAYERS = (3, 7, 11, 15, 19, 23, 27, 31)
SR_1080P_FRAME_RECEPTIVE_FIELD = 11
