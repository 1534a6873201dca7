import math

import torch
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from glip_d2.modeling.heads import atss_assign, cell_anchor, class_wise_nms, grid_anchors, label_scores
from glip_d2.modeling.heads import box_coder
from glip_d2.modeling.heads.losses import centerness_targets, giou_loss, token_sigmoid_focal_loss


def test_cell_anchors_match_official():
    assert cell_anchor(64, 8).tolist() == [-28, -28, 35, 35]
    assert cell_anchor(1024, 128).tolist() == [-448, -448, 575, 575]
    a = grid_anchors([64], [8], [(2, 3)])[0]
    assert a.shape == (6, 4) and a[4].tolist() == [-28 + 8, -28 + 8, 35 + 8, 35 + 8]  # row y*W+x


def test_box_coder_roundtrip_and_convention():
    anchors = torch.tensor([[0.0, 0, 63, 63], [10, 20, 40, 100]])
    gt = torch.tensor([[5.0, 6, 50, 70], [12, 25, 30, 90]])
    torch.testing.assert_close(box_coder.decode(box_coder.encode(gt, anchors), anchors), gt)
    assert box_coder.encode(anchors, anchors).abs().max() == 0
    b = torch.tensor([[0.0, 0, 10, 10]])
    assert box_coder.from_official(box_coder.to_official(b)).tolist() == b.tolist()


def test_atss_assignment_hand_made():
    # level 0: 4x4 anchors of size 16 at stride 8; level 1: 2x2 anchors of size 32 at stride 16
    anchors = grid_anchors([16, 32], [8, 16], [(4, 4), (2, 2)])
    gt = torch.tensor([[4.0, 4, 19, 19], [8, 8, 39, 39]])  # = anchor (1,1) of level 0 and of level 1
    assigned = atss_assign(anchors, gt, topk=3)
    assert assigned.shape == (20,)
    # the anchor equal to each box (IoU 1) is positive for it
    a0 = torch.cat(anchors)
    ious = box_coder.pairwise_iou(a0, gt)
    assert assigned[ious[:, 0].argmax()] == 0 and assigned[ious[:, 1].argmax()] == 1
    # every positive anchor's centre lies inside its box
    pos = assigned >= 0
    ctr = (a0[pos, :2] + a0[pos, 2:]) / 2
    g = gt[assigned[pos]]
    assert ((ctr > g[:, :2]) & (ctr < g[:, 2:])).all()
    # no boxes: all background
    assert (atss_assign(anchors, torch.zeros(0, 4)) == -1).all()


def test_token_focal_loss_matches_torchvision_on_real_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, generator=g)
    targets = torch.rand(2, 7, 5, generator=g) > 0.7
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ours = token_sigmoid_focal_loss(logits, targets, mask, 0.25, 2.0)
    keep = mask.bool()[:, None, :].expand_as(logits)
    ref = sigmoid_focal_loss(logits[keep], targets[keep].float(), 0.25, 2.0, reduction="sum")
    torch.testing.assert_close(ours, ref)


def test_giou_loss_matches_torchvision():
    anchors = torch.tensor([[0.0, 0, 31, 31], [10, 10, 60, 40]])
    pred = torch.tensor([[0.1, -0.2, 0.3, 0.1], [-0.5, 0.2, -0.1, 0.4]])
    tgt = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, -0.1, 0.2, -0.2]])
    w = torch.tensor([0.5, 2.0])
    ours = giou_loss(pred, tgt, anchors, w)
    p, t = box_coder.decode(pred, anchors), box_coder.decode(tgt, anchors)
    ref = ((1 - torch.diag(generalized_box_iou(p, t))) * w).sum()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_centerness_targets_by_hand():
    gt = torch.tensor([[0.0, 0, 40, 20]])
    anc = torch.tensor([[0.0, 0, 20, 10]])  # centre (10, 5): l=10 r=30 t=5 b=15
    assert math.isclose(centerness_targets(gt, anc).item(), math.sqrt((10 / 30) * (5 / 15)), rel_tol=1e-6)


def test_label_scores_mean_and_max():
    probs = torch.tensor([[0.2, 0.4, 0.9, 0.1]])
    pm = torch.tensor([[False, True, True, False], [True, False, False, False]])
    torch.testing.assert_close(label_scores(probs, pm, "MEAN"), torch.tensor([[0.65, 0.2]]))
    torch.testing.assert_close(label_scores(probs, pm, "MAX"), torch.tensor([[0.9, 0.2]]))


def test_class_wise_nms_plus_one_convention():
    boxes = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 10], [0, 0, 9, 9], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    keep = class_wise_nms(boxes, scores, labels, 0.6)
    assert keep.tolist() == [0, 2, 3]  # other label never suppressed; ascending indices
    # +1 convention: IoU of [0,0,9,9] vs [0,0,9,12] is 100/130 = 0.769 (not 81/108 = 0.75)
    b = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 12]])
    assert class_wise_nms(b, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.76).tolist() == [0]
