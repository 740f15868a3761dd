"""Placeholder: random_dithering is being written (see cython_ext/ and psgd/kernels.py)."""
