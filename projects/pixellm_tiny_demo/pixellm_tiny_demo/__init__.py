"""The offline demo's components, registered in pixellm's registries when this package is imported
(``custom_imports = dict(imports=['projects.pixellm_tiny_demo.pixellm_tiny_demo'])``).

- :class:`CodebookContextHead`, :class:`GroundingHead`: auxiliary heads (``PixelLM.aux_heads``)
  that help an LLM trained from random weights carry a target into its codebook states.
- :class:`PromptNormPixelDecoder`: PixelLM's decoder with prompts standardised over the batch.
- :class:`VisionEncoderPretrainer`, :class:`RenderSemanticMap`, :class:`SaveVisionEncoderHook`:
  stage 1, which pre-trains the tiny CLIP tower on the generated images' label maps.
- :func:`generate_muse_scenes`: the generated MUSE-format dataset.
"""
from .codebook_context_head import CodebookContextHead, preceding_tokens, preceding_window
from .encoder_pretrainer import VisionEncoderPretrainer
from .grounding_head import GroundingHead, mask_grid_coverage
from .muse_scenes import (COLOURS, QUESTION_KINDS, SHAPES, generate_muse_scenes, named_objects,
                          question_kind)
from .prompt_norm_pixel_decoder import PromptNormPixelDecoder
from .render_semantic_map import RenderSemanticMap
from .save_vision_encoder_hook import SaveVisionEncoderHook

__all__ = [
    'COLOURS', 'CodebookContextHead', 'GroundingHead', 'PromptNormPixelDecoder', 'QUESTION_KINDS',
    'RenderSemanticMap', 'SHAPES', 'SaveVisionEncoderHook', 'VisionEncoderPretrainer',
    'generate_muse_scenes', 'mask_grid_coverage', 'named_objects', 'preceding_tokens',
    'preceding_window', 'question_kind'
]
