"""Fetch a checkpoint from the Hugging Face hub with per-file byte progress and clear errors.

`huggingface_hub.snapshot_download` aggregates progress over all files and does not say which file is
moving, so we plan with `snapshot_download(dry_run=True)` (names, sizes, what is cached), fetch each missing
file with `hf_hub_download` and a small progress class, then let `snapshot_download` assemble the snapshot
from the cache (no file requests). The endpoint is read from $HF_ENDPOINT at call time, the token from
$HF_TOKEN.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lepetpal_tui.policy.errors import PolicyCancelled, PolicyError

# (bytes_done, bytes_total, current_file)
ProgressFn = Callable[[int, int, str], None]

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_repo_id(text: str) -> bool:
    return bool(REPO_ID_RE.match(text)) and not text.startswith((".", "/", "~"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


class _Progress:
    """Thread-safe byte counter shared by the per-file progress objects."""

    def __init__(self, total: int, done: int, on_progress: ProgressFn, cancel: threading.Event | None) -> None:
        self.total = total
        self.done = done
        self.file = ""
        self._on_progress = on_progress
        self._cancel = cancel
        self._lock = threading.Lock()
        self._last_emit = 0.0

    def add(self, n: float, *, force: bool = False) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise PolicyCancelled("download cancelled")
        with self._lock:
            self.done += int(n)
            now = time.monotonic()
            if not force and now - self._last_emit < 0.1:
                return  # at most ~10 updates a second: the UI coalesces, but there is no need to flood it
            self._last_emit = now
            done, total, file = self.done, self.total, self.file
        self._on_progress(done, max(total, done), file)

    def tqdm_class(self, filename: str) -> type:
        progress = self

        class FileProgress:
            """Just enough of tqdm for hf_hub_download's http_get (update, close, context manager)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                progress.file = filename
                progress.add(int(kwargs.get("initial") or 0), force=True)

            def update(self, n: float | None = 1) -> None:
                progress.add(n or 0)

            def update_transfer(self, n: float | None = 1) -> None:
                pass  # bytes are counted once, by update()

            def __enter__(self) -> FileProgress:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

            def close(self) -> None:
                progress.add(0, force=True)

            def __getattr__(self, name: str) -> Callable[..., None]:
                return lambda *a, **k: None  # set_postfix_str, refresh, ...

        return FileProgress


