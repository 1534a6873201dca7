from .anchors import cell_anchor, grid_anchors
from .atss_assigner import atss_assign
from .grounding_head import GLIPATSSHead
from .postprocess import class_wise_nms, label_scores, label_scores_from_logits, select_detections
from .region_word import RegionWordScorer
