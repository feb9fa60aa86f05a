"""The captioned shapes world: physics invariants, captions, edit pairs, and a reader that is
exact on ground-truth renders."""

import numpy as np
import pytest

from worldflow.data.shapes import (
    BACKGROUND,
    COLOURS,
    Shape,
    ShapesConfig,
    edit_pair,
    random_clip,
    render,
    simulate,
    sprite,
)
from worldflow.data.shapes_reader import caption_adherence, parse_caption, read_clip, read_frame

CFG = ShapesConfig()


def boxes_apart(a, b, size):
    return a.y + size < b.y or b.y + size < a.y or a.x + size < b.x or b.x + size < a.x


@pytest.mark.parametrize("with_actions", [False, True])
def test_reader_is_exact_on_ground_truth_renders(with_actions):
    for seed in range(80):
        clip = random_clip(seed, CFG, with_actions=with_actions)
        for frame, state in zip(clip.frames, clip.states):
            seen = sorted((s.colour, s.kind, s.y, s.x) for s in read_frame(frame, CFG))
            assert seen == sorted((s.colour, s.kind, s.y, s.x) for s in state), seed
            assert all(s.iou == 1.0 for s in read_frame(frame, CFG))


def test_render_paints_exactly_the_sprites_pixels():
    shape = Shape("triangle", "blue", 5, 9, 0, 2)
    frame = render([shape], CFG)
    painted = (frame != BACKGROUND).any(-1)
    expected = np.zeros((CFG.size, CFG.size), bool)
    expected[5:13, 9:17] = sprite("triangle", CFG.shape_size)
    np.testing.assert_array_equal(painted, expected)
    assert (frame[painted] == COLOURS["blue"]).all()
    assert sprite("circle", 8).sum() == 52 and sprite("triangle", 8).sum() == 40


def test_long_videos_keep_shapes_in_frame_apart_and_moving_at_the_speed():
    for seed in range(10):
        shapes = random_clip(seed, CFG).states[0]
        clip = simulate(shapes, CFG, 200)
        limit = CFG.size - CFG.shape_size
        for before, after in zip(clip.states, clip.states[1:]):
            for a, b in zip(before, after):
                assert 0 <= b.y <= limit and 0 <= b.x <= limit
                moved = abs(b.y - a.y) + abs(b.x - a.x)
                assert moved in (0, CFG.speed)  # moves at the speed or bounces in place
                assert abs(b.vy) + abs(b.vx) == CFG.speed
            assert all(boxes_apart(p, q, CFG.shape_size) for i, p in enumerate(after)
                       for q in after[i + 1:])
        still = [all((p.y, p.x) == (q.y, q.x) for p, q in zip(a, b))
                 for a, b in zip(clip.states, clip.states[1:])]
        assert not any(x and y for x, y in zip(still, still[1:]))  # never frozen two frames


def test_captions_describe_the_motion_the_reader_sees():
    for seed in range(100):
        clip = random_clip(seed, CFG)
        assert caption_adherence(clip.frames, clip.caption, CFG), (seed, clip.caption)
        assert len(parse_caption(clip.caption)) == len(clip.states[0])
    clip = random_clip(0, CFG)
    other = clip.caption.replace("moving left", "moving RIGHT").replace("moving right", "moving left")
    assert not caption_adherence(clip.frames, other.replace("RIGHT", "right"), CFG)


def test_actions_push_the_first_shape():
    shapes = [Shape("square", "red", 12, 12, 0, 2)]
    clip = simulate(shapes, CFG, 3, np.array([3, 0, 0]))  # action 3: up
    assert [(s.y, s.x) for s in clip.states[0] for _ in [0]] == [(12, 12)]
    assert (clip.states[1][0].y, clip.states[1][0].x) == (10, 12)
    assert (clip.states[2][0].y, clip.states[2][0].x) == (8, 12)
    with pytest.raises(ValueError, match="actions"):
        simulate(shapes, CFG, 3, np.array([0, 7, 0]))


def test_edit_pairs_recolour_one_shape_and_change_nothing_else():
    for seed in range(30):
        source, target, instruction = edit_pair(seed, CFG)
        words = instruction.split()
        assert words[:2] == ["make", "the"] and len(words) == 5
        old, kind, new = words[2], words[3], words[4]
        assert new not in {s.colour for s in source.states[0]}
        for a, b in zip(source.states, target.states):
            for p, q in zip(a, b):
                assert (p.kind, p.y, p.x) == (q.kind, q.y, q.x)
                assert q.colour == (new if (p.colour, p.kind) == (old, kind) else p.colour)
        seen = {(t.colour, t.kind) for t in read_clip(target.frames, CFG)}
        assert (new, kind) in seen and (old, kind) not in seen
        changed = (source.frames != target.frames).any(-1)
        assert changed.sum() == len(source.frames) * {"circle": 52, "square": 64, "triangle": 40}[kind]


def test_clips_are_deterministic_under_a_seed():
    a, b, c = random_clip(7, CFG), random_clip(7, CFG), random_clip(8, CFG)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.caption == b.caption and not np.array_equal(a.frames, c.frames)


@pytest.mark.parametrize("field, value", [("size", 10), ("speed", 0), ("max_shapes", 5),
                                          ("clip_len", 2.5)])
def test_bad_world_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ShapesConfig(**{field: value})


def test_reader_rejects_non_frames():
    with pytest.raises(ValueError, match="frame"):
        read_frame(np.zeros((32, 32), np.uint8))


def test_training_clips_mix_captions_edits_and_null_prompts_deterministically():
    from worldflow.data.shapes import ShapesClips

    clips = ShapesClips(CFG, seed=3, edit_fraction=0.25, caption_dropout=0.1)
    frames, prompts = clips.batch(range(400))
    assert frames.shape == (400, CFG.clip_len, CFG.size, CFG.size, 3) and frames.dtype == np.uint8
    edits = [p for p in prompts if p.startswith("make the")]
    null = [p for p in prompts if p == ""]
    assert 0.18 < len(edits) / 400 < 0.32 and 0.05 < len(null) / 400 < 0.15
    again, same = ShapesClips(CFG, seed=3).batch([5, 9])
    np.testing.assert_array_equal(again, frames[[5, 9]])
    assert same == [prompts[5], prompts[9]]
    for f, p in zip(frames, prompts):
        if p and not p.startswith("make"):
            assert caption_adherence(f, p, CFG)
    with pytest.raises(ValueError, match="caption_dropout"):
        ShapesClips(CFG, caption_dropout=2.0)
