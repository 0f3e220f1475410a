from .trainer import Trainer, setup

__all__ = ["Trainer", "setup"]
