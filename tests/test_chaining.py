"""Chaining with the rest of diffusers (all tiny random components built in code, offline): a first frame made by
another diffusers pipeline feeds our image+text mode, and our frames / latents go on to diffusers' own tools."""

from __future__ import annotations

import importlib.util

import numpy as np
import PIL.Image
import torch

from diffusers_magihuman.testing_utils import make_tiny_pipeline


def _tiny_ddpm():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_first_frame_from_another_diffusers_pipeline(tmp_path):
    first = _tiny_ddpm()(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert isinstance(first, PIL.Image.Image) and first.size == (32, 32)
    pipe = make_tiny_pipeline(seed=0, distilled=True)
    out = pipe("A man waves.", image=first, height=32, width=32, num_frames=5, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="latent")  # fmt: skip
    # TI2V pins the image latent into latent frame 0: it equals the VAE encoding of the first frame
    expected = pipe.encode_image(pipe.load_image(first), 32, 32, 1, torch.device("cpu"))
    torch.testing.assert_close(out.frames[:, :, :1], expected.to(out.frames.dtype), rtol=0, atol=0)  # a copy


def test_frames_and_latents_handed_on(tmp_path):
    from diffusers.utils import export_to_gif
    from diffusers.utils import export_to_video as diffusers_export_to_video

    pipe = make_tiny_pipeline(seed=0, distilled=True)
    kwargs = dict(height=32, width=32, num_frames=5, num_inference_steps=2)
    latent = pipe("A man waves.", generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
    assert latent.frames.shape == (1, 48, 2, 2, 2) and latent.audio.shape[-1] == 64
    # our decoder on the handed-over latents gives what output_type="pt" gives (same code path, same numbers)
    pt = pipe("A man waves.", generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs)
    assert pt.frames.shape == (1, 5, 3, 32, 32)  # (B, F, C, H, W) in [0, 1], diffusers' video convention
    decoded = pipe.postprocess_video(pipe.decode_latents(latent.frames), "pt")
    torch.testing.assert_close(decoded, pt.frames, rtol=0, atol=0)
    # diffusers' own writers take our frames as a list of (H, W, 3) float arrays / PIL images
    frames = [f.permute(1, 2, 0).numpy() for f in pt.frames[0]]
    gif = export_to_gif([PIL.Image.fromarray((f * 255).astype(np.uint8)) for f in frames], str(tmp_path / "a.gif"))
    assert PIL.Image.open(gif).n_frames == 5
    if importlib.util.find_spec("imageio_ffmpeg") or importlib.util.find_spec("cv2"):  # its optional backends
        from diffusers_magihuman.utils.video import read_video_info

        path = diffusers_export_to_video(frames, str(tmp_path / "diffusers.mp4"), fps=25)
        assert read_video_info(path).num_frames == 5
    assert np.isfinite(pt.audio.numpy()).all() and pt.audio.shape[:2] == (1, 2)
