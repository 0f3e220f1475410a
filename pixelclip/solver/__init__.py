from .optimizer import build_optimizer, build_param_groups

__all__ = ["build_optimizer", "build_param_groups"]
