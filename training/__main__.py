"""`python -m training expert|lvlm ...`: each stage lives in its own module (add_arguments, run)."""
from __future__ import annotations

import argparse
import importlib
import sys

STAGES = {
    "expert": ("training.expert", "train the anomaly expert heads on synthesized anomalies (backbone frozen)"),
    "defect-type": ("training.defect_type", "fit the defect-type classifier on the expert's regions of synthesized "
                    "anomalies"),
    "lvlm": ("training.lvlm", "train projector, prompt learner, selector and LoRA on synthesized conversations"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (module, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
