"""Text-, image-, video-to-video and long video on the captioned shapes world, read back by rule.

    python benchmarks/generation.py [--model shapes] [--clips 32] [--guidance 3] ...

Every figure is scored by `worldflow.data.shapes_reader` (exact on true renders) on held-out
clips (seeds the training source never draws):
- text-to-video: the caption of a held-out clip is the prompt; adherence is the share of
  videos that show exactly the caption's shapes, each of the right colour and kind and moving
  the named way (`caption_adherence`), with guidance and without; `objects_right` asks only
  for the right colours and kinds.
- image-to-video: the clip's first frame (and its caption) is the context; PSNR of the first
  generated frame to the given image and to the true next frame (and, for scale, the PSNR
  of the true next frame to the given image), and the share of clips moving as captioned.
- video-to-video: the first half of a recolouring pair (source) is the context, the
  instruction ("make the red circle green") the prompt, as in training; `edit_success`: the
  shape appears in the new colour with its kind and the old colour is gone; `preserved`:
  every other shape keeps colour and kind within 2 pixels of where the true edited clip has
  it; PSNR to the true edited clip.
- long video: from a first frame and its caption, `long_factor` x the training length via the
  sliding window; the share of the first frame's shapes present with their colour at 4x and
  8x the training length.
Prints one JSON line; `--out` also writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

import worldflow as wf
from worldflow.benchmarking import benchmark_main, machine
from worldflow.data.shapes import ShapesConfig, edit_pair, random_clip
from worldflow.data.shapes_reader import caption_adherence, parse_caption, read_clip, read_frame

HELD_OUT = 2**31 + 10_000  # the training source's indices stay below 2**31 (and its streams differ)


@dataclass
class Args:
    model: str = "shapes"
    clips: int = 32  # held-out clips per task
    guidance: float = 3.0
    temperature: float = 0.0
    long_factor: int = 8  # long video: this many training lengths
    seed: int = 0
    threads: int = 2
    out: str = ""


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the batch of the PSNR (dB) of uint8 frames a vs b, (B, H, W, 3)."""
    a, b = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    return float(torch.stack([peak_signal_noise_ratio(x, y, data_range=255.0) for x, y in zip(a, b)]).mean())


def world_of(model: wf.WorldFlow) -> ShapesConfig:
    h, w = model.config.frame_size
    if not model.config.has_text or h != w:
        raise ValueError(f"model: expected a text model of square shapes-world frames, got "
                         f"frame_size {[h, w]}, text_dim {model.config.text_dim}")
    return ShapesConfig(size=h, clip_len=model.config.max_frames)


def text_to_video(model, world, args, sample) -> dict:
    clips = [random_clip(HELD_OUT + i, world) for i in range(args.clips)]
    prompts = [c.caption for c in clips]
    out = {}
    for name, guidance in (("guided", args.guidance), ("unguided", 0.0)):
        t0 = time.perf_counter()
        video = sample(world.clip_len, prompt=prompts, batch_size=len(prompts), guidance=guidance)
        seconds = time.perf_counter() - t0
        right = [sorted((c, k) for c, k, _ in parse_caption(p)) ==
                 sorted((t.colour, t.kind) for t in read_clip(v, world)) for v, p in zip(video, prompts)]
        out[name] = {
            "adherence": float(np.mean([caption_adherence(v, p, world) for v, p in zip(video, prompts)])),
            "objects_right": float(np.mean(right)),
            "ms_per_frame": round(1000 * seconds / video.shape[0] / video.shape[1], 2),
        }
    return out


