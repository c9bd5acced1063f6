"""voxgate: on-device voice biometrics for door access."""

__version__ = "0.1.0"
