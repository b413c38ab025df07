"""`varlit push`: the export folder (peft files, model card, samples, varlit adapter) uploaded to the hub."""

from __future__ import annotations

import os
from pathlib import Path

from ..models.hub import HubUnavailableError, hub_offline


def check_repo_id(repo: str) -> str:
    """`user/name`, as the hub spells repo ids (one line naming the problem otherwise)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo.count("/") != 1:
        raise ValueError(f"--repo {repo!r}: give the hub repo as user/name (or org/name)")
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ValueError(f"--repo {repo!r}: not a valid hub repo id ({str(err).splitlines()[0]})") from None
    return repo


def upload(folder: str | os.PathLike, repo: str, private: bool = False) -> str:
    """Create the model repo (if needed) and upload the folder; returns the repo's URL."""
    if hub_offline():
        raise HubUnavailableError(
            f"cannot push to {repo}: HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to upload "
            f"(the folder is ready in {folder})"
        )
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(Path(folder)), repo_id=repo, repo_type="model")
    except Exception as err:  # network, auth, quota: the hub raises many types; one line covers them
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HubUnavailableError(
            f"cannot push to {repo} ({type(err).__name__}: {first}); log in with `hf auth login` and check "
            f"the network (the folder is ready in {folder})"
        ) from None
    return f"https://huggingface.co/{repo}"
