"""The data sample that carries one image-conversation pair through pipeline, model and metrics."""
from mmengine.structures import BaseDataElement, InstanceData


class PixelLMDataSample(BaseDataElement):
    """One image with one conversation, its ground truth in and its prediction out.

    Metainfo keys written by the pipeline: ``img_path``, ``ori_shape`` (H, W of the original
    image), ``img_shape`` (H, W after the longest-side resize, before padding), ``question``,
    ``answer`` (ground-truth answer text with codebook tokens), ``conversation`` (list of
    ``dict(role, content)``), ``num_targets``.

    Data fields:
        input_ids (Tensor): ``(L,)`` token ids of the whole conversation, ``IMAGE_TOKEN_INDEX``
            where the image goes.
        labels (Tensor): ``(L,)`` targets with the prompt masked by ``IGNORE_INDEX``.
        prompt_ids (Tensor): ``(P,)`` token ids of the prompt up to the assistant turn, for
            generation.
        gt_instances (InstanceData): ``masks`` ``(N, H, W)`` bool at the original resolution,
            one per target in answer order.
        pred_instances (InstanceData): ``masks`` ``(N, H, W)`` bool and ``scores`` ``(N,)``.
        pred_text (str, metainfo): the generated answer.
        pred_truncated (bool, metainfo): the answer used the whole generation budget without
            ending; targets it would have written after the cut have no mask.
    """

    @property
    def gt_instances(self) -> InstanceData:
        return self._gt_instances

    @gt_instances.setter
    def gt_instances(self, value: InstanceData) -> None:
        self.set_field(value, '_gt_instances', dtype=InstanceData)

    @gt_instances.deleter
    def gt_instances(self) -> None:
        del self._gt_instances

    @property
    def pred_instances(self) -> InstanceData:
        return self._pred_instances

    @pred_instances.setter
    def pred_instances(self, value: InstanceData) -> None:
        self.set_field(value, '_pred_instances', dtype=InstanceData)

    @pred_instances.deleter
    def pred_instances(self) -> None:
        del self._pred_instances
