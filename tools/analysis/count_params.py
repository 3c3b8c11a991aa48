"""Print a config's model parameter count per component, built on the meta device (no weights).

Usage: python tools/analysis/count_params.py configs/_base_/models/pixellm_7b.py
"""
import argparse
from collections import OrderedDict

from mmengine.config import DictAction
from mmengine.registry import init_default_scope


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    args = parser.parse_args()
    from pixellm.utils import load_config
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    init_default_scope('pixellm')
    import pixellm.models  # noqa: F401
    from pixellm.models.meta_build import build_on_meta, count_parameters
    model = build_on_meta(cfg.model)
    rows = OrderedDict()
    for name, child in model.named_children():
        total, trainable = count_parameters(child)
        if total:
            rows[name] = (total, trainable)
    total, trainable = count_parameters(model)
    width = max(len(n) for n in rows) + 2
    print(f'{"component":<{width}}{"parameters":>16}{"trainable":>16}')
    for name, (t, tr) in rows.items():
        print(f'{name:<{width}}{t:>16,}{tr:>16,}')
    print(f'{"total":<{width}}{total:>16,}{trainable:>16,}')


if __name__ == '__main__':
    main()
