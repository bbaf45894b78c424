"""repeatlab: measure how repeated training data damages language models (Hernandez et al. 2022)."""

__version__ = "0.1.0"
