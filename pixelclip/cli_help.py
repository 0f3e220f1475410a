"""The help format every command-line tool of the project uses."""

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written (examples keep their lines), and every option's
    default shown after its help text (argparse's "(default: ...)")."""
