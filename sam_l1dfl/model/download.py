"""The published SAM-Med3D weights: download from Hugging Face, check, record the SHA-256.

* :func:`download_weights` fetches a file of the official Hugging Face repository
  (``blueyo0/SAM-Med3D``, by default ``sam_med3d_turbo.pth``: :mod:`sam_l1dfl.formats`) with
  ``huggingface_hub.hf_hub_download`` into the Hugging Face cache (``HF_HOME`` /
  ``HF_HUB_CACHE``, or ``cache_dir``; ``HF_HUB_OFFLINE=1`` is honoured), checks it
  (:func:`check_weights`), copies it under a temporary name beside the destination and renames
  it into place, then writes ``<file>.sha256`` (``sha256sum -c`` format).  An existing
  destination is never replaced unless ``force``: it is checked (and its recorded SHA-256
  compared) instead, so running the download twice costs nothing.  When the file is neither
  downloadable nor cached (offline, no network, unknown revision) the one-line
  :class:`~sam_l1dfl.errors.CheckpointError` gives the URL and where to put the file by hand.
  Without a network that line comes within seconds: one HEAD request through
  ``huggingface_hub``'s HTTP session (proxies, ``HF_ENDPOINT``), no retries, at most
  :data:`PROBE_TIMEOUT_S` (:func:`hub_reachable`), decides; when the hub cannot be reached the
  cache alone is read, instead of ``hf_hub_download``'s ~23 s of retries.
* :func:`check_weights` reads a checkpoint with the safe loader
  (:func:`sam_l1dfl.model.weights.read_weights`: ``torch.load(weights_only=True)`` with the
  allowlist; nothing else is ever unpickled unless ``trust``) and checks its structure: the key
  names and shapes must be exactly those of the SAM-Med3D model whose config is inferred from
  the file (:func:`~sam_l1dfl.model.weights.infer_config`).  It also says whether they are those
  of the official ``vit_b_ori`` key manifest (324 tensors, 100,509,616 values,
  ``SamMed3DConfig.preset("vit_b_ori")``, pinned to the manifest by tests/test_model_golden.py),
  which is what ``sam_med3d_turbo.pth`` holds.
* :func:`record_weights` checks a file put in place by hand, compares it with its ``.sha256``
  record (:func:`check_recorded_sha256`) and writes the record.

The Hugging Face cache names each large (LFS) file's blob by its SHA-256; when the cached file
is such a blob, the download is checked against that name too (a corrupt cache entry is
refused).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub import utils as hf_utils
from huggingface_hub.utils import logging as hf_logging

from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.formats import WEIGHTS_DIR, WEIGHTS_FILE, WEIGHTS_REPO
from sam_l1dfl.io_utils import atomic_path, check_output_path, sha256_file, write_text_atomic
from sam_l1dfl.model.config import SamMed3DConfig
from sam_l1dfl.model.weights import compare_state_dicts, describe_fit, infer_config, read_weights, skeleton

SHA256_SUFFIX = ".sha256"
#: Seconds the one reachability request may take (a hub that answers does so well within it).
PROBE_TIMEOUT_S = 3.0
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class WeightsCheck:
    """What :func:`check_weights` found in a checkpoint that passed."""

    path: Path
    sha256: str
    format: str
    tensors: int
    values: int
    config: SamMed3DConfig
    official: bool  #: the keys and shapes of the official vit_b_ori manifest

    def describe(self) -> str:
        layout = ("the official vit_b_ori key manifest" if self.official else
                  f"a SAM-Med3D layout that is NOT the official vit_b_ori manifest (encoder width "
                  f"{self.config.encoder_embed_dim}, depth {self.config.encoder_depth})")
        return f"{self.tensors} tensors, {self.values:,} values, {layout}"


@dataclass
class DownloadResult:
    """What :func:`download_weights` did: ``downloaded`` is False when the file was already there."""

    path: Path
    sha256_file: Path
    check: WeightsCheck
    downloaded: bool
    revision: Optional[str] = None  #: the repository commit the file came from (None if kept)


def check_weights(path: "str | os.PathLike", trust: bool = False) -> WeightsCheck:
    """Read ``path`` safely and check that it is a complete SAM-Med3D state dict.

    Raises a one-line :class:`CheckpointError` when the file is not a checkpoint, would need
    unsafe unpickling (unless ``trust``), or has missing, unexpected or mis-shaped keys for the
    architecture its shapes describe.
    """
    path = Path(path)
    sd, fmt, _, sha = read_weights(path, trust=trust)
    cfg = infer_config(sd, path)
    fit = compare_state_dicts(sd, skeleton(cfg).state_dict())
    if any(fit):
        raise CheckpointError(path, "not a complete SAM-Med3D state dict: " + describe_fit(*fit))
    official = not any(compare_state_dicts(sd, skeleton(SamMed3DConfig.preset("vit_b_ori")).state_dict()))
    return WeightsCheck(path, sha, fmt, len(sd), sum(v.numel() for v in sd.values()), cfg, official)


def sha256_record(path: "str | os.PathLike") -> Path:
    """The ``<file>.sha256`` beside ``path``."""
    path = Path(path)
    return path.with_name(path.name + SHA256_SUFFIX)


def check_recorded_sha256(path: "str | os.PathLike", sha256: str) -> None:
    """Refuse ``path`` when its ``.sha256`` record exists and names another SHA-256."""
    rec = sha256_record(path)
    if not rec.is_file():
        return
    words = rec.read_text().split()
    if not words or not _HEX64.fullmatch(words[0].lower()):
        raise CheckpointError(rec, "not a SHA-256 record (expected '<sha256>  <file name>')")
    if words[0].lower() != sha256:
        raise CheckpointError(path, f"SHA-256 {sha256} differs from the {words[0]} recorded in {rec.name}: "
                                    "the file changed since it was checked; download it again with --force")


def _write_record(path: Path, sha256: str) -> Path:
    return write_text_atomic(sha256_record(path), f"{sha256}  {path.name}\n")


def record_weights(path: "str | os.PathLike", trust: bool = False) -> tuple[WeightsCheck, Path]:
    """Check a checkpoint put in place by hand (or kept from an earlier download), compare it
    with its ``.sha256`` record if there is one, and write the record: ``(check, record)``."""
    chk = check_weights(path, trust=trust)
    check_recorded_sha256(path, chk.sha256)
    return chk, _write_record(Path(path), chk.sha256)


def _revision_of(cached: Path) -> Optional[str]:
    parts = cached.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def hub_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub answers one HEAD request for ``url`` within ``timeout`` seconds.

    Any HTTP answer counts (a 401 or 404: the download then says what is wrong).  The request
    goes through ``huggingface_hub``'s own HTTP session (its proxy and TLS settings) but without
    its headers, whose user agent would first fetch a registry from the same unreachable hub.
    """
    try:
        hf_utils.get_session().head(url, timeout=timeout)
    except Exception:  # connection refused, DNS failure, timeout, proxy or TLS failure: no answer
        return False
    return True


