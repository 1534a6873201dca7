#!/usr/bin/env python
"""Train / evaluate GLIP with Detectron2.

    python train_net.py --config-file configs/glip_swin_t.yaml --num-gpus 8
    python train_net.py --config-file configs/glip_swin_t.yaml --eval-only MODEL.WEIGHTS glip_tiny_model_o365_goldg.pth
"""
import logging
import os
import sys
import weakref
from collections import OrderedDict

import detectron2.utils.comm as comm
import yaml
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.engine import (AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, default_argument_parser,
                               default_setup, launch)
from detectron2.engine.hooks import IterationTimer
from detectron2.evaluation import inference_on_dataset, print_csv_format, verify_results
from detectron2.utils.logger import setup_logger

from glip_d2 import add_glip_config
from glip_d2.checkpoint import GLIPCheckpointer
from glip_d2.data import GroundingDatasetMapper, build_grounding_train_loader
from glip_d2.data.class_descriptions import class_descriptions_from_config
from glip_d2.data.datasets import register_datasets_from_config
from glip_d2.engine import (EMAHook, ModelEMA, WeightDecaySchedule, build_glip_evaluator, build_glip_optimizer,
                            build_glip_writers, check_benchmark_options, check_checkpoint_period,
                            check_datasets_present, check_device,
                            check_fixed_vocabulary, check_process_count, check_training_device,
                            create_glip_ddp_model, ema_weights,
                            enable_exact_resume, build_glip_lr_scheduler, keep_fractional_steps, load_eval_weights,
                            log_main_group_lr, match_grad_scaler_state, match_lr_hook_state, prompt_test_dataset,
                            resolve_schedule)
