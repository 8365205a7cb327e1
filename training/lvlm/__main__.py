"""`python -m training.lvlm ...` (the same as `python -m training lvlm ...`)."""
import argparse
import sys

from training.lvlm.loop import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m training lvlm")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