def _fetch(repo_id: str, filename: str, revision: Optional[str], cache_dir, dest: Path, progress: bool) -> Path:
    """``hf_hub_download`` into the cache; every failure is one line saying where to put the file.

    When the hub cannot be reached (:func:`hub_reachable`) the cache alone is read
    (``try_to_load_from_cache``), instead of ``hf_hub_download``'s ~23 s of retries.
    """
    url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision)
    offline = hf_constants.is_offline_mode()
    unreachable = ("offline (HF_HUB_OFFLINE=1)" if offline else "huggingface.co cannot be reached")
    unreachable += " and the file is not in the Hugging Face cache"
    if not offline and not hub_reachable(url):
        cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
        raise _cannot_download(dest, repo_id, filename, url, unreachable)
    level, bars_off = hf_logging.get_verbosity(), hf_utils.are_progress_bars_disabled()
    hf_logging.set_verbosity_error()  # no retry warnings: a failure is the one line below
    if not progress:
        hf_utils.disable_progress_bars()
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        why = unreachable
    except hf_errors.RepositoryNotFoundError:
        why = f"the repository {repo_id} does not exist or is private"
    except hf_errors.RevisionNotFoundError:
        why = f"the repository has no revision {revision}"
    except (hf_errors.EntryNotFoundError, hf_errors.RemoteEntryNotFoundError):
        why = f"the repository has no file {filename}"
    except (hf_errors.HfHubHTTPError, OSError) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
    finally:
        hf_logging.set_verbosity(level)
        if not progress and not bars_off:
            hf_utils.enable_progress_bars()
    raise _cannot_download(dest, repo_id, filename, url, why)


def _cannot_download(dest: Path, repo_id: str, filename: str, url: str, why: str) -> CheckpointError:
    return CheckpointError(dest, f"cannot download {filename} from Hugging Face ({repo_id}): {why}; "
                                 f"download {url} by hand and put it at {dest.absolute()}, then run "
                                 f"`sam-l1dfl weights check {dest}`")


def download_weights(out_dir: "str | os.PathLike" = WEIGHTS_DIR, *, repo_id: str = WEIGHTS_REPO,
                     filename: str = WEIGHTS_FILE, revision: Optional[str] = None,
                     cache_dir: "str | os.PathLike | None" = None, force: bool = False,
                     trust: bool = False, progress: bool = True) -> DownloadResult:
    """Fetch ``filename`` of ``repo_id`` into ``out_dir``, check it and record its SHA-256.

    An existing ``out_dir/filename`` is kept and checked unless ``force``; with ``force`` it is
    replaced only once the new file has passed the check.  ``progress``: Hugging Face's
    download bar.
    """
    dest = check_output_path(Path(out_dir) / Path(filename).name)
    if dest.exists() and not force:
        try:
            chk, rec = record_weights(dest, trust=trust)
        except CheckpointError as exc:  # e.g. an interrupted download or a git-lfs pointer left there
            if "--force" in exc.problem:
                raise
            raise CheckpointError(exc.path, f"{exc.problem}; `sam-l1dfl weights download --force` "
                                            "replaces the file") from None
        return DownloadResult(dest, rec, chk, downloaded=False)
    cached = _fetch(repo_id, filename, revision, cache_dir, dest, progress)
    chk = check_weights(cached, trust=trust)
    blob = Path(os.path.realpath(cached)).name
    if _HEX64.fullmatch(blob) and blob != chk.sha256:
        raise CheckpointError(cached, f"corrupt cache entry: SHA-256 {chk.sha256} but Hugging Face's is {blob}; "
                                      "delete it and download again")
    with atomic_path(dest) as tmp:
        shutil.copyfile(cached, tmp)
        copied = sha256_file(tmp)
        if copied != chk.sha256:
            raise CheckpointError(dest, f"the copy's SHA-256 {copied} differs from the download's {chk.sha256}")
    chk.path = dest
    return DownloadResult(dest, _write_record(dest, chk.sha256), chk, downloaded=True, revision=_revision_of(cached))


__all__ = ["PROBE_TIMEOUT_S", "DownloadResult", "WeightsCheck", "check_recorded_sha256", "check_weights",
           "download_weights", "hub_reachable", "record_weights", "sha256_record"]
