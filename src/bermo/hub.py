"""Publishing BERMo checkpoints to the Hugging Face Hub: one path for bermo-convert, finetune.py and bermo-push.

    bermo-push FOLDER REPO_ID [--private] [--revision BRANCH] [--commit-message MSG] [--allow-stale-code]

Everything is checked before anything is uploaded: the folder is a complete BERMo checkpoint (config with auto_map,
weights, the modeling files of the installed version, tokenizer, model card with valid metadata), and the endpoint
accepts the token.
"""

import argparse
import json
import sys
from pathlib import Path

from ._errors import one_line
from .modeling.configuration_bermo import BERMO_VERSION

MODELING_FILES = ("configuration_bermo.py", "modeling_bermo.py")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
REQUIRED_CARD_FIELDS = ("library_name", "tags")


class PublishError(Exception):
    """The folder or the Hub refused: reported as one line, exit code 2, nothing uploaded."""


def installed_modeling_folder():
    from .modeling import modeling_bermo

    return Path(modeling_bermo.__file__).resolve().parent


def check_checkpoint(folder, allow_stale_code=False):
    """Raise PublishError naming what makes FOLDER an incomplete or stale BERMo checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder} is not a folder")
    missing = [name for name in ("config.json", *MODELING_FILES, "README.md") if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer.json or vocab.txt")
    if missing:
        raise PublishError(f"{folder} is not a complete BERMo checkpoint: missing {', '.join(missing)}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PublishError(f"{folder}/config.json: not valid JSON ({error})") from None
    index = folder / "model.safetensors.index.json"
    if not (folder / "model.safetensors").is_file() and index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise PublishError(f"{index}: not a valid safetensors index ({error})") from None
        missing_shards = [name for name in shards if not (folder / name).is_file()]
        if missing_shards:
            raise PublishError(f"{folder} is not a complete BERMo checkpoint: missing {', '.join(missing_shards)}")
    if config.get("model_type") != "bermo" or "AutoConfig" not in (config.get("auto_map") or {}):
        raise PublishError(f"{folder}/config.json: not a BERMo config with auto_map (model_type {config.get('model_type')!r})")
    if not allow_stale_code:
        stale = [
            name for name in MODELING_FILES
            if (folder / name).read_bytes() != (installed_modeling_folder() / name).read_bytes()
        ]
        if stale:
            raise PublishError(
                f"{folder}: modeling files differ from the installed bermo {BERMO_VERSION}'s: {', '.join(stale)}; "
                "re-save the checkpoint with this version or pass --allow-stale-code"
            )
    return check_card(folder / "README.md")


def check_card(path):
    """Parse and validate the model card's YAML metadata; return the card."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(path)
    except Exception as error:
        raise PublishError(f"{path}: invalid model card metadata ({one_line(error)})") from None
    data = card.data.to_dict()
    missing = [field for field in REQUIRED_CARD_FIELDS if not data.get(field)]
    if missing:
        raise PublishError(f"{path}: model card metadata lacks {', '.join(missing)}")
    tags = set(data.get("tags") or [])
    if not {"bermo", "custom_code"} <= tags:
        raise PublishError(f"{path}: model card tags must include 'bermo' and 'custom_code' (found {sorted(tags)})")
    return card


def push_to_hub(folder, repo_id, private=False, revision=None, commit_message=None, token=None,
                allow_stale_code=False, log=print):
    """Check FOLDER, create REPO_ID if needed, upload the folder; return the commit info."""
    from huggingface_hub import HfApi

    check_checkpoint(folder, allow_stale_code=allow_stale_code)
    api = HfApi(token=token)
    try:
        api.whoami()
    except Exception as error:
        raise PublishError(f"Hub at {api.endpoint} refused the token or is unreachable ({one_line(error)})") from None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), revision=revision,
            commit_message=commit_message or "Upload BERMo checkpoint",
            ignore_patterns=["step_*", "epoch_*", "checkpoint-*", ".*"],
        )
    except Exception as error:
        raise PublishError(
            f"push to {repo_id} failed ({one_line(error)}); no commit was made (the repository may exist, empty)"
        ) from None
    config = json.loads((Path(folder) / "config.json").read_text())
    architecture = (config.get("architectures") or ["BermoModel"])[0]
    auto_class = next((name for name, target in config["auto_map"].items() if target.endswith("." + architecture)),
                      "AutoModel")
    log(f"pushed {folder} to {commit.commit_url}")
    log("load it with:\n"
        f"    from transformers import {auto_class}\n"
        f"    model = {auto_class}.from_pretrained({repo_id!r}, revision={commit.oid!r}, trust_remote_code=True)")
    return commit


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="bermo-push", description=__doc__.split("\n\n")[0],
        epilog="example:\n  bermo-push ./my-bermo-sst2 my-name/bermo-minilm-sst2 --private",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="a BERMo checkpoint folder (from bermo-convert or finetune.py)")
    parser.add_argument("repo_id", help="Hub repository, e.g. my-name/bermo-minilm-sst2 (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created if needed; default main)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached login)")
    parser.add_argument("--allow-stale-code", action="store_true",
                        help="push even if the folder's modeling files differ from the installed bermo's")
    args = parser.parse_args(argv)
    try:
        push_to_hub(args.folder, args.repo_id, private=args.private, revision=args.revision,
                    commit_message=args.commit_message, token=args.token, allow_stale_code=args.allow_stale_code)
    except PublishError as error:
        print(f"bermo-push: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
