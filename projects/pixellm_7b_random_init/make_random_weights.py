"""Write random-weight stand-ins for the checkpoints a PixelLM recipe loads.

A recipe's ``model.llm`` and ``model.vision_encoder`` name checkpoints (``LLaVA-Lightning-7B-v1-1``,
``openai/clip-vit-large-patch14-336``) that are loaded with ``from_pretrained``. This script writes
folders of the same architecture with random weights, so that the recipe's whole path (loading,
training, evaluation, chat, DeepSpeed) runs where the real checkpoints are not available:

* ``<out>/llava``: the recipe's ``llm_config`` architecture (``LlamaForCausalLM`` for PixelLM-7B),
  in the LLM's ``torch_dtype``, with the toolbox's shipped tokenizer padded with filler tokens to
  the LLM's vocabulary size, so that the tokens PixelLM adds get the ids they get with LLaMA's
  tokenizer;
* ``<out>/clip``: a ``CLIPVisionModel`` of the recipe's ``vision_config`` (ViT-L/14-336), float32
  like OpenAI's checkpoint.

Example (PixelLM-7B, built on the GPU in seconds)::

    python projects/pixellm_7b_random_init/make_random_weights.py \\
        configs/pixellm/pixellm_7b_lora_8xb2_ga10_5k_mix.py --out work_dirs/random_7b --device cuda

An existing folder is never overwritten: the script stops if ``--out`` holds anything.
"""
import argparse
import os
import os.path as osp
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='a recipe whose model the weights are for')
    parser.add_argument('--out', required=True, help='output folder (must not hold anything)')
    parser.add_argument('--device', default='cpu', help='where the weights are drawn (cpu, cuda)')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config keys, e.g. model.llm.llm_config.num_hidden_layers=2')
    return parser.parse_args(argv)


def padded_tokenizer(vocab_size: int, model_max_length: int):
    """The shipped tiny tokenizer with ``<filler_i>`` tokens up to ``vocab_size`` ids."""
    from pixellm.text.tokenizers import build_tokenizer
    base = len(build_tokenizer(dict(type='TinyTokenizer')))
    if vocab_size < base:
        raise ValueError(f'the LLM vocabulary ({vocab_size}) is smaller than the shipped '
                         f'tokenizer ({base} ids)')
    return build_tokenizer(dict(type='TinyTokenizer', model_max_length=model_max_length,
                                extra_tokens=[f'<filler_{i}>' for i in range(vocab_size - base)]))


def write_llm(llm_cfg, tokenizer_cfg, out: str, device: str) -> int:
    """Save a random ``*ForCausalLM`` of ``llm_cfg['llm_config']`` and its tokenizer to ``out``."""
    from pixellm.models.llms.causal_lm import _architecture
    cfg = dict(llm_cfg['llm_config'])
    config_cls, model_cls = _architecture(cfg.pop('model_type', 'llama'))
    dtype = llm_cfg.get('torch_dtype')
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or torch.float32)
    with torch.device(device):
        model = model_cls(config_cls(**cfg)).to(dtype)
    model.save_pretrained(out)
    tokenizer = padded_tokenizer(model.config.vocab_size,
                                 tokenizer_cfg.get('model_max_length', 512))
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def write_clip(vision_cfg, out: str, device: str) -> int:
    """Save a random float32 ``CLIPVisionModel`` of ``vision_cfg['vision_config']`` to ``out``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    with torch.device(device):
        model = CLIPVisionModel(CLIPVisionConfig(**vision_cfg['vision_config']))
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def main(argv=None) -> None:
    args = parse_args(argv)
    from pixellm.utils.config import load_config
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    if osp.isdir(args.out) and os.listdir(args.out):
        raise SystemExit(f'error: {args.out} is not empty; choose another --out')
    for key, shape in (('llm', 'llm_config'), ('vision_encoder', 'vision_config')):
        if not cfg.model[key].get(shape):
            raise SystemExit(f'error: {args.config}: model.{key} has no {shape} to build from')
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    llm = write_llm(cfg.model.llm, cfg.model.text_processor.tokenizer, osp.join(args.out, 'llava'),
                    args.device)
    clip = write_clip(cfg.model.vision_encoder, osp.join(args.out, 'clip'), args.device)
    print(f'wrote {args.out}/llava ({llm:,} parameters, with the padded tokenizer) and '
          f'{args.out}/clip ({clip:,} parameters) in {time.perf_counter() - t0:.1f} s')


if __name__ == '__main__':
    main()
