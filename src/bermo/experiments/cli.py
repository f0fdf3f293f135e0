"""`bermo-experiment`: convergence and probing, BERT vs BERMo side by side; build-probing for SentEval-style tasks.

    bermo-experiment convergence --task_name sst2 --glue_dir GLUE --output_dir out/conv-sst2
    bermo-experiment probing --probing_dir SentEval/data/probing built/ --output_dir out/probing
    bermo-experiment mix-init --task_name sst2 --glue_dir GLUE --dev_from_train 872 --output_dir out/mix-screen
    bermo-experiment build-probing --corpus sentences.txt --output_dir built/

Each experiment command is resumable (run it again with the same --output_dir) and refuses a folder that holds
another configuration. Exit codes: 0 done, 2 bad input (one line on stderr, nothing overwritten). A run that fails
(NaN loss, out of memory) does not stop the experiment: it is recorded as failed and counted in the tables.
"""

import argparse
import sys

from . import build_probing, convergence, mix_init, probing, pruning
from .runner import ExperimentError

COMMANDS = {"convergence": convergence, "probing": probing, "pruning": pruning, "mix-init": mix_init,
            "build-probing": build_probing}


def build_parser():
    parser = argparse.ArgumentParser(prog="bermo-experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True,
                                       metavar="{convergence,probing,pruning,mix-init,build-probing}")
    for module in COMMANDS.values():
        module.add_parser(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        path = COMMANDS[args.command].run(args)
    except ExperimentError as error:
        print(f"bermo-experiment {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bermo-experiment {args.command}: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
