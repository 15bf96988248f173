"""`push_pruned_to_hub`: write the exact folder of a pruned artifact (atomically, with its model card) and upload it
with `HfApi.upload_folder`. Tokens are passed to huggingface_hub only; they are never logged or written.
"""

from __future__ import annotations

import contextlib
import logging
import os

from .card import CARD_NAME, HUB_ID, write_folder_card
from .export import save_pruned

logger = logging.getLogger(__name__)

__all__ = ["push_pruned_to_hub"]


# --- push -------------------------------------------------------------------------------------------------------


def _check_hub_access(token: str | None) -> str:
    """The token to use, or a ValueError that names the fix. Never logs or returns the token in a message."""
    from huggingface_hub import constants, get_token

    offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    if offline_env or constants.HF_HUB_OFFLINE:
        raise ValueError(
            "the Hub is in offline mode (HF_HUB_OFFLINE is set), so nothing can be pushed; unset HF_HUB_OFFLINE "
            "(e.g. `unset HF_HUB_OFFLINE`) and push again."
        )
    token = token or get_token()
    if not token:
        raise ValueError(
            "no Hugging Face token found; run `huggingface-cli login` (or `hf auth login`), set the HF_TOKEN "
            "environment variable, or pass token=... ."
        )
    return token


def _is_artifact_dir(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(path)


def push_pruned_to_hub(
    output_dir_or_model,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload pruned model (smart_hf)",
    local_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    processing_class=None,
    metrics: dict | None = None,
    base_model: str | None = None,
    run_as_future: bool = False,
    **save_kwargs,
):
    """Push a pruned artifact (with its model card) to the Hub.

    Args:
        output_dir_or_model: a folder written by `save_pruned` / `smart-hf export` (uploaded as is; a missing
            ``README.md`` is generated once the Hub is reachable, and a failed push leaves the folder as it was),
            or a prepared / squashed model, which is written to ``local_dir`` first (atomically: a temporary
            sibling folder renamed into place) -- the exact folder that is uploaded.
        repo_id: ``"user/name"`` on the Hub (created if missing).
        token: a write token (default: ``HF_TOKEN`` or the ``huggingface-cli login`` token). Never logged.
        private: create the repository private (no effect if it exists).
        commit_message: the Hub commit's message.
        local_dir: where a model is written (required when a model is passed).
        revision: the branch to push to (default: the repository's default branch).
        processing_class: a tokenizer / image processor saved beside a model that is written first.
        metrics: ``{name: value}`` for the card (of a written model, or of a folder without ``README.md``).
        base_model: the Hub id that was pruned, for the card.
        run_as_future: return a `Future` instead of waiting for the upload.
        **save_kwargs: passed to `save_pruned` when a model is written (``log_history``, ``save_plots``, ...).

    Returns:
        The upload's `CommitInfo` (a `Future` of it with ``run_as_future``).

    Raises:
        ValueError: a malformed ``repo_id``, a folder without ``config.json``, a path that is not a folder, a model
            without ``local_dir``, the Hub offline or no token; naming the fix, the local folder kept.
    """
    if not isinstance(repo_id, str) or not HUB_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'user/model-name', got {repo_id!r}.")
    save_kwargs = dict(save_kwargs, processing_class=processing_class, metrics=metrics, base_model=base_model)
    folder = _folder_to_push(output_dir_or_model, local_dir, save_kwargs)
    # Access first: a push that cannot go (offline, no token) leaves a given folder's files as they were.
    token = _check_hub_access(token)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = getattr(repo, "repo_id", repo_id)
    with _card_for_upload(folder, repo_id, keep=run_as_future, metrics=metrics, base_model=base_model):
        logger.info("smart_hf: uploading %s to %s", folder, repo_id)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision,
            ignore_patterns=["_*"], run_as_future=run_as_future,
        )


def _folder_to_push(output_dir_or_model, local_dir, save_kwargs: dict) -> str:
    """The artifact folder given, checked, or the folder a model is written to (`save_pruned` with
    ``save_kwargs``, replacing ``local_dir`` as one unit)."""
    if _is_artifact_dir(output_dir_or_model):
        folder = os.fspath(output_dir_or_model)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ValueError(f"{folder} has no config.json; write the artifact with smart_hf.save_pruned first.")
        return folder
    if isinstance(output_dir_or_model, (str, os.PathLike)):
        raise ValueError(f"{output_dir_or_model} is not a folder; pass a saved artifact folder or a model.")
    if local_dir is None:
        raise ValueError("pass local_dir=... : the exact folder that is uploaded is written and kept there.")
    return save_pruned(output_dir_or_model, os.path.abspath(os.fspath(local_dir)), replace_folder=True, **save_kwargs)


@contextlib.contextmanager
def _card_for_upload(folder: str, repo_id: str, keep: bool, **card_kwargs):
    """The folder's card, generated if missing, with ``repo_id`` in its loading snippet while the upload runs.

    If the upload raises, the folder's ``README.md`` is put back as it was (or removed, if it was generated here);
    ``keep=True`` (an upload still running in the background) leaves the card in place.
    """
    path = os.path.join(folder, CARD_NAME)
    before = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            before = fh.read()
    else:
        _card_for_folder(folder, **card_kwargs)
    _fill_repo_id(folder, repo_id)
    try:
        yield
    except BaseException:
        if keep:
            raise
        if before is None:
            os.remove(path)
        else:
            _write_atomically(path, before)
        raise


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def _fill_repo_id(folder: str, repo_id: str) -> None:
    """Put the repo id into the card's loading snippet (atomically)."""
    path = os.path.join(folder, CARD_NAME)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if "REPO_OR_DIR" in text:
        _write_atomically(path, text.replace("REPO_OR_DIR", repo_id))


def _card_for_folder(folder: str, **kwargs) -> str:
    return write_folder_card(folder, **kwargs)
