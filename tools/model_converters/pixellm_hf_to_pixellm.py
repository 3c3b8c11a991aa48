"""Convert a released PixelLM checkpoint (the official ``hf_model`` folder) into a toolbox ``.pth``.

    python tools/model_converters/pixellm_hf_to_pixellm.py PixelLM-7B/hf_model pixellm_7b.pth \
        --clip clip-vit-large-patch14-336 [--config configs/_base_/models/pixellm_7b.py]

SRC is a folder written by the official ``merge_lora_weights_and_save_hf_model.py``
(``maverickrzw/PixelLM-7B`` or ``-13B``, folder ``hf_model``: sharded ``pytorch_model-*.bin`` or
safetensors with their index) or one weight file. That script leaves CLIP out, so ``--clip``
names the CLIP checkpoint PixelLM was trained with (a local copy of
``openai/clip-vit-large-patch14-336``); its position table is resized to 448 as the official code
resizes it. The model is built from CONFIG on the meta device (no weights, nothing downloaded) and
the result has exactly its keys and shapes; anything that does not fit stops the conversion with
the mismatched keys. The output loads with ``tools/test.py CONFIG DST``.

Left out and set (printed at the end): the SAM point/box/mask prompt encoders (unused), the fusion
weights (official constants), the LoRA adapters (zero update; the official LoRA is merged).
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root holds the pixellm package.
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)

from pixellm.models.converters import ConversionResult, convert_official_pixellm  # noqa: E402
from pixellm.models.converters.cli import converter_parser, run_conversion  # noqa: E402
from pixellm.utils.cli import cli_main  # noqa: E402

TOOL = 'tools/model_converters/pixellm_hf_to_pixellm.py'
DEFAULT_CONFIG = osp.join(REPO, 'configs', '_base_', 'models', 'pixellm_7b.py')


def parse_args(argv=None):
    """Parse the command line (``argv=None`` reads ``sys.argv``)."""
    parser = converter_parser(
        'Convert an official PixelLM hf_model folder into a pixellm checkpoint',
        src_help='official hf_model folder, or one weight file', default_config=DEFAULT_CONFIG,
        config_help='config whose model the checkpoint is converted for (default: PixelLM-7B; '
        'use configs/_base_/models/pixellm_13b.py for 13B)',
        clip_help='CLIP checkpoint folder or file (openai/clip-vit-large-patch14-336), needed '
        'when SRC has no CLIP weights')
    parser.add_argument('--pos-embed-layout', choices=['official', 'clip'], default='official',
                        help='how to resize a CLIP position table of another grid (default: as '
                        'the official code did when the checkpoint was trained)')
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> ConversionResult:
    """Convert, save and print what was dropped and set.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        ConversionResult: The converted state dict and the report.
    """
    args = parse_args(argv)
    return run_conversion(args, TOOL, lambda official, target, clip, a: convert_official_pixellm(
        official, target, clip=clip, pos_embed_layout=a.pos_embed_layout,
        lora_seed=a.lora_seed, source=a.src))


if __name__ == '__main__':
    main()