def download_snapshot(
    repo_id: str,
    *,
    revision: str = "main",
    cache_dir: str = "",
    allow_patterns: Sequence[str] | None = None,
    on_progress: ProgressFn,
    cancel: threading.Event | None = None,
    what: str = "checkpoint",
) -> Path:
    """Download (or reuse from the cache) a hub repo snapshot; returns its local folder."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import DryRunError, LocalEntryNotFoundError

    token = os.environ.get("HF_TOKEN") or None
    kwargs: dict[str, Any] = {
        "repo_id": repo_id,
        "token": token,
        "cache_dir": cache_dir or None,
        "endpoint": os.environ.get("HF_ENDPOINT") or None,
        "allow_patterns": list(allow_patterns) if allow_patterns else None,
        # No terminal progress bars: they would scribble over the UI. Progress goes through on_progress.
        "tqdm_class": _silent_tqdm(),
    }
    try:
        try:
            plan = snapshot_download(revision=revision, dry_run=True, **kwargs)
        except DryRunError as exc:
            cause = exc.__cause__
            if _is_answer_from_hub(cause):
                # The hub answered (404, 401, gated, bad revision): that is the error to show.
                raise explain_hub_error(cause, repo_id, revision, what) from cause  # type: ignore[arg-type]
            # Hub unreachable or offline mode: a complete cached snapshot is still fine.
            try:
                return Path(snapshot_download(revision=revision, local_files_only=True, **kwargs))
            except LocalEntryNotFoundError:
                raise _unreachable(repo_id, revision, what, exc) from None
        if not plan:
            raise PolicyError(
                f"The hub repo {repo_id} (revision {revision}) has no files to download for the {what}.",
                "Check the repo id and revision in [model] path / revision.",
            )
        commit = plan[0].commit_hash
        total = sum(int(p.file_size or 0) for p in plan)
        cached = sum(int(p.file_size or 0) for p in plan if not p.will_download)
        progress = _Progress(total, cached, on_progress, cancel)
        progress.add(0, force=True)
        for info in plan:
            if not info.will_download:
                continue
            if cancel is not None and cancel.is_set():
                raise PolicyCancelled("download cancelled")
            before = progress.done
            hf_hub_download(
                filename=info.filename,
                revision=commit,
                tqdm_class=progress.tqdm_class(info.filename),
                **{k: v for k, v in kwargs.items() if k not in ("allow_patterns", "tqdm_class")},
            )
            # Small files may arrive without progress callbacks: account for their size exactly once.
            expected = int(info.file_size or 0)
            progress.add(max(0, before + expected - progress.done), force=True)
        # Everything is cached now: this only assembles the snapshot folder.
        return Path(snapshot_download(revision=commit, **kwargs))
    except (PolicyError, PolicyCancelled):
        raise
    except Exception as exc:
        raise explain_hub_error(exc, repo_id, revision, what) from exc


def _silent_tqdm() -> type:
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):  # type: ignore[misc,type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _is_answer_from_hub(exc: BaseException | None) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    return isinstance(exc, HfHubHTTPError) and not isinstance(exc, OfflineModeIsEnabled)


def _unreachable(repo_id: str, revision: str, what: str, exc: BaseException) -> PolicyError:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return PolicyError(
            f"Cannot download the {what} {repo_id} (revision {revision}): offline mode is on (HF_HUB_OFFLINE=1) "
            "and it is not in the local cache.",
            "Unset HF_HUB_OFFLINE and run again with network access, or set [model] path to a local folder.",
        )
    cause = exc.__cause__ or exc
    return PolicyError(
        f"Cannot reach the hub at {hub_endpoint()} to download the {what} {repo_id} (revision {revision}), "
        f"and it is not in the local cache ({type(cause).__name__}: {cause}).",
        "Check the network connection (and HF_ENDPOINT if set), or set [model] path to a local checkpoint folder.",
    )


def explain_hub_error(exc: BaseException, repo_id: str, revision: str, what: str) -> PolicyError:
    """Turn a huggingface_hub / httpx exception into one paragraph that says what to do."""
    import httpx
    from huggingface_hub import errors

    status = None
    response = getattr(exc, "response", None)
    if response is not None:
        status = getattr(response, "status_code", None)
    endpoint = hub_endpoint()
    if isinstance(exc, errors.GatedRepoError):
        return PolicyError(
            f"The hub repo {repo_id} is gated: you must accept its terms before downloading.",
            f"Open {endpoint}/{repo_id} while logged in, accept the terms, then set HF_TOKEN to a token of that "
            "account (or run `hf auth login`).",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return PolicyError(
            f"The hub repo {repo_id} has no revision \"{revision}\".",
            "Set [model] revision to an existing branch, tag or commit (\"main\" is the default).",
        )
    if status == 401 or (status == 403 and not os.environ.get("HF_TOKEN")):
        has_token = bool(os.environ.get("HF_TOKEN"))
        return PolicyError(
            f"The hub refused access to {repo_id} (HTTP {status}): it is private or gated and "
            + ("the token in HF_TOKEN is not allowed to read it." if has_token else "no token was given."),
            "Set HF_TOKEN to a read token of an account that can see the repo (or run `hf auth login`), "
            "or check the spelling of [model] path.",
        )
    if isinstance(exc, errors.RepositoryNotFoundError) or status == 404:
        return PolicyError(
            f"The hub at {endpoint} has no model repo named {repo_id} (HTTP 404).",
            "Check the spelling of [model] path (owner/name, e.g. lerobot/smolvla_base); for a local "
            "checkpoint give the folder path (it must exist).",
        )
    if isinstance(exc, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        return _unreachable(repo_id, revision, what, exc)
    if isinstance(exc, httpx.TransportError | OSError | errors.HfHubHTTPError):
        return PolicyError(
            f"The download of the {what} {repo_id} from {endpoint} failed: {type(exc).__name__}: {exc}. "
            "The connection may have dropped mid-file; files already complete stay in the cache.",
            "Check the network connection and run again: the download resumes where it stopped.",
        )
    return PolicyError(
        f"Downloading the {what} {repo_id} failed: {type(exc).__name__}: {exc}.",
        "Check [model] path and revision and the network, then run again.",
    )
