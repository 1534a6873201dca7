"""Review of the one-stage mask head (MODEL.MASK_ON): norms and batches without masked boxes."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from glip_d2.modeling.heads.mask_head import GLIPMaskHead
from tests.helpers import make_input
from tests.modeling.test_mask_head import CAPTION, _batch, _cfg


def _features(channels=16, size=(160, 192)):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, channels, size[0] // s, size[1] // s, generator=g) for s in (8, 16, 32)]


def _instances(n, size=(160, 192), masks=True):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 70.0, 90.0]] * n).reshape(-1, 4))
    if masks:
        m = torch.zeros(n, *size, dtype=torch.bool)
        m[:, 30:80, 20:60] = True
        inst.gt_masks = BitMasks(m)
    return inst


@pytest.mark.parametrize("norm", ["SyncBN", "nnSyncBN", "naiveSyncBN"])
def test_a_norm_that_fails_on_empty_batches_is_refused_at_construction(norm):
    """A batch without masked boxes runs the head on zero RoIs; with nn.SyncBatchNorm Detectron2's
    Conv2d asserted there ("SyncBatchNorm does not support empty inputs!"), at the first such batch
    of a training run instead of when the model was built."""
    with pytest.raises(ValueError, match="MODEL.ROI_MASK_HEAD.NORM.*naiveSyncBN_N"):
        GLIPMaskHead(channels=16, conv_dim=32, num_conv=1, norm=norm)
    cfg = _cfg()
    cfg.MODEL.ROI_MASK_HEAD.NORM = norm
    with pytest.raises(ValueError, match=norm):
        build_model(cfg)


@pytest.mark.parametrize("norm", ["naiveSyncBN_N", "BN", "GN"])
def test_the_advised_norms_train_on_batches_with_and_without_masks(norm):
    torch.manual_seed(0)
    head = GLIPMaskHead(channels=16, conv_dim=32, num_conv=1, norm=norm).train()
    feats = _features()
    with EventStorage():
        empty = head.losses(feats, [_instances(1, masks=False)])["loss_mask"]
        full = head.losses(feats, [_instances(2)])["loss_mask"]
    assert empty.item() == 0.0 and empty.requires_grad
    assert full.item() > 0.1
    empty.backward()
    assert all(p.grad is not None and not p.grad.any() for p in head.parameters())


def test_a_model_with_a_synchronised_norm_trains_on_a_batch_without_masks():
    cfg = _cfg()
    cfg.MODEL.ROI_MASK_HEAD.NORM = "naiveSyncBN_N"
    torch.manual_seed(0)
    m = build_model(cfg).train()
    no_masks = make_input(m, CAPTION, [[10, 20, 70, 90]], [(0, 10)])
    with EventStorage():
        assert m([no_masks])["loss_mask"].item() == 0.0
        assert m(_batch(m))["loss_mask"].item() > 0.1
