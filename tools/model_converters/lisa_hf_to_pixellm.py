"""Convert a released LISA checkpoint (``xinlai/LISA-7B-v1`` ...) into a toolbox ``.pth``.

    python tools/model_converters/lisa_hf_to_pixellm.py LISA-7B-v1 lisa_7b.pth \
        --clip clip-vit-large-patch14 [--config configs/_base_/models/lisa_7b.py]

SRC is a folder written by LISA's ``merge_lora_weights_and_save_hf_model.py``
(``xinlai/LISA-7B-v1``, ``xinlai/LISA-13B-llama2-v1``...: sharded ``pytorch_model-*.bin`` or
safetensors with their index) or one weight file. It holds LLaMA, ``mm_projector``, SAM and
``text_hidden_fcs`` but no CLIP, so ``--clip`` names the CLIP checkpoint LISA reads (a local copy
of ``openai/clip-vit-large-patch14``).
The model is built from CONFIG on the meta device (no weights, nothing downloaded) and the result
has exactly its keys and shapes; anything that does not fit stops the conversion with the
mismatched keys. The output loads with ``tools/test.py CONFIG DST`` (e.g. the configs/lisa eval
configs).

Left out and set (printed at the end): the LoRA adapters (zero update; the official LoRA is merged)
and any buffer the checkpoint saved that the model computes (rotary ``inv_freq``).
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root holds the pixellm package.
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)

from pixellm.models.converters import ConversionResult, convert_official_lisa  # noqa: E402
from pixellm.models.converters.cli import converter_parser, run_conversion  # noqa: E402
from pixellm.utils.cli import cli_main  # noqa: E402

TOOL = 'tools/model_converters/lisa_hf_to_pixellm.py'
DEFAULT_CONFIG = osp.join(REPO, 'configs', '_base_', 'models', 'lisa_7b.py')


def parse_args(argv=None):
    """Parse the command line (``argv=None`` reads ``sys.argv``)."""
    return converter_parser(
        'Convert a released LISA folder into a pixellm checkpoint',
        src_help='released LISA folder, or one weight file', default_config=DEFAULT_CONFIG,
        config_help='config whose model the checkpoint is converted for (default: LISA-7B; use '
        'configs/_base_/models/lisa_13b.py for LISA-13B-llama2)',
        clip_help='CLIP checkpoint folder or file (openai/clip-vit-large-patch14), needed when '
        'SRC has no CLIP weights').parse_args(argv)


@cli_main
def main(argv=None) -> ConversionResult:
    """Convert, save and print what was dropped and set.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        ConversionResult: The converted state dict and the report.
    """
    args = parse_args(argv)
    return run_conversion(args, TOOL, lambda official, target, clip, a: convert_official_lisa(
        official, target, clip=clip, lora_seed=a.lora_seed, source=a.src))


if __name__ == '__main__':
    main()
