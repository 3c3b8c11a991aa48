"""PixelLM in the browser: upload an image, ask, see the answer with one coloured mask per target.

    pip install -e '.[web]'
    python demo/app.py CONFIG CHECKPOINT [--port 7860] [--examples data/muse_demo/muse_val.json]

With the offline demo's checkpoint (``make demo``)::

    python demo/app.py projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py \\
        "$(cat work_dirs/pixellm_tiny_demo/last_checkpoint)"

The page has an image input, a question box and an Ask button; the answer comes back as text
with each target numbered, a list of the targets, and the image with each target's mask in its
colour (the overlay ``tools/chat.py`` saves). Examples are the first questions of a MUSE-format
annotation file (the generated demo set by default). Everything runs through
:func:`pixellm.apis.inference`; nothing leaves the machine (Gradio analytics off, no share link).
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import List, Optional, Tuple

# Run from a checkout without installing: the repository root holds the pixellm package.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')

from mmengine.config import DictAction  # noqa: E402

DEFAULT_EXAMPLES = 'data/muse_demo/muse_val.json'


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='PixelLM web demo (Gradio)')
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help='.pth checkpoint or exported folder')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on')
    parser.add_argument('--port', type=int, default=7860, help='port (default 7860)')
    parser.add_argument('--examples', default=DEFAULT_EXAMPLES,
                        help='MUSE-format json whose first questions become examples '
                        f'(default {DEFAULT_EXAMPLES}; skipped when absent)')
    parser.add_argument('--num-examples', type=int, default=4)
    parser.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default='fp32')
    parser.add_argument('--device', default=None, help='cpu, cuda... (default: cuda if any)')
    parser.add_argument('--max-new-tokens', type=int, default=None)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the checkpoint without the allow-list (trusted files)')
    return parser.parse_args(argv)


def muse_examples(ann_file: str, num: int) -> List[Tuple[str, str]]:
    """``(image path, question)`` pairs from the first records of a MUSE-format file.

    The image folder is ``images/`` next to the json (the layout the demo generator writes and
    the MUSE configs use). A missing file gives no examples.

    Args:
        ann_file (str): The annotation json.
        num (int): Number of examples.

    Returns:
        list[tuple[str, str]]: The examples.
    """
    if not ann_file or not osp.isfile(ann_file):
        return []
    try:
        with open(ann_file) as f:
            records = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f'--examples {ann_file!r} is not a readable json file ({err})') from err
    if not isinstance(records, list):
        raise ValueError(f'--examples {ann_file!r}: expected a MUSE-format list of records')
    examples = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or 'file_name' not in record:
            raise ValueError(f'--examples {ann_file!r}: record {index} has no "file_name"')
        path = osp.join(osp.dirname(ann_file), 'images', record['file_name'])
        if osp.isfile(path) and record.get('questions'):
            examples.append((path, record['questions'][0]))
        if len(examples) >= num:
            break
    return examples


def build_demo(model, examples: List[Tuple[str, str]], max_new_tokens: Optional[int] = None):
    """The Gradio Blocks app around ``model``.

    Args:
        model (PixelLM): From :func:`pixellm.apis.init_model`.
        examples (list[tuple[str, str]]): ``(image path, question)`` examples.
        max_new_tokens (int, optional): Generation budget.

    Returns:
        gradio.Blocks: The app (not launched).
    """
    import gradio as gr
    import numpy as np

    from pixellm.apis import InferenceInputError, inference

    def answer(image: Optional[np.ndarray], question: str):
        if image is None:
            raise gr.Error('Upload an image first.')
        try:
            result = inference(model, image, question or '', max_new_tokens=max_new_tokens)
        except InferenceInputError as err:
            raise gr.Error(str(err)) from err
        targets = '\n'.join(result.target_lines()) or 'no target in this answer'
        return result.text, targets, np.asarray(result.overlay())

    with gr.Blocks(title='PixelLM') as demo:
        gr.Markdown('# PixelLM\nAsk about an image; each target the answer names gets its own '
                    'numbered mask.')
        with gr.Row():
            with gr.Column():
                image = gr.Image(type='numpy', label='Image', elem_id='image')
                question = gr.Textbox(label='Question', elem_id='question',
                                      placeholder='e.g. Where are the red shapes?')
                ask = gr.Button('Ask', variant='primary', elem_id='ask')
            with gr.Column():
                text = gr.Textbox(label='Answer', elem_id='answer', interactive=False)
                targets = gr.Textbox(label='Targets', elem_id='targets', interactive=False)
                # PNG: Gradio's default (webp) is lossy and would blur the mask colours.
                overlay = gr.Image(label='Masks', type='numpy', elem_id='overlay',
                                   interactive=False, format='png')
        if examples:
            gr.Examples(examples=[list(e) for e in examples], inputs=[image, question])
        # One queue for both triggers: the model answers one request at a time.
        ask.click(answer, inputs=[image, question], outputs=[text, targets, overlay],
                  concurrency_id='pixellm', concurrency_limit=1)
        question.submit(answer, inputs=[image, question], outputs=[text, targets, overlay],
                        concurrency_id='pixellm', concurrency_limit=1)
    return demo


def main(argv=None) -> int:
    """Load the model and serve the page until interrupted."""
    args = parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("demo/app.py: the web demo needs gradio: pip install -e '.[web]'",
              file=sys.stderr)
        return 1
    import torch

    from pixellm.apis import init_model
    from pixellm.engine.checkpoint import UntrustedCheckpointError
    from pixellm.utils.config import ConfigLoadError
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        examples = muse_examples(args.examples, args.num_examples)
        model = init_model(args.config, args.checkpoint, device=device,
                           precision=args.precision, cfg_options=args.cfg_options,
                           trusted=args.trust_checkpoint or None)
    except (OSError, ValueError, RuntimeError, ImportError, ConfigLoadError,
            UntrustedCheckpointError) as err:
        print(f'demo/app.py: cannot load the model: {err}', file=sys.stderr)
        return 1
    demo = build_demo(model, examples, args.max_new_tokens)
    print(f'PixelLM demo on http://{args.host}:{args.port}', flush=True)
    demo.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False,
                show_error=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
