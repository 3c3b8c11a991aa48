"""Model components; importing this package registers them in ``pixellm.registry.MODELS``."""
from .aux_heads import *  # noqa: F401,F403
from .codebooks import *  # noqa: F401,F403
from .data_preprocessors import *  # noqa: F401,F403
from .export import (CheckpointMismatchError, export_pixellm, load_exported,  # noqa: F401
                     load_training_checkpoint, read_export_info)
from .llms import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .pixel_decoders import *  # noqa: F401,F403
from .projectors import *  # noqa: F401,F403
from .segmentors import *  # noqa: F401,F403
from .vision_encoders import *  # noqa: F401,F403
