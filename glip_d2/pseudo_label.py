"""``python -m glip_d2.pseudo_label``: the self-training pseudo-labeller's command line, kept at
its first path. The code lives in :mod:`glip_d2.selftrain.pseudo_label` (run, teacher, command
line); see there for the arguments.
"""

import sys

from .selftrain.pseudo_label import (  # noqa: F401  (the names this module had)
    build_teacher,
    main,
    parse_args,
    register_pseudo_labels,
    run_pseudo_labelling,
)

__all__ = ["run_pseudo_labelling", "register_pseudo_labels", "build_teacher", "main", "parse_args"]

if __name__ == "__main__":
    main(sys.argv[1:])
