from .trainer import Trainer, build_eval_model, setup

__all__ = ["Trainer", "build_eval_model", "setup"]
