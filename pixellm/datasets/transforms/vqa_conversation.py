"""From a LLaVA-format record to a neutral conversation (the dataset's map step for VQA data)."""
from mmcv.transforms import BaseTransform

from pixellm.registry import TRANSFORMS
from pixellm.utils.constants import DEFAULT_IMAGE_TOKEN

_ROLE_OF = dict(human='user', gpt='assistant')


@TRANSFORMS.register_module()
class BuildVQAConversation(BaseTransform):
    """Turn LLaVA ``{from, value}`` turns into ``dict(role, content)`` turns with no target.

    The image token is handled as the official ``preprocess_multimodal``: the turn that holds
    ``<image>`` loses it and is stripped, and ``'<image>\\n'`` goes in front. Here that is always
    the first user turn (the contract of the pipeline): a record whose ``<image>`` stands in a later
    turn, or that has none, gets it there too; the official loader would leave it in the later turn,
    or leave the image without a token.

    Required keys: ``conversations`` (from ``LLaVAInstructDataset``: alternating ``'human'`` /
    ``'gpt'`` turns, ending with ``'gpt'``).
    Added keys: ``conversation``, ``question`` (the first user turn without the image token),
    ``answer`` (the last answer), ``targets`` (empty) and ``num_targets`` (0), so that
    ``DecodeTargetMasks`` gives ``gt_masks`` of shape ``(0, H, W)``.
    """

    def transform(self, results: dict) -> dict:
        """Write the conversation.

        Args:
            results (dict): Data info from ``LLaVAInstructDataset``.

        Returns:
            dict: ``results`` with the keys above.
        """
        conversation = []
        for turn in results['conversations']:
            text = turn['value']
            if DEFAULT_IMAGE_TOKEN in text:
                text = text.replace(DEFAULT_IMAGE_TOKEN, '').strip()
            conversation.append(dict(role=_ROLE_OF[turn['from']], content=text))
        question = conversation[0]['content']
        conversation[0]['content'] = f'{DEFAULT_IMAGE_TOKEN}\n{question}'
        results['conversation'] = conversation
        results['question'] = question
        results['answer'] = conversation[-1]['content']
        results['targets'] = []
        results['num_targets'] = 0
        return results