from glip_d2.engine.evaluation import check_test_ground_truth
from glip_d2.evaluation import odinw_suite_summary
from glip_d2.model_zoo import apply_protocol, list_protocols, resolve_config_file


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer's construction, in its order, with two changes: DDP also on the CPU
        # (gloo; Detectron2's create_ddp_model asks for a GPU) and glip_d2's checkpointer
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # no default_setup ran
            setup_logger()
        cfg = keep_fractional_steps(cfg.SOLVER.STEPS, DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size()))
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # SOLVER.MAX_EPOCH and fractional SOLVER.STEPS become iterations, now the data is known
        cfg = resolve_schedule(cfg, lambda: len(data_loader.dataset))
        model = create_glip_ddp_model(
            model, broadcast_buffers=False, find_unused_parameters=cfg.SOLVER.FIND_UNUSED_PARAMETERS
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = GLIPCheckpointer(  # partial_init_ok: e.g. ImageNet backbone weights
            model, cfg.OUTPUT_DIR, partial_init_ok=True, trainer=weakref.proxy(self)
        )
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.ema = None
        if cfg.SOLVER.EMA_DECAY > 0:  # restarted from the loaded weights in resume_or_load
            self.ema = ModelEMA(model, cfg.SOLVER.EMA_DECAY)
            self.checkpointer.add_checkpointable("ema", self.ema)
            if cfg.TEST.USE_EMA:  # the periodic and final evaluations see the EMA weights
                self.test = self._test_with_ema
        self.register_hooks(self.build_hooks())
        enable_exact_resume(self)  # RNG states and the data-stream position go into checkpoints

    def resume_or_load(self, resume=True):
        self.checkpointer.remove_abandoned_saves()  # what a killed run's checkpoint write left
        super().resume_or_load(resume)
        if self.ema is not None:  # the average starts at MODEL.WEIGHTS, not at the random init
            self.ema.start_from(self.model)

    def load_state_dict(self, state_dict):
        # the LR scheduler's state of checkpoints that name its hook "LRScheduler" (Detectron2's);
        # a checkpoint of a run without AMP resumed with AMP (no gradient-scaler state)
        state_dict = match_lr_hook_state(state_dict, self._hooks)
        super().load_state_dict(match_grad_scaler_state(state_dict, self._trainer))

    def _test_with_ema(self, cfg, model, evaluators=None):
        with ema_weights(self.ema, model):
            return type(self).test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_glip_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_grounding_train_loader(cfg, GroundingDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=GroundingDatasetMapper(cfg, is_train=False),
                                           batch_size=cfg.TEST.IMS_PER_BATCH)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_glip_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_glip_lr_scheduler(cfg, optimizer)

    def build_writers(self):
        return build_glip_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def build_hooks(self):
        # log the LR of the main parameter group, not the text encoder's LANG_LR_FACTOR group
        hooks = log_main_group_lr(super().build_hooks(), self.cfg.SOLVER.BASE_LR)
        # right after the timer, before the checkpointer and EvalHook: a checkpoint or an
        # evaluation of iteration i sees the EMA and the weight decay after step i
        after_timer = next((i + 1 for i, h in enumerate(hooks) if isinstance(h, IterationTimer)), 0)
        if self.cfg.SOLVER.WEIGHT_DECAY_SCHEDULE and self.cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
            # official: the decay follows the LR milestones, which only a step schedule has
            logging.getLogger("glip_d2").warning(
                f"SOLVER.WEIGHT_DECAY_SCHEDULE is off: it follows the LR steps of WarmupMultiStepLR, "
                f"and SOLVER.LR_SCHEDULER_NAME is {self.cfg.SOLVER.LR_SCHEDULER_NAME!r}.")
        elif self.cfg.SOLVER.WEIGHT_DECAY_SCHEDULE:
            hooks.insert(after_timer, WeightDecaySchedule(self.optimizer, self.cfg.SOLVER.STEPS,
                                                          self.cfg.SOLVER.GAMMA,
                                                          self.cfg.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO))
        if self.ema is not None:
            hooks.insert(after_timer, EMAHook(self.ema, self.model))
        return hooks

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate each test dataset with its own class names as the prompt vocabulary."""
        results = OrderedDict()
        for name in cfg.DATASETS.TEST:
            prompt_test_dataset(cfg, model, name)
            loader = cls.build_test_loader(cfg, name)
            res = inference_on_dataset(model, loader, cls.build_evaluator(cfg, name))
            results[name] = res
            if comm.is_main_process():
                logging.getLogger("glip_d2").info(f"Evaluation results for {name}:")
                print_csv_format(res)
        for suite, res in odinw_suite_summary(results).items():  # ODinW suite averages
            results[suite] = res
            if comm.is_main_process():
                logging.getLogger("glip_d2").info(f"ODinW {suite}: mean over its datasets")
                print_csv_format(res)
        return results


def load_cfg(args):
    """The config of the arguments, its DATASETS.CUSTOM / CAPTIONS / PSEUDO_LABELS registered.
    ``args.config_file`` becomes the file read: a shipped config's path when it names one (so
    that default_setup, which prints the file, and the launched processes read that file)."""
    args.config_file = resolve_config_file(args.config_file)
    cfg = get_cfg()
    add_glip_config(cfg)
    # yacs reports a misspelt key as a KeyError (file) or AssertionError (overrides), which the
    # command line turned into a traceback; they are configuration errors like a type mismatch
    try:
        cfg.merge_from_file(args.config_file)
    except (KeyError, AssertionError, yaml.YAMLError) as e:
        raise ValueError(f"Config file {args.config_file!r} (or a _BASE_ of it): {_reason(e)}") from e
    if getattr(args, "protocol", ""):  # evaluation protocol on top of the model config
        try:
            apply_protocol(cfg, args.protocol)
        except (KeyError, AssertionError, yaml.YAMLError) as e:
            raise ValueError(f"Protocol {args.protocol!r}: {_reason(e)}") from e
    # argparse hands everything from the first KEY on to the overrides; no config key or value
    # starts with "--" ("--eval" too: argparse takes abbreviated options)
    misplaced = " ".join(o for o in args.opts if o.startswith("--"))
    if misplaced:
        raise ValueError(f"{misplaced!r} follows the KEY VALUE config overrides, which take every "
                         "argument after the first KEY; put train_net.py's options first: "
                         f"train_net.py --config-file FILE {misplaced} ... KEY VALUE ...")
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError) as e:
        raise ValueError(f"Config overrides {' '.join(args.opts)!r}: {_reason(e)} (overrides are "
                         "KEY VALUE pairs of existing config keys).") from e
    # DATASETS.CUSTOM / CAPTIONS / PSEUDO_LABELS entries; evaluating needs only the test sets'
    only = list(cfg.DATASETS.TEST) if getattr(args, "eval_only", False) else None
    register_datasets_from_config(cfg, only=only)
    cfg.freeze()
    return cfg


def _reason(error: Exception) -> str:
    """An exception's message without the quotes ``str`` puts around a KeyError's."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def setup(args):
    cfg = load_cfg(args)
    default_setup(cfg, args)
    # glip_d2's own log lines (optimizer groups, dataset ratios, prompt chunks, fallbacks) go to
    # the console and OUTPUT_DIR/log.txt too; default_setup configures only Detectron2's loggers
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="glip_d2")
    return cfg


