"""The package version, defined once (read by the build backend and by ``dynamic_agents``)."""

__version__ = "0.1.0.dev0"
