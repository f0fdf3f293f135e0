"""Publishing BERMo checkpoints to the Hugging Face Hub: one path for bermo-convert, finetune.py and bermo-push.

    bermo-push FOLDER REPO_ID [--private] [--revision BRANCH] [--commit-message MSG] [--allow-stale-code]

Everything is checked before anything is uploaded: the folder is a complete BERMo checkpoint (config with auto_map,
weights that open and hold the tensors of the model its config describes, the modeling files of the installed
version, tokenizer, model card with valid metadata), the endpoint accepts the token, and `--private` is not asked of
an existing public repository (whose visibility a push does not change).
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
    check_weights(folder, config)
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


def auto_class_for(config):
    """The Auto class whose auto_map entry names the config's architecture (AutoModel for a base model)."""
    architecture = (config.get("architectures") or ["BermoModel"])[0]
    return next((name for name, target in (config.get("auto_map") or {}).items()
                 if name != "AutoConfig" and target.endswith("." + architecture)), "AutoModel"), architecture


def weight_shapes(folder):
    """{tensor name: shape} from the safetensors headers of FOLDER's weights (single file or the index's shards)."""
    from safetensors import safe_open

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        files, weight_map = [folder / "model.safetensors"], None
    else:
        weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        files = [folder / name for name in sorted(set(weight_map.values()))]
    shapes, where = {}, {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
                    where[name] = path.name
        except Exception as error:  # SafetensorError: empty, truncated or not safetensors at all
            raise PublishError(f"{path}: not a readable safetensors file ({one_line(error)})") from None
    if weight_map is not None:
        wrong = [name for name, file in weight_map.items() if where.get(name) != file]
        if wrong:
            raise PublishError(f"{folder}/model.safetensors.index.json: {name_list(wrong)} not in the shard it names")
    return shapes


def name_list(names, shown=4):
    names = sorted(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def check_weights(folder, config):
    """Raise PublishError unless the weights hold the tensors (names and shapes) of the model that the config builds.

    The model is built on the meta device (no memory) with the Auto class of `config.architectures`. A task head or a
    pooler may be absent (a converted checkpoint whose new head is initialized when loaded); anything else missing,
    unexpected or of another shape is refused.
    """
    import torch
    import transformers

    from .modeling.configuration_bermo import BermoConfig

    shapes = weight_shapes(folder)
    auto_class, architecture = auto_class_for(config)
    try:
        bermo_config = BermoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = getattr(transformers, auto_class).from_config(bermo_config, trust_remote_code=False)
    except Exception as error:
        raise PublishError(f"{folder}/config.json: cannot build {architecture} from it ({one_line(error)})") from None
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    prefix = model.base_model_prefix + "."
    if not any(name.startswith(prefix) for name in shapes) and any(name.startswith(prefix) for name in expected):
        shapes = {prefix + name: shape for name, shape in shapes.items()}  # a base model's weights under a head
    base = prefix if type(model) is not type(model.base_model) else ""

    def may_be_missing(name):  # initialized when loaded: the task head, the pooler
        return (base and not name.startswith(base)) or name.removeprefix(base).startswith("pooler.")

    missing = [name for name in expected if name not in shapes and not may_be_missing(name)]
    unexpected = [name for name in shapes if name not in expected]
    mismatched = [f"{name} {shapes[name]} vs {expected[name]}" for name in expected
                  if name in shapes and shapes[name] != expected[name]]
    problems = [f"missing {name_list(missing)}" if missing else "",
                f"unexpected {name_list(unexpected)}" if unexpected else "",
                f"shape mismatch {name_list(mismatched, 2)}" if mismatched else ""]
    if any(problems):
        raise PublishError(f"{folder}: the weights do not fit the {architecture} of config.json: "
                           + "; ".join(problem for problem in problems if problem))


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
    existing = existing_repo(api, repo_id)
    if existing is not None and private and not existing.private:
        raise PublishError(
            f"{repo_id} exists and is public: --private does not change an existing repository's visibility; make "
            "it private on the Hub first (its settings, or HfApi().update_repo_settings(repo_id, private=True)), or "
            "push without --private"
        )
    try:
        if existing is None:
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
    auto_class, _ = auto_class_for(json.loads((Path(folder) / "config.json").read_text()))
    visibility = "private" if (existing.private if existing is not None else private) else "public"
    log(f"pushed {folder} to {commit.commit_url} ({visibility})")
    log("load it with:\n"
        f"    from transformers import {auto_class}, AutoTokenizer\n"
        f"    tokenizer = AutoTokenizer.from_pretrained({repo_id!r}, revision={commit.oid!r}, trust_remote_code=True)\n"
        f"    model = {auto_class}.from_pretrained({repo_id!r}, revision={commit.oid!r}, trust_remote_code=True)")
    return commit


def existing_repo(api, repo_id):
    """The Hub's information on REPO_ID (its `.private`), or None if there is no such repository."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return api.repo_info(repo_id)
    except RepositoryNotFoundError:
        return None
    except Exception as error:
        raise PublishError(f"cannot look up {repo_id} on {api.endpoint} ({one_line(error)})") from None


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="bermo-push", description=__doc__.split("\n\n")[0],
        epilog="example:\n  bermo-push ./my-bermo-sst2 my-name/bermo-minilm-sst2 --private",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="a BERMo checkpoint folder (from bermo-convert or finetune.py)")
    parser.add_argument("repo_id", help="Hub repository, e.g. my-name/bermo-minilm-sst2 (created if needed)")
    parser.add_argument("--private", action="store_true",
                        help="create the repository as private (refused for an existing public repository)")
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
