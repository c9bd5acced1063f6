"""Config: one YAML file per device, validated against one schema."""

from voxgate.config.loader import ConfigError, load_config, parse_config
from voxgate.config.schema import VoxgateConfig
from voxgate.config.secrets import read_secret

__all__ = ["ConfigError", "VoxgateConfig", "load_config", "parse_config", "read_secret"]
