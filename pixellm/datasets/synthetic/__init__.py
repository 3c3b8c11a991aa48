"""Synthetic datasets in the formats of real ones, for demos and tests without downloads."""
from .muse_scenes import QUESTION_KINDS, generate_muse_scenes, named_objects, question_kind

__all__ = ['generate_muse_scenes', 'question_kind', 'named_objects', 'QUESTION_KINDS']
