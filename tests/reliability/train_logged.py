"""Run train_net.py's training (the same Trainer, setup, --resume and --num-gpus) and append every
iteration's exact total loss to a file: ``python tests/reliability/train_logged.py LOSS_FILE
[train_net arguments]``. Used by test_exact_resume.py, which kills and resumes it."""

import os
import sys

import detectron2.utils.comm as comm
import torch
from detectron2.engine import HookBase, default_argument_parser, launch

from tests.reliability.helpers import load_train_net  # the test runs this with PYTHONPATH=ROOT


class LossLog(HookBase):
    def __init__(self, path):
        self.path = path

    def after_step(self):
        loss = self.trainer.storage.history("total_loss").latest()
        with open(self.path, "a") as f:
            f.write(f"{self.trainer.iter} {float(loss).hex()}\n")
            f.flush()
            os.fsync(f.fileno())


def _train(loss_file, args):
    torch.set_num_threads(1)
    train_net = load_train_net()
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    if comm.is_main_process():  # the main process holds the loss averaged over the processes
        trainer.register_hooks([LossLog(loss_file)])
    trainer.resume_or_load(resume=args.resume)
    trainer.train()


def main():
    loss_file, argv = sys.argv[1], sys.argv[2:]
    args = default_argument_parser().parse_args(argv)
    # --num-gpus N: N processes joined as train_net.py joins them (gloo on the CPU)
    launch(_train, args.num_gpus, dist_url="auto", args=(loss_file, args))


if __name__ == "__main__":
    main()
