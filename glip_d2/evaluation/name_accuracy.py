"""Name accuracy at ATSS positives: does the right name win where the head is trained to name?

COCO AP mixes localisation and naming. This diagnostic isolates naming: for each ground-truth
box, take the anchors ATSS makes positive for it (the anchors whose token logits the training
loss pushes towards the box's name), score every name of a test vocabulary there exactly as
inference does (sigmoid of the dot-product logits, aggregated per name), and count how often
the box's own name has the highest score.
"""
from typing import Dict, List, Sequence

import torch

from ..modeling.heads import atss_assign, box_coder, label_scores_from_logits


@torch.no_grad()
def name_accuracy_at_positives(model, batched_inputs: List[Dict], vocabulary: Sequence[str],
                               gt_names: List[List[str]]) -> Dict:
    """
    Args:
        model: a GLIP meta-architecture (one-stage, ATSS head).
        batched_inputs: model inputs with "image" (CHW uint8, network-input size) and
            "instances" with ``gt_boxes`` in that size.
        vocabulary: names of the prompt; must fit one prompt chunk.
        gt_names: per input, the name of each of its boxes (each must be in ``vocabulary``).

    Returns:
        dict with ``accuracy`` (fraction of positive anchors whose top-scored name is their
        box's name), ``num_positives``, and per positive anchor ``pred`` / ``gt`` (indices into
        ``vocabulary``), ``level`` (pyramid level index) and ``features`` (the tower output the
        scorer sees at each positive anchor, (P, C), for probing) and ``fpn_features`` (the
        image backbone's features there).
    """
    was_training = model.training
    model.eval()
    try:
        model.set_vocabulary(list(vocabulary))
        if len(model._chunks) != 1:
            raise ValueError(
                f"name_accuracy_at_positives needs a vocabulary that fits one prompt; "
                f"{len(vocabulary)} names gave {len(model._chunks)} chunks."
            )
        (caption, spans, label_ids), = model._prompts_for({})[0]
        _, lang, pmap = model._cached_prompt(caption, spans)
        images = model.preprocess_image(batched_inputs)
        feats = model.extract_features(images)
        batch = len(batched_inputs)
        lang_b = {k: v.expand(batch, *v.shape[1:]) for k, v in lang.items()}
        out = model.head(feats, lang_b)
        logits = torch.cat(out["token_logits"], dim=1)  # (B, A, T)
        level_of_anchor = torch.cat(
            [torch.full((a.shape[0],), i, dtype=torch.long) for i, a in enumerate(out["anchors"])]
        )
        index = {name: k for k, name in zip(label_ids, vocabulary)}
        flat_visual = torch.cat([v.flatten(2) for v in out["visual"]], dim=2).transpose(1, 2)
        flat_fpn = torch.cat([f.flatten(2) for f in feats], dim=2).transpose(1, 2)
        preds, gts, levels, features, fpn_features = [], [], [], [], []
        for i, (x, names) in enumerate(zip(batched_inputs, gt_names)):
            boxes = x["instances"].gt_boxes.tensor.to(logits.device)
            if len(boxes) == 0:
                continue
            missing = [n for n in names if n not in index]
            if missing:
                raise ValueError(f"Box names {missing} are not in the vocabulary {list(vocabulary)}.")
            assigned = atss_assign(out["anchors"], box_coder.to_official(boxes.float()), model.head.topk)
            pos = (assigned >= 0).nonzero().flatten()
            scores = label_scores_from_logits(logits[i, pos], pmap, model.head.test_args["score_agg"])
            order = torch.as_tensor(label_ids, device=scores.device)
            preds.append(order[scores.argmax(dim=1)])
            gts.append(torch.as_tensor([index[names[j]] for j in assigned[pos].tolist()], dtype=torch.long))
            levels.append(level_of_anchor[pos.cpu()])
            features.append(flat_visual[i, pos].cpu())
            fpn_features.append(flat_fpn[i, pos].cpu())
    finally:
        model.train(was_training)
    pred = torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.long)
    gt = torch.cat(gts) if gts else torch.zeros(0, dtype=torch.long)
    accuracy = (pred == gt).float().mean().item() if len(gt) else float("nan")
    return dict(accuracy=accuracy, num_positives=len(gt), pred=pred, gt=gt,
                level=torch.cat(levels) if levels else torch.zeros(0, dtype=torch.long),
                features=torch.cat(features) if features else torch.zeros(0, 0),
                fpn_features=torch.cat(fpn_features) if fpn_features else torch.zeros(0, 0))
