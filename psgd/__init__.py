"""psgd: a parameter server for distributed optimization with compressed gradients on MPI."""

__version__ = "0.1.0"
