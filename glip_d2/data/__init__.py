"""Grounding data: mapper, registration helpers, the embedded shapes dataset, visualization."""
from . import builtin  # noqa: F401  (registers shapes_train, shapes_val, shapes_val_novel, shapes_train_grounding)
from . import datasets  # noqa: F401  (registers the benchmark datasets present under $DETECTRON2_DATASETS)
from . import shapes_refexp  # noqa: F401  (registers shapes_refexp_train, _val, _val_novel)
from .build import build_grounding_train_loader
from .builtin import register_all_shapes, register_shapes_split
from .mapper import GroundingDatasetMapper
from .sampler import DatasetRatioTrainingSampler
from .register import register_detection_as_grounding, register_grounding_instances
from .shapes_refexp import register_shapes_refexp
from .visualize import draw_dataset_dict, draw_grounding
