"""Convert a vanilla BERT checkpoint to BERMo: `python conversion/convert_bert_to_bermo.py --help`.

The same command is installed as `bermo-convert`; the work is done by `bermo.conversion.convert`.
"""

import sys

from bermo.conversion import main

if __name__ == "__main__":
    sys.exit(main())
