"""Data: trajectories collected from Gymnasium environments, clips for training, pixel
readers that check frames against the true state, and a procedural captioned world.

| module               | holds                                                         |
|----------------------|---------------------------------------------------------------|
| ``preprocess``       | raw renders -> model frames (crop, area resize); env defaults |
| ``collect``          | rollouts -> TensorDict memmap dataset; ``load_dataset``       |
| ``clips``            | ``ClipDataset``: episode-split, fixed-length windows          |
| ``cartpole_reader``  | CartPole frames -> (cart x, pole angle)                       |
| ``shapes``           | captioned clips of moving coloured shapes; edit pairs         |
| ``shapes_reader``    | shapes frames -> colours, kinds, positions, directions        |
"""

from worldflow.data.cartpole_reader import cartpole_pixels_per_unit, read_cartpole_state
from worldflow.data.clips import ClipDataset
from worldflow.data.collect import collect, load_dataset, record_episode
from worldflow.data.preprocess import (
    CARTPOLE_CROP,
    CARTPOLE_FRAME_SIZE,
    default_preprocessing,
    model_preprocessing,
    preprocess_frames,
)

__all__ = [
    "CARTPOLE_CROP",
    "CARTPOLE_FRAME_SIZE",
    "ClipDataset",
    "cartpole_pixels_per_unit",
    "collect",
    "default_preprocessing",
    "load_dataset",
    "model_preprocessing",
    "preprocess_frames",
    "read_cartpole_state",
    "record_episode",
]
