"""pixellm: PixelLM pixel-reasoning multimodal models as mmengine components."""
from .version import __version__

__all__ = ['__version__']
