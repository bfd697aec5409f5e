"""sodp_fast: a fast implementation of SODP, a diffusion planner pre-trained on multi-task sub-optimal data and
fine-tuned per task with reinforcement learning. The public API is what this module exports."""
from sodp_fast.checkpoint import load_planner, save_planner
from sodp_fast.diffusion.ddim import DDIMChain, DDIMSampler
from sodp_fast.diffusion.schedule import NoiseSchedule, cosine_betas, denoising_loss
from sodp_fast.errors import CheckpointError, SodpError
from sodp_fast.nn.unet import ConditionalUnet1D, UNetConfig, preset
from sodp_fast.ops.dispatch import describe_backends as backends, set_default_backend
from sodp_fast.policy import DiffusionPlanner, PlannerConfig

__version__ = "0.1.0"
__all__ = [
    "CheckpointError", "ConditionalUnet1D", "DDIMChain", "DDIMSampler", "DiffusionPlanner", "NoiseSchedule",
    "PlannerConfig", "SodpError", "UNetConfig", "backends", "cosine_betas", "denoising_loss", "load_planner",
    "preset", "save_planner", "set_default_backend",
]
