"""worldflow: STARFlow-V normalizing-flow video world models you can step, score and plan in."""

from . import convert
from .config import ModelConfig, SamplerConfig, preset
from .errors import CheckpointError, ConfigError, WorldFlowError
from .model import LogProb, WorldFlow
from .video_state import VideoState

__all__ = [
    "CheckpointError",
    "ConfigError",
    "LogProb",
    "ModelConfig",
    "SamplerConfig",
    "VideoState",
    "WorldFlow",
    "WorldFlowError",
    "convert",
    "preset",
]
