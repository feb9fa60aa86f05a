"""The shipped `shapes` model reads its prompt: on held-out clips of the captioned world,
the first frame (drawn from the caption alone) is likelier under its own caption than
under the null prompt or another clip's caption, and a seeded video is reproducible."""

import numpy as np
import pytest
import torch

import worldflow as wf
from worldflow.checkpoint import ASSETS
from worldflow.data.shapes import ShapesConfig, random_clip
from worldflow.train.sources import HELD_OUT

pytestmark = pytest.mark.skipif(not (ASSETS / "shapes").is_dir(), reason="no shipped shapes model")
FIRST = HELD_OUT + 50_000  # clip seeds training never drew (nor validation, nor generation.py)


@pytest.fixture(scope="module")
def model():
    return wf.WorldFlow.from_pretrained("shapes").eval()


def test_the_first_frame_is_likelier_under_its_own_caption(model):
    world = ShapesConfig(size=model.config.frame_size[0], clip_len=model.config.max_frames)
    clips = [random_clip(FIRST + i, world) for i in range(16)]
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))
    own = [c.caption for c in clips]
    with torch.no_grad():
        bits = {name: model.log_prob(frames, prompt=prompt).bits_per_dim[:, 0]
                for name, prompt in (("own", own), ("null", [""] * 16), ("other", own[1:] + own[:1]))}
    assert (bits["null"] - bits["own"]).mean() > 0
    assert (bits["other"] - bits["own"]).mean() > 0
    assert ((bits["other"] - bits["own"]) > 0).float().mean() > 0.5


def test_a_seeded_text_to_video_is_reproducible(model):
    first = model.generate(4, prompt="a red circle moving left", guidance=3.0, seed=7)
    again = model.generate(4, prompt="a red circle moving left", guidance=3.0, seed=7)
    other = model.generate(4, prompt="a red circle moving left", guidance=3.0, seed=8)
    assert first.shape == (1, 4, 32, 32, 3) and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)
