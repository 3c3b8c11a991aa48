"""Talk to a trained PixelLM: answers with numbered targets, one coloured mask per target.

One-shot::

    python tools/chat.py CONFIG CHECKPOINT --image IMG --question "..." [--out-dir DIR]

Interactive (no ``--question``): asks for an image, then questions about it, keeping the earlier
turns as history; ``:image`` switches to another image, ``:reset`` forgets the history, ``:quit``
(or an empty image path, or end of input) leaves. Every answer is saved under ``--out-dir`` as
``<stem>_overlay.png`` (each target's mask in its colour, with question, answer and a legend),
``<stem>_mask<k>.png`` per target and, with ``--save-rle``, ``<stem>_masks.json``.

A user mistake (missing image, not an image, empty question, text that is not UTF-8) prints one
line and the session goes on; in one-shot mode it exits with status 2. Before the model is built,
the config's types and the checkpoint file are checked: a missing, empty, truncated, corrupt or
untrusted checkpoint, an unknown type or keyword exits with status 2 and one line,
``error: <file>: <what>``. A checkpoint that does not fit the config exits with status 1, listing
the keys that differ. ``--debug`` (or ``PIXELLM_DEBUG=1``) shows tracebacks instead
(``pixellm.utils.cli``).
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional, Tuple

# Run from a checkout without installing: the repository root holds the pixellm package.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from pixellm.utils.cli import (UserError, add_debug_argument, cli_main,  # noqa: E402
                               debug_requested, one_line)

EXIT_LOAD_ERROR = 1
EXIT_INPUT_ERROR = 2


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description='Chat with a PixelLM checkpoint')
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help='.pth checkpoint, or a folder written by '
                        'tools/model_converters/export_hf.py')
    parser.add_argument('--image', help='image to ask about (one-shot with --question)')
    parser.add_argument('--question', help='ask this once and exit (needs --image)')
    parser.add_argument('--out-dir', default='work_dirs/chat',
                        help='where overlays and masks go (default: work_dirs/chat)')
    parser.add_argument('--save-rle', action='store_true',
                        help='also write the masks as COCO RLE json')
    parser.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default='fp32',
                        help='weight dtype (default fp32; bf16/fp16 halve the memory)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda, cuda:1... (default: cuda when available, else cpu)')
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument('--load-in-8bit', action='store_true',
                       help='load the LLM in 8 bits with bitsandbytes (CUDA, exported folder)')
    quant.add_argument('--load-in-4bit', action='store_true',
                       help='load the LLM in 4 bits (NF4) with bitsandbytes (CUDA, exported '
                       'folder)')
    parser.add_argument('--max-new-tokens', type=int, default=None,
                        help='generation budget (default: the config\'s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the checkpoint without the allow-list (trusted files)')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.question is not None and args.image is None:
        parser.error('--question needs --image')
    return args


def answer_lines(result) -> List[str]:
    """The printed answer: numbered text, then one line per target."""
    lines = [f'PixelLM: {result.text}'] + [f'  {line}' for line in result.target_lines()]
    if not result.num_targets:
        lines.append('  (no target in this answer)')
    if result.truncated:
        lines.append('  (the answer was cut by the generation budget; raise --max-new-tokens)')
    return lines


def ask(model, image: str, question: str, history, args, stem: str) -> Tuple[object, dict]:
    """Answer one question, print it and save its files."""
    from pixellm.apis import inference
    result = inference(model, image, question, history=history,
                       max_new_tokens=args.max_new_tokens)
    files = result.save(args.out_dir, stem=stem, save_rle=args.save_rle)
    for line in answer_lines(result):
        print(line, flush=True)
    print(f'  saved {files["overlay"]}' + (f' and {len(files["masks"])} mask(s)'
                                           if files['masks'] else ''), flush=True)
    return result, files


def _read(prompt: str) -> Optional[str]:
    while True:
        try:
            return input(prompt)
        except EOFError:
            print(flush=True)
            return None
        except UnicodeDecodeError as err:
            print(f'error: the input is not UTF-8 text (byte {err.object[err.start:err.end]!r}); '
                  'type it again', flush=True)


def interactive(model, args) -> int:
    """The prompt loop; returns the exit status (0)."""
    from pixellm.apis import InferenceInputError, load_image
    image: Optional[str] = args.image
    history: list = []
    turn = 0
    print('Ask about an image. Commands: :image (another image), :reset (forget history), '
          ':quit.', flush=True)
    while True:
        if image is None:
            path = _read('Image path (empty to quit): ')
            if path is None or not path.strip():
                return 0
            path = osp.expanduser(path.strip())
            try:
                load_image(path)
            except InferenceInputError as err:
                print(f'error: {err}', flush=True)
                continue
            image, history = path, []
        question = _read('Question: ')
        if question is None or question.strip() == ':quit':
            return 0
        command = question.strip()
        if command == ':image':
            image = None
            continue
        if command == ':reset':
            history = []
            print('(history cleared)', flush=True)
            continue
        turn += 1
        stem = f'{osp.splitext(osp.basename(image))[0]}_turn{turn}'
        try:
            result, _ = ask(model, image, question, history, args, stem)
        except InferenceInputError as err:
            print(f'error: {err}', flush=True)
            if err.field == 'image':
                image = None  # ask for another image
            turn -= 1
            continue
        history.append((question.strip(), result.raw_text))


@cli_main
def main(argv=None) -> int:
    """Check the inputs, load the model, then answer once or chat.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        int: The exit status.

    Raises:
        SystemExit: A missing, unreadable or untrusted checkpoint or config, an unknown config
            type (status 2), or another error (status 1), reported in one line.
    """
    args = parse_args(argv)
    import torch

    from pixellm.apis import InferenceInputError, init_model
    from pixellm.apis.inference import check_text
    from pixellm.engine.checkpoint import UntrustedCheckpointError, check_checkpoint_file
    from pixellm.engine.preflight import check_config_types
    from pixellm.models.export import CONFIG_FILE
    from pixellm.utils import load_config, register_all_modules
    from pixellm.utils.config import ConfigLoadError
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    quantization = '8bit' if args.load_in_8bit else '4bit' if args.load_in_4bit else None
    if args.question is not None:
        # A one-shot input mistake is reported before the (slow) model load.
        if not args.question.strip():
            print('tools/chat.py: error: the question is empty', file=sys.stderr)
            return EXIT_INPUT_ERROR
        if not osp.isfile(args.image):
            print(f'tools/chat.py: error: image {args.image!r} does not exist', file=sys.stderr)
            return EXIT_INPUT_ERROR
        try:
            check_text(args.question, 'question')
        except InferenceInputError as err:
            raise UserError(str(err), '--question') from None
    # Pre-flight, before the (slow) model build: the config's types and the checkpoint file.
    register_all_modules(init_default_scope=True)
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    check_config_types(cfg, args.config)
    if not osp.isfile(osp.join(args.checkpoint, CONFIG_FILE)) and not osp.isdir(args.checkpoint):
        check_checkpoint_file(args.checkpoint, trusted=args.trust_checkpoint or None)
    try:
        model = init_model(cfg, args.checkpoint, device=device, precision=args.precision,
                           quantization=quantization, cfg_options=args.cfg_options,
                           trusted=args.trust_checkpoint or None)
    except (OSError, ValueError, RuntimeError, ImportError, ConfigLoadError,
            UntrustedCheckpointError) as err:
        # OSError: a missing file, or a pretrained folder/hub name transformers cannot load.
        if debug_requested(argv):
            raise
        print(f'tools/chat.py: cannot load the model: {one_line(err)}', file=sys.stderr)
        return EXIT_LOAD_ERROR
    print(f'Loaded {args.checkpoint} ({args.precision}, {device}'
          + (f', LLM {quantization}' if quantization else '') + ')', flush=True)
    if args.question is None:
        try:
            return interactive(model, args)
        except KeyboardInterrupt:
            print('\n(interrupted)', flush=True)
            return 130
    stem = osp.splitext(osp.basename(args.image))[0]
    try:
        ask(model, args.image, args.question, None, args, stem)
    except InferenceInputError as err:
        print(f'tools/chat.py: error: {err}', file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 0


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    sys.exit(main())
