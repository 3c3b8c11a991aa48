from .lisa import LISA
from .pixellm import PixelLM

__all__ = ['LISA', 'PixelLM']
