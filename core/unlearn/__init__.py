"""Unlearning: a registry of methods (each a loss), one training loop, checkpoints with a manifest.

Its command (core.cli.unlearn):
python -m core unlearn --list
python -m core unlearn --method npo --base demo:target --forget F.jsonl --retain R.jsonl --out DIR
"""

from core.unlearn.checkpoints import CODE_VERSION, checkpoint_dirs, read_manifest
from core.unlearn.methods import UNLEARNING_METHODS, StepInputs, StepLoss, UnlearningMethod, get_method, register
from core.unlearn.trainee import FullTrainee, LoraTrainee, Trainee, attach_adapter, build_trainee, lora_config
from core.unlearn.trainer import RunContext, TrainConfig, TrainingData, TrainResult, train

__all__ = [
    "CODE_VERSION",
    "UNLEARNING_METHODS",
    "FullTrainee",
    "LoraTrainee",
    "RunContext",
    "StepInputs",
    "StepLoss",
    "TrainConfig",
    "TrainResult",
    "Trainee",
    "TrainingData",
    "UnlearningMethod",
    "attach_adapter",
    "build_trainee",
    "checkpoint_dirs",
    "get_method",
    "lora_config",
    "read_manifest",
    "register",
    "train",
]
