"""Tiny referring-segmentation fixtures in the real on-disk formats, and the demo pipeline.

Masks are described as plain numpy boxes so that tests compare decoded masks with expectations
built without pycocotools or OpenCV.
"""
import functools
import json
import os
import os.path as osp
import pickle

import numpy as np
from PIL import Image

from pixellm.utils.config import load_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')
COCO_DIR = 'refer_seg/images/mscoco/images/train2014'

# Images: id -> (file name, height, width).
IMAGES = {1: ('COCO_train2014_000000000001.jpg', 20, 30),
          2: ('COCO_train2014_000000000002.jpg', 16, 16)}
CATEGORIES = [dict(id=1, name='person'), dict(id=3, name='car'), dict(id=18, name='dog')]


def box_mask(height, width, y0, y1, x0, x1):
    """A boolean mask true on rows ``y0:y1`` and columns ``x0:x1``."""
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def uncompressed_rle(mask):
    """COCO's uncompressed RLE (column-major runs starting with background), by hand."""
    flat = mask.flatten(order='F').tolist()
    counts, current, run = [], False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return dict(size=list(mask.shape), counts=counts)


# Annotation id -> its expected mask; annotations() writes them as polygons or RLE.
ANN_MASKS = {
    11: box_mask(20, 30, 3, 8, 2, 10),     # polygon: rows 3-7, columns 2-9, 40 pixels
    12: box_mask(20, 30, 10, 15, 20, 26),  # uncompressed RLE, 30 pixels
    13: box_mask(16, 16, 1, 5, 1, 9),      # polygon, 32 pixels
    14: box_mask(16, 16, 10, 14, 4, 7),    # uncompressed RLE, 12 pixels
}


def annotations():
    """COCO annotations of the four fixture objects."""
    return [
        dict(id=11, image_id=1, category_id=1, iscrowd=0,
             segmentation=[[2, 3, 10, 3, 10, 8, 2, 8]]),
        dict(id=12, image_id=1, category_id=3, iscrowd=1,
             segmentation=uncompressed_rle(ANN_MASKS[12])),
        dict(id=13, image_id=2, category_id=18, iscrowd=0,
             segmentation=[[1, 1, 9, 1, 9, 5, 1, 5]]),
        dict(id=14, image_id=2, category_id=1, iscrowd=1,
             segmentation=uncompressed_rle(ANN_MASKS[14])),
    ]


def instances(anns=None):
    return dict(images=[dict(id=i, file_name=name, height=h, width=w)
                        for i, (name, h, w) in IMAGES.items()],
                annotations=annotations() if anns is None else anns,
                categories=CATEGORIES)


def sentences(*texts, start=0):
    return [dict(sent=t, raw=t, tokens=t.split(), sent_id=start + k) for k, t in enumerate(texts)]


def write_images(root, image_dir=COCO_DIR, skip=()):
    folder = osp.join(str(root), image_dir)
    os.makedirs(folder, exist_ok=True)
    for image_id, (name, h, w) in IMAGES.items():
        if image_id in skip:
            continue
        Image.fromarray(np.full((h, w, 3), 90 + image_id, dtype=np.uint8)).save(
            osp.join(folder, name))


def write_refer(root, refs, dataset='refcoco', refs_name='refs(unc).p', inst=None,
                image_dir=COCO_DIR, skip_images=()):
    """Write ``refer_seg/<dataset>/<refs_name>`` (pickle or json), ``instances.json`` and images.

    Returns:
        str: ``root`` as a string, the dataset's ``data_root``.
    """
    folder = osp.join(str(root), 'refer_seg', dataset)
    os.makedirs(folder, exist_ok=True)
    path = osp.join(folder, refs_name)
    if refs_name.endswith('.json'):
        with open(path, 'w') as f:
            json.dump(refs, f)
    else:
        with open(path, 'wb') as f:
            pickle.dump(refs, f)
    with open(osp.join(folder, 'instances.json'), 'w') as f:
        json.dump(instances() if inst is None else inst, f)
    write_images(root, image_dir, skip_images)
    return str(root)


def run(transforms, results):
    """Apply transforms in order."""
    for t in transforms:
        results = t(results)
    return results


@functools.lru_cache(maxsize=None)
def _demo_config():
    return load_config(DEMO_CONFIG)


def demo_pipeline(kind='train_pipeline', replace=None, insert_before=None):
    """The tokenizing pipeline of ``projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py`` with swapped steps.

    Args:
        kind (str): ``'train_pipeline'`` or ``'test_pipeline'``.
        replace (dict): Transform type -> the config that replaces it (kept arguments are lost).
        insert_before (tuple): ``(type, cfg)``: insert ``cfg`` before the step of that type.

    Returns:
        list[dict]: Transform configs.
    """
    # The loaders' pipelines: load_config has handed them the config's text processor.
    loader = dict(train_pipeline='train_dataloader', test_pipeline='test_dataloader')[kind]
    steps = [dict(step) for step in _demo_config()[loader]['dataset']['pipeline']]
    out = []
    for step in steps:
        if insert_before and step['type'] == insert_before[0]:
            out.append(dict(insert_before[1]))
        out.append(dict((replace or {}).get(step['type'], step)))
    return out
