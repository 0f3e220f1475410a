"""For ``python setup.py develop`` habits: all settings are in pyproject.toml."""

from setuptools import setup

setup()
