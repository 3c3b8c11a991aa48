"""Shared helpers: constants, config loading and environment set-up."""
from .config import ConfigLoadError, load_config
from .setup_env import register_all_modules

__all__ = ['ConfigLoadError', 'load_config', 'register_all_modules']
