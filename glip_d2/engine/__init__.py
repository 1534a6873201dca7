from .datasets_check import check_datasets_present
from .ddp import create_glip_ddp_model
from .device_check import check_device, check_process_count, check_training_device
from .ema import EMAHook, ModelEMA, ema_weights, load_ema_for_eval, load_eval_weights
from .evaluation import (build_glip_evaluator, check_benchmark_options, check_fixed_vocabulary,
                         fast_coco_eval_available, prompt_test_dataset, set_test_vocabulary)
from .hooks import MainGroupLRScheduler, log_main_group_lr, match_lr_hook_state
from .optimizer import build_glip_optimizer, param_groups
from .resume import (ExactResumeHook, enable_exact_resume, get_rng_state, match_grad_scaler_state,
                     set_rng_state)
from .schedule import (build_glip_lr_scheduler, check_checkpoint_period, keep_fractional_steps,
                       resolve_schedule)
from .weight_decay import WeightDecaySchedule
from .writers import RedoneIterationLogs, build_glip_writers, drop_records_from, tensorboard_available