def check_output_dir(output_dir: str) -> None:
    """OUTPUT_DIR must be a folder this process can create or write to; else each launched
    process failed in default_setup with a traceback. Nothing is created here (a config found
    wrong by a later check leaves no trace)."""
    path = os.path.abspath(output_dir)
    while not os.path.exists(path):  # the nearest part of the path that exists
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise OSError(f"OUTPUT_DIR {output_dir!r} cannot be created: {path!r} is a file, not a "
                      "folder. Set OUTPUT_DIR to a folder you can write to.")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(f"OUTPUT_DIR {output_dir!r} cannot be written: {path!r} is not writable. "
                      "Set OUTPUT_DIR to a folder you can write to.")


def check_setup(cfg, args):
    """Errors of the config found before any model is built (missing datasets, AMP on the CPU, a
    fixed vocabulary that is not a test set's class list, TEST.BENCHMARK values, test jsons the
    COCO / LVIS evaluators cannot score, class descriptions that do not fit, a checkpoint period
    that is not positive)."""
    check_output_dir(cfg.OUTPUT_DIR)
    check_datasets_present(list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)))
    check_benchmark_options(cfg)  # else found by the first evaluation, after training
    check_test_ground_truth(cfg)  # else found by each test set's evaluator, after training
    class_descriptions_from_config(cfg)  # else a bad training record, or a traceback at the build
    if len(cfg.MODEL.GLIP.VOCABULARY):  # else found by the first evaluation, after training
        for name in cfg.DATASETS.TEST:
            check_fixed_vocabulary(cfg.MODEL.GLIP.VOCABULARY, name)
    if not args.eval_only:
        check_training_device(cfg)
        check_checkpoint_period(cfg)  # else a ZeroDivisionError after the first iteration
    elif not cfg.MODEL.WEIGHTS and not (
        args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    ):
        # Detectron2 would evaluate the random initialisation here, with one log line
        raise ValueError("--eval-only needs weights: set MODEL.WEIGHTS to a checkpoint (or pass --resume "
                         "with a training checkpoint in OUTPUT_DIR); the config names none, so the "
                         "model would be evaluated with random weights.")


def check_machine(cfg, args):
    """Errors of this machine for the config, before any process starts: a MODEL.DEVICE it does
    not have (Detectron2 failed in every process when it moved the model there), more
    ``--num-gpus`` than its GPUs (Detectron2's launch asserted in every process)."""
    check_device(cfg)
    check_process_count(getattr(args, "num_gpus", 1))


def main(args):
    cfg = setup(args)
    check_setup(cfg, args)
    check_machine(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpoint = GLIPCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        load_eval_weights(model, checkpoint, cfg.TEST.USE_EMA)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument("--protocol", default="", help="evaluation protocol applied on top of the "
                        f"config: one of {list_protocols()} or a protocol yaml (configs/protocols/)")
    return parser


def cli(argv=None):
    """The command line: configuration errors are one message (exit 2) before any process starts."""
    args = argument_parser().parse_args(argv)
    try:
        cfg = load_cfg(args)
        check_setup(cfg, args)
        check_machine(cfg, args)
    except (OSError, ValueError) as e:  # missing config or json, malformed json, missing dataset, AMP on CPU
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
