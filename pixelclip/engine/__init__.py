from .trainer import Trainer, build_eval_model, build_parser, setup, train_net

__all__ = ["Trainer", "build_eval_model", "build_parser", "setup", "train_net"]
