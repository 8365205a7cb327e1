"""`python -m assistant.evaluation.mvtec_to_mmad --data DIR ... --data-root ROOT --out mmad.json` (the documented
command): runs assistant.evaluation.data.mvtec_to_mmad, where the question writer lives."""
import sys

from assistant.evaluation.data.mvtec_to_mmad import main

if __name__ == "__main__":
    sys.exit(main())
