"""Export a ``tools/train.py`` checkpoint as a Hugging Face style folder.

    python tools/model_converters/export_hf.py CONFIG CHECKPOINT OUT_DIR [--dtype bfloat16]

The model is built from CONFIG, the checkpoint is loaded strictly (a checkpoint that does not fit
the config stops the export with the mismatched keys), LoRA is merged into the LLM and the rows of
the added tokens are folded into its embedding table and LM head. OUT_DIR then holds:

* ``llm/``: a plain transformers ``*ForCausalLM`` folder with the tokenizer (codebook tokens
  included), for ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` without pixellm;
* ``pixellm.safetensors``: the vision encoder, projectors and pixel decoder;
* ``pixellm_config.json``: the model config that rebuilds PixelLM from the folder.

Build the model back with ``pixellm.models.load_exported(OUT_DIR)``, in a config with
``model = dict(type='ExportedPixelLM', folder=OUT_DIR)``, or on any config's command line with
``--cfg-options model._delete_=True model.type=ExportedPixelLM model.folder=OUT_DIR`` (see
:mod:`pixellm.models.export`). CONFIG builds the model first, so the base weights its
``pretrained`` keys name must be reachable, as for ``tools/test.py``. The folder is written next
to OUT_DIR under a temporary name and renamed when complete.
"""
import argparse
import os
import os.path as osp
import shutil
import sys
import tempfile

# Run from a checkout without installing: the repository root holds the pixellm package.
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmengine.config import DictAction  # noqa: E402

from pixellm.engine.checkpoint import (UntrustedCheckpointError,  # noqa: E402
                                      check_checkpoint_file, set_checkpoint_trust)
from pixellm.engine.preflight import check_config_types  # noqa: E402
from pixellm.models.export import (CheckpointMismatchError, export_pixellm,  # noqa: E402
                                   load_training_checkpoint)
from pixellm.registry import MODELS  # noqa: E402
from pixellm.utils import load_config, register_all_modules  # noqa: E402
from pixellm.utils.cli import add_debug_argument, cli_main  # noqa: E402

TOOL = 'tools/model_converters/export_hf.py'


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description='Export a pixellm checkpoint as a Hugging Face '
                                     'style folder (LoRA merged, added tokens folded)')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='checkpoint file written by tools/train.py')
    parser.add_argument('out_dir', help='output folder (must not exist or be empty)')
    parser.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'],
                        help='dtype of the exported LLM weights (default: as trained); the '
                        'other parts keep their trained dtypes')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace OUT_DIR if it exists and is not empty')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the checkpoint without the allow-list (only for files '
                        'you trust)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='the config overrides the checkpoint was trained with')
    add_debug_argument(parser)
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> dict:
    """Build the model, load the checkpoint and write the exported folder.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        dict: The content of the written ``pixellm_config.json``.

    Raises:
        SystemExit: A missing, unreadable or untrusted checkpoint, an unknown config type or
            keyword (one line, status 2; see ``pixellm.utils.cli``), a non-empty OUT_DIR without
            ``--overwrite`` or a checkpoint that does not fit the config.
    """
    args = parse_args(argv)
    out_dir = osp.abspath(args.out_dir)
    if osp.exists(out_dir) and not (osp.isdir(out_dir) and not os.listdir(out_dir)) \
            and not args.overwrite:
        raise SystemExit(f'{TOOL}: {out_dir!r} exists and is not an empty folder; pass '
                         '--overwrite to replace it.')
    set_checkpoint_trust(args.trust_checkpoint)
    check_checkpoint_file(args.checkpoint)
    register_all_modules(init_default_scope=True)
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    check_config_types(cfg, args.config)
    model_cfg = cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model)
    model = MODELS.build(model_cfg)
    try:
        meta = load_training_checkpoint(model, args.checkpoint)
    except (CheckpointMismatchError, UntrustedCheckpointError) as err:
        raise SystemExit(f'{TOOL}: {err}') from err

    parent = osp.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f'.tmp-{osp.basename(out_dir)}-', dir=parent)
    try:
        source = dict(config=osp.abspath(args.config), checkpoint=osp.abspath(args.checkpoint),
                      cfg_options=args.cfg_options or {})
        source.update({k: int(meta[k]) for k in ('epoch', 'iter') if meta.get(k) is not None})
        info = export_pixellm(model, model_cfg, tmp_dir, dtype=args.dtype, source=source)
        if osp.isdir(out_dir):
            shutil.rmtree(out_dir)
        elif osp.exists(out_dir):
            os.remove(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    print(f'Exported {args.checkpoint} to {out_dir}: LLM ({info["llm_dtype"]}, '
          f'{info["vocab_size"]} tokens, {len(info["added_tokens"])} added) in '
          f'{osp.join(out_dir, info["llm_dir"])}, other weights in {info["weights"]}. Load it '
          f"with model = dict(type='ExportedPixelLM', folder='{out_dir}').", flush=True)
    return info


if __name__ == '__main__':
    main()
