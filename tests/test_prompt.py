"""The prompt helper: the training format (body, Dialogue, Background Sound), CJK spacing, the no-dialogue warning."""

from __future__ import annotations

import warnings

import pytest

from diffusers_magihuman.utils.prompt import DialogueLine, build_prompt, check_prompt, has_dialogue, space_cjk


def test_build_prompt_training_format():
    prompt = build_prompt(
        "A man in a green shirt stands behind a counter. He explains in a steady tone, {line0} The camera is static.",
        lines=[DialogueLine("Man in green shirt", "German", "Pulver mit dran gemacht")],
    )
    assert prompt == (
        'A man in a green shirt stands behind a counter. He explains in a steady tone, "Pulver mit dran gemacht" The '
        "camera is static.\n\n"
        'Dialogue:\n<Man in green shirt, German>: "Pulver mit dran gemacht"\n\n'
        "Background Sound:\n<No prominent background sound>"
    )
    assert has_dialogue(prompt)


def test_lines_without_placeholder_are_appended_and_cjk_is_spaced():
    prompt = build_prompt(
        "Inside an elevator, a woman and a man stand still.",
        lines=[DialogueLine("Woman in dark coat", "Korean", "나비번알아"), DialogueLine("Man", "Korean", "눌러그럼")],
        background_sound="<Low hum of elevator machinery>",
    )
    body, dialogue, sound = prompt.split("\n\n")
    assert body.endswith('Woman in dark coat says, "나 비 번 알 아" Man says, "눌 러 그 럼"')
    assert dialogue.splitlines() == ["Dialogue:", '<Woman in dark coat, Korean>: "나 비 번 알 아"', '<Man, Korean>: "눌 러 그 럼"']
    assert sound == "Background Sound:\n<Low hum of elevator machinery>"
    assert space_cjk("你好，world 你好") == "你 好，world 你 好"  # punctuation and Latin text untouched
    assert space_cjk("你 好") == "你 好"


def test_bad_builder_input():
    with pytest.raises(ValueError, match="speaker"):
        DialogueLine("Man, tall", "English", "Hi")
    with pytest.raises(ValueError, match="text"):
        DialogueLine("Man", "English", " ")
    with pytest.raises(ValueError, match=r"\{line1\}"):
        build_prompt("He says {line1}", lines=[DialogueLine("Man", "English", "Hi")])
    with pytest.raises(TypeError, match="DialogueLine"):
        build_prompt("A man.", lines=[("Man", "English", "Hi")])


def test_warns_without_dialogue_but_does_not_fail():
    with pytest.warns(UserWarning, match="no dialogue section"):
        assert check_prompt("A man smiles at the camera.") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_prompt('A woman smiles. Dialogue: <Woman, English>: "Hello there!"') is True  # inline form
    assert not has_dialogue("Dialogue: none")
