"""Model cards: Hub metadata per variant, usage fitting the variant, credit and licence of what is bundled."""

from __future__ import annotations

import pytest

from diffusers_magihuman.conversion.model_card import CARD_VARIANTS, model_card_text


def _front(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.mark.parametrize("variant", CARD_VARIANTS)
def test_metadata(variant):
    meta = _front(model_card_text(variant, components=["vae"]))
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "diffusers"
    assert meta["base_model"] == ["GAIR/daVinci-MagiHuman"] and "diffusers-magihuman" in meta["tags"]
    assert meta["pipeline_tag"] == ("video-to-video" if variant.startswith("sr_") else "text-to-video")


def test_usage_and_credits_follow_the_variant():
    distill = model_card_text("distill", components=["text_encoder", "turbo_vae"], repo_id="/models/magihuman-distill")
    assert 'DiffusionPipeline.from_pretrained("/models/magihuman-distill"' in distill and "Gemma Terms of Use" in distill
    assert "Not bundled here: `vae`, `audio_vae`" in distill  # says how to pass the rest
    sr = model_card_text("sr_1080p", repo_id="/models/magihuman-sr-1080p", base_repo_id="/models/magihuman-distill")
    assert "--sr 1080p --sr-model /models/magihuman-sr-1080p" in sr and "height=1088, width=1920" in sr and "**pipe.components" in sr
    with pytest.raises(ValueError, match="variant"):
        model_card_text("sr_720p")
    with pytest.raises(ValueError, match="Unknown components"):
        model_card_text("base", components=["unet"])
