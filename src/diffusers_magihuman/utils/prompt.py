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
"""Prompts in the format daVinci-MagiHuman was trained on.

The model was trained on long "enhanced" prompts written by a prompt-rewriting model. Each has three paragraphs:

1. the main body (about 150-200 words, in English): who is there and what they look like, their overall emotional
   state, then in time order what they do and say (each line quoted where it is spoken, followed by how it is said:
   tone, pace, pitch, volume), the static camera (angle, shot distance), lighting, depth of field, composition;
2. a `Dialogue:` paragraph repeating every line, one per line, as `<Speaker description, Language>: "line"`;
3. a `Background Sound:` paragraph with the most prominent background sound in `<...>`, or
   `<No prominent background sound>`.

Chinese, Japanese and Korean lines are written with a space between every character, as in the training prompts.

A full example, as [`build_prompt`] writes it::

    from diffusers_magihuman.utils.prompt import DialogueLine, build_prompt

    prompt = build_prompt(
        scene=(
            "A young woman with shoulder-length black hair and a light blue shirt sits at a wooden desk in a sunlit "
            "home office, bookshelves and a green plant softly blurred behind her. Her disposition is warm and "
            "relaxed, and her torso stays still in the frame. She looks into the lens, her lip corners lifting into "
            "a gentle smile, and says in a clear, friendly, medium-paced voice at a moderate volume, {line0} Her "
            "eyebrows rise briefly on the question and her head tilts a few degrees to the right. The camera holds a "
            "static medium close-up at eye level. Soft daylight from a window on the left lights her face evenly, "
            "with a shallow depth of field keeping her eyes and lips in sharp focus; she is framed slightly left of "
            "centre."
        ),
        lines=[DialogueLine("Young woman in blue shirt", "English", "Hi! Thanks for stopping by. Shall we start?")],
        background_sound="Faint birdsong outside the window",
    )

which gives::

    A young woman with shoulder-length black hair ... and says in a clear, friendly, medium-paced voice at a
    moderate volume, "Hi! Thanks for stopping by. Shall we start?" Her eyebrows rise briefly ...

    Dialogue:
    <Young woman in blue shirt, English>: "Hi! Thanks for stopping by. Shall we start?"

    Background Sound:
    <Faint birdsong outside the window>
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass


__all__ = ["DialogueLine", "build_prompt", "check_prompt", "has_dialogue", "space_cjk"]

NO_BACKGROUND_SOUND = "No prominent background sound"

# Han, Hiragana, Katakana, Hangul (syllables and jamo), CJK punctuation is left as it is.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_DIALOGUE_LINE = re.compile(r"^\s*<[^<>]+,\s*[^<>]+>\s*:\s*\".*\"\s*$", re.MULTILINE)


@dataclass
class DialogueLine:
    """
    One spoken line.

    Args:
        speaker (`str`): a short description of who speaks (about five words, e.g. `"Man in green shirt"`), or the
            person's name. Must not contain `<`, `>` or `,`.
        language (`str`): the spoken language, e.g. `"English"`, `"Mandarin"`, `"German"`.
        text (`str`): what is said, without surrounding quotes.
    """

    speaker: str
    language: str
    text: str

    def __post_init__(self):
        for name in ("speaker", "language", "text"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"DialogueLine.{name} must be a non-empty string, got {value!r}.")
        for name in ("speaker", "language"):
            if any(c in getattr(self, name) for c in "<>,\n"):
                raise ValueError(
                    f"DialogueLine.{name} {getattr(self, name)!r} must not contain '<', '>', ',' or a line break: they "
                    "delimit the `<Speaker, Language>` tag."
                )
        if '"' in self.text:
            raise ValueError(f"DialogueLine.text must not contain double quotes (they delimit the line): {self.text!r}")

    def quoted(self) -> str:
        """The line as it appears in the text: `"..."` with CJK characters spaced."""
        return f'"{space_cjk(self.text.strip())}"'

    def tag(self) -> str:
        """The `Dialogue:` paragraph entry: `<Speaker, Language>: "..."`."""
        return f"<{self.speaker.strip()}, {self.language.strip()}>: {self.quoted()}"


def space_cjk(text: str) -> str:
    """
    Puts one space between consecutive CJK characters (`"你好"` -> `"你 好"`), as the training prompts write Chinese,
    Japanese and Korean. Other text is unchanged; already spaced text stays as it is.
    """
    out = []
    for i, char in enumerate(text):
        out.append(char)
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if _CJK.match(char) and nxt and _CJK.match(nxt):
            out.append(" ")
    return "".join(out)


def build_prompt(
    scene: str,
    lines: list[DialogueLine] | tuple[DialogueLine, ...] = (),
    background_sound: str | None = None,
) -> str:
    """
    Builds a prompt in the training format: main body, `Dialogue:` paragraph, `Background Sound:` paragraph.

    Args:
        scene (`str`): the main body (about 150-200 words, English): the person, their emotional state, what they do
            in time order, camera, lighting, focus, composition. Put `{line0}`, `{line1}`, ... where each line is
            spoken; lines without a placeholder are appended to the body in order (`"... says, "text""`).
        lines (`list[DialogueLine]`): the spoken lines, in order.
        background_sound (`str`, *optional*): the most prominent background sound; `None` writes
            `<No prominent background sound>`.

    Returns:
        `str`: the prompt.
    """
    if not isinstance(scene, str) or not scene.strip():
        raise ValueError("`scene` must describe the video: who is there, what they do, the camera and the light.")
    lines = list(lines)
    for i, line in enumerate(lines):
        if not isinstance(line, DialogueLine):
            raise TypeError(f"`lines[{i}]` must be a DialogueLine(speaker, language, text), got {type(line).__name__}.")
    body = scene.strip()
    placeholders = {int(i) for i in re.findall(r"\{line(\d+)\}", body)}
    bad = sorted(i for i in placeholders if i >= len(lines))
    if bad:
        raise ValueError(f"`scene` uses {{line{bad[0]}}} but only {len(lines)} line(s) are given.")
    for i, line in enumerate(lines):
        body = body.replace(f"{{line{i}}}", line.quoted())
    unplaced = [line for i, line in enumerate(lines) if i not in placeholders]
    if unplaced:
        said = " ".join(f"{line.speaker.strip()} says, {line.quoted()}" for line in unplaced)
        body = f"{body.rstrip()} {said}"
    parts = [body]
    if lines:
        parts.append("Dialogue:\n" + "\n".join(line.tag() for line in lines))
    sound = (background_sound or NO_BACKGROUND_SOUND).strip().strip("<>").strip()
    parts.append(f"Background Sound:\n<{sound}>")
    return "\n\n".join(parts)


def has_dialogue(prompt: str) -> bool:
    """Whether `prompt` has a `Dialogue:` section with at least one `<Speaker, Language>: "..."` line."""
    if not isinstance(prompt, str):
        return False
    index = prompt.find("Dialogue:")
    return index >= 0 and _DIALOGUE_LINE.search(prompt[index:].replace("Dialogue:", "\n", 1)) is not None


def check_prompt(prompt: str, stacklevel: int = 2) -> bool:
    """
    Warns (does not fail) when `prompt` has no `Dialogue:` section in the training format: the model then tends to
    produce silence or mumbling. Returns whether the prompt has one. Silent prompts are allowed; the warning says how to
    write speech.
    """
    if has_dialogue(prompt):
        return True
    warnings.warn(
        'The prompt has no dialogue section (`Dialogue:` then `<Speaker, Language>: "..."` lines); the model was '
        "trained with one and may produce silence or unclear speech without it. Write one by hand or with "
        "diffusers_magihuman.utils.prompt.build_prompt(scene, lines=[DialogueLine(speaker, language, text)]).",
        UserWarning,
        stacklevel=stacklevel,
    )
    return False