def image_to_video(model, world, args, sample) -> dict:
    clips = [random_clip(HELD_OUT + 1_000 + i, world) for i in range(args.clips)]
    first = np.stack([c.frames[:1] for c in clips])
    video = sample(world.clip_len - 1, context=torch.from_numpy(first),
                   prompt=[c.caption for c in clips], guidance=args.guidance)
    truth = np.stack([c.frames[1] for c in clips])
    whole = np.concatenate([first, video], axis=1)
    return {
        "psnr_first_to_image": psnr(video[:, 0], first[:, 0]),
        "psnr_first_to_next_truth": psnr(video[:, 0], truth),
        "psnr_true_next_to_image": psnr(truth, first[:, 0]),  # what a perfect model scores vs the image
        "motion_as_captioned": float(np.mean([caption_adherence(v, c.caption, world)
                                              for v, c in zip(whole, clips)])),
    }


def video_to_video(model, world, args, sample) -> dict:
    half = world.clip_len // 2
    pairs = [edit_pair(HELD_OUT + 2_000 + i, world, half) for i in range(args.clips)]
    source = np.stack([s.frames for s, _, _ in pairs])
    target = np.stack([t.frames for _, t, _ in pairs])
    video = sample(half, context=torch.from_numpy(source), prompt=[p for _, _, p in pairs],
                   guidance=args.guidance)
    success, preserved = [], []
    for v, (src, tgt, _) in zip(video, pairs):
        seen = {s.colour: s for s in read_frame(v[0], world)}  # the first edited frame
        edited = [(a, b) for a, b in zip(src.states[0], tgt.states[0]) if a.colour != b.colour]
        kept = [b for a, b in zip(src.states[0], tgt.states[0]) if a.colour == b.colour]
        success.append(all(b.colour in seen and seen[b.colour].kind == b.kind and a.colour not in seen
                           for a, b in edited))
        preserved.append(all(b.colour in seen and seen[b.colour].kind == b.kind
                             and abs(seen[b.colour].y - b.y) <= 2 and abs(seen[b.colour].x - b.x) <= 2
                             for b in kept))
    return {
        "edit_success": float(np.mean(success)),
        "preserved": float(np.mean(preserved)),
        "psnr_to_edited_truth": psnr(np.concatenate(video), np.concatenate(target)),
    }


def long_video(model, world, args, sample) -> dict:
    clips = [random_clip(HELD_OUT + 3_000 + i, world) for i in range(args.clips)]
    first = np.stack([c.frames[:1] for c in clips])
    length = args.long_factor * world.clip_len
    t0 = time.perf_counter()
    video = sample(length - 1, context=torch.from_numpy(first), prompt=[c.caption for c in clips],
                   guidance=args.guidance)
    seconds = time.perf_counter() - t0
    whole = np.concatenate([first, video], axis=1)
    out = {"frames": length, "ms_per_frame": round(1000 * seconds / video.shape[0] / video.shape[1], 2)}
    for factor in sorted({4, args.long_factor}):
        t = factor * world.clip_len - 1
        if t >= length:
            continue
        present = [c in {s.colour for s in read_frame(v[t], world)}
                   for v, clip in zip(whole, clips) for c in {s.colour for s in clip.states[0]}]
        out[f"objects_present_{factor}x"] = float(np.mean(present))
    return out


def run(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    model = wf.WorldFlow.from_pretrained(args.model).eval()
    world = world_of(model)

    def sample(num_frames, context=None, prompt=None, batch_size=1, guidance=0.0) -> np.ndarray:
        with torch.no_grad():
            video = model.generate(num_frames, context=context, prompt=prompt, batch_size=batch_size,
                                   guidance=guidance, temperature=args.temperature, seed=args.seed)
        return video.numpy()

    t0 = time.perf_counter()
    result = {
        "benchmark": "generation",
        "model": args.model,
        "clips": args.clips,
        "guidance": args.guidance,
        "temperature": args.temperature,
        "text_to_video": text_to_video(model, world, args, sample),
        "image_to_video": image_to_video(model, world, args, sample),
        "video_to_video": video_to_video(model, world, args, sample),
        "long_video": long_video(model, world, args, sample),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine()
    return result


if __name__ == "__main__":
    benchmark_main(Args, run, __doc__)
