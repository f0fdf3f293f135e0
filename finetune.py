"""Fine-tune BERMo (or BERT) with Accelerate: `accelerate launch finetune.py --help`.

Thin entry point; the loop lives in `bermo.training` (also installed as `bermo-finetune`).
"""

import sys

from bermo.training import main

if __name__ == "__main__":
    sys.exit(main())
