"""pybuild: a daemonless container image builder with BuildKit's behaviour."""

__version__ = "0.1.0"
