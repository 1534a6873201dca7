"""Second review of the two-stage model: the focal loss of the language-aware box predictor
under DDP (two processes give the loss and gradient of one process on their whole batch)."""

import pytest
import torch
import torch.distributed as dist
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from glip_d2.modeling.roi_heads import (
    BACKGROUND_INDEX,
    EncodedPrompt,
    LanguageAwareBoxPredictor,
    RegionTextInputs,
)
from tests.gloo import run_gloo_workers

C, D, T = 16, 8, 7


def _predictor(cls_loss: str = "focal") -> LanguageAwareBoxPredictor:
    torch.manual_seed(0)
    return LanguageAwareBoxPredictor(
        ShapeSpec(channels=C),
        language_dim=D,
        box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
        embed_dim=6,
        cls_loss=cls_loss,
    )


def _image(i: int):
    """Image i of a two-image batch: 8 sampled regions each; image 0 has 5 foreground regions,
    image 1 one (the focal loss's normaliser differs per image)."""
    g = torch.Generator().manual_seed(i)
    bg = BACKGROUND_INDEX
    gt_index = [0, 0, 1, 1, 0, bg, bg, bg] if i == 0 else [0, bg, bg, bg, bg, bg, bg, bg]
    props = Instances((100, 100))
    xy = torch.rand(8, 2, generator=g) * 50
    props.proposal_boxes = Boxes(torch.cat([xy, xy + 10 + torch.rand(8, 2, generator=g) * 40], 1))
    props.gt_classes = torch.tensor(gt_index)
    props.gt_boxes = Boxes(props.proposal_boxes.tensor + torch.randn(8, 4, generator=g) * 3)
    prompt = EncodedPrompt(
        tokens=torch.randn(T, D, generator=g),
        mask=torch.tensor([1, 1, 1, 1, 1, 0, 0]),
        input_ids=torch.tensor([101, 5, 6, 1012, 7, 0, 0]),
    )
    pmap = torch.zeros(2, 256, dtype=torch.bool)
    pmap[0, 1:3] = True
    pmap[1, 4] = True
    return torch.randn(8, C, generator=g), props, prompt, pmap


def _loss(predictor, images):
    x = torch.cat([im[0] for im in images])
    text = RegionTextInputs(
        prompts=[[im[2]] for im in images], gt_positive_maps=[im[3] for im in images]
    )
    return predictor.losses(predictor(x), [im[1] for im in images], text)


def _ddp_focal_worker(rank, world, result_file):
    torch.set_num_threads(1)
    predictor = _predictor()
    losses = _loss(predictor, [_image(rank)])  # each process its own image
    sum(losses.values()).backward()
    for p in predictor.parameters():  # what DDP does: the mean of the processes' gradients
        dist.all_reduce(p.grad)
        p.grad /= world
    logged = {}
    for k, v in losses.items():  # Detectron2 logs the mean over processes
        v = v.detach().clone()
        dist.all_reduce(v)
        logged[k] = v / world
    if rank == 0:
        grads = {n: p.grad for n, p in predictor.named_parameters()}
        torch.save({"losses": logged, "grads": grads}, result_file)


@pytest.mark.heavy(10)
def test_focal_roi_loss_under_ddp_is_the_one_process_loss_of_the_whole_batch(tmp_path, one_thread):
    """The focal loss was normalised by each process's own foreground count: a process whose
    image had one foreground region weighted it 5x more than one process on the whole batch (and
    than one-stage GLIP, whose normaliser is reduced over the processes)."""
    result = tmp_path / "ddp.pt"
    run_gloo_workers(_ddp_focal_worker, 2, tmp_path, str(result))
    got = torch.load(result)
    predictor = _predictor()
    losses = _loss(predictor, [_image(0), _image(1)])
    sum(losses.values()).backward()
    for k, v in losses.items():
        assert got["losses"][k].item() == pytest.approx(v.item(), rel=1e-5), k
    for n, p in predictor.named_parameters():
        torch.testing.assert_close(got["grads"][n], p.grad, rtol=1e-4, atol=1e-7, msg=n)
