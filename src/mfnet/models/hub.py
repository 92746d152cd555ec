"""Finding the file of a set of weights, checking it, and caching it.

``resolve_weights(name_or_path)`` tries, in order:

1. **A path** the user gives (a checkpoint file, or a folder written by ``mfnet weights convert`` holding
   ``config.json`` and ``model.safetensors``).
2. **The cache**: ``$MFNET_HOME/weights/<name>/<file>``; without ``MFNET_HOME``, the platform cache folder
   (``$XDG_CACHE_HOME/mfnet`` or ``~/.cache/mfnet`` on Linux, ``~/Library/Caches/mfnet`` on macOS,
   ``%LOCALAPPDATA%\\mfnet`` on Windows).
3. **The Hugging Face Hub** (``pip install 'mfnet[hub]'``): the record's ``hf_repo`` / ``hf_file`` through
   ``huggingface_hub``, which keeps its own cache and honours ``HF_HUB_OFFLINE=1``.
4. **Plain URLs**: the record's ``urls``, downloaded with ``torch.hub.download_url_to_file`` (progress bar) into a
   temporary file that only enters the cache once its hash is right.

Every file that comes from the cache, the Hub or a URL is checked against the record's sha256 when it has one; a
mismatch is refused with both hashes named, and a downloaded file that does not match is deleted, never cached.
With ``MFNET_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) nothing is downloaded; a file that is not found is reported in
one line that names the file, where to get it and where to put it.

Names of the form ``hf-hub:ORG/NAME[@REVISION]`` fetch a folder written by ``mfnet weights convert`` (and uploaded
with ``mfnet weights push``) from the Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.hub

from mfnet.errors import CheckpointError, MfnetError
from mfnet.models.checkpoint import load_weights, read_checkpoint
from mfnet.models.registry import build_model, list_models
from mfnet.models.weights import WeightsRecord, get_weights, is_weights_name, record_for_file

HF_PREFIX = "hf-hub:"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_CHUNK = 1 << 20


class WeightsNotFoundError(MfnetError):
    """Registered weights that are neither cached nor downloadable now (offline, or every source failed)."""


class ChecksumError(CheckpointError):
    """A weights file whose SHA-256 is not the record's."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file on disk and what is known about it.

    Attributes:
        path: The checkpoint file to read.
        record: The registry record it was resolved from; for a plain path, the record whose file has the same
            name (the authors' files keep their released names), else ``None``.
        source: ``"path"``, ``"cache"``, ``"hub"`` or ``"url"``.
        config: The ``config.json`` of a converted folder (``None`` otherwise).
    """

    path: Path
    record: WeightsRecord | None = None
    source: str = "path"
    config: dict[str, Any] | None = None


def cache_dir() -> Path:
    """The folder mfnet caches weights in: ``$MFNET_HOME``, else the platform's cache folder + ``mfnet``."""
    home = os.environ.get("MFNET_HOME")
    if home:
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mfnet"


def cached_path(record: WeightsRecord) -> Path:
    """Where the cache holds ``record``'s file: ``<cache_dir>/weights/<name>/<file>``."""
    return cache_dir() / "weights" / record.name / record.file


def is_offline() -> bool:
    """Whether downloads are switched off (``MFNET_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true/yes)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("MFNET_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, record: WeightsRecord, *, shown_as: str | None = None, fix: str | None = None) -> None:
    """Raises ``ChecksumError`` naming both hashes when ``path`` is not the record's file (no-op without sha256).

    A file imported for a record without a published hash has its hash pinned beside it (``<file>.sha256``) and
    is checked against that.

    Args:
        path: The file to check.
        record: Its record.
        shown_as: How the file is named in the message (default: its path; e.g. the URL it came from).
        fix: What the user should do (default: delete it and fetch it again).
    """
    expected = record.sha256
    pinned = path.with_name(path.name + ".sha256")
    if expected is None and pinned.is_file():
        expected = (pinned.read_text().split() or [None])[0]
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"{shown_as or path} is not the file of {record.name}: its sha256 is {actual} but the record says "
            f"{expected}; {fix or 'delete it and download it again'}"
        )


def is_converted_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``mfnet weights convert`` (``config.json`` + weights)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def _from_folder(folder: Path, *, source: str, record: WeightsRecord | None = None) -> ResolvedWeights:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not readable JSON ({err}); convert again") from None
    weights = folder / str(config.get("weights_file", WEIGHTS_FILE))
    if not weights.is_file():
        raise CheckpointError(f"{folder} has a {CONFIG_FILE} but no {weights.name}: convert the weights again")
    expected = config.get("sha256")
    if expected and sha256_of(weights) != expected:
        raise ChecksumError(
            f"{weights} does not match its {CONFIG_FILE}: sha256 {sha256_of(weights)}, expected {expected}; "
            "convert or download it again"
        )
    if record is None and config.get("name") and is_weights_name(config["name"]):
        record = get_weights(config["name"])
    return ResolvedWeights(weights, record, source, config)


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is meant as a file or folder rather than a registered name."""
    suffixes = (".pth", ".pt", ".safetensors", ".onnx", ".pt2", ".tar")
    return Path(text).exists() or os.sep in text or "/" in text or Path(text).suffix.lower() in suffixes


def resolve_weights(
    weights: str | os.PathLike[str], *, offline: bool | None = None, progress: bool = True
) -> ResolvedWeights:
    """Finds the file of ``weights``: a path, a registered name (``mfnet3d.k400_authors``) or ``hf-hub:ORG/NAME``.

    Args:
        weights: What the user gave.
        offline: Never download (default: ``is_offline()``).
        progress: Show a progress bar while downloading.

    Raises:
        WeightsNotFoundError: A registered name whose file is nowhere to be had now.
        ChecksumError: A file whose hash is not the record's.
        CheckpointError, MfnetError: A missing path or an unknown name.
    """
    offline = is_offline() if offline is None else offline
    text = os.fspath(weights)
    if text.startswith(HF_PREFIX):
        return _resolve_hf_folder(text[len(HF_PREFIX) :], offline=offline)
    path = Path(text).expanduser()
    if path.exists():
        if is_converted_folder(path):
            return _from_folder(path, source="path")
        return ResolvedWeights(path, record_for_file(path.name))  # an authors' file by its released name
    if is_weights_name(text):
        return resolve_record(get_weights(text), offline=offline, progress=progress)
    if not looks_like_path(text) and text.partition(".")[0] in list_models():
        get_weights(text)  # an unknown tag of a known architecture: raises with the closest names
    raise CheckpointError(
        f"checkpoint {path} does not exist: pass the path of a .pth, .pt or .safetensors file, or a registered name "
        "(`mfnet weights list`)"
    )


def resolve_record(record: WeightsRecord, *, offline: bool = False, progress: bool = True) -> ResolvedWeights:
    """The cached, Hub or downloaded file of ``record``, checked; see the module docstring for the order."""
    target = cached_path(record)
    if target.is_file():
        verify_file(target, record)
        return ResolvedWeights(target, record, "cache")
    failures: list[str] = []
    if record.hf_repo:
        found = _try_hub(record, offline=offline, failures=failures)
        if found is not None:
            return found
    if record.urls and not offline:
        for url in record.urls:
            try:
                return ResolvedWeights(download_to_cache(record, url, progress=progress), record, "url")
            except ChecksumError:
                raise
            except Exception as err:  # a dead link or no network: try the next source
                failures.append(f"{url}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    raise WeightsNotFoundError(missing_message(record, offline=offline, failures=failures))


def missing_message(record: WeightsRecord, *, offline: bool, failures: list[str] | None = None) -> str:
    """One line: which file is missing, where to get it and where to put it."""
    if record.urls:
        where = record.urls[0]
    elif record.provenance:
        where = f"the authors' release ({', '.join(reversed(record.provenance))})"
    else:
        where = "its publisher"
    if record.hf_repo:
        where = f"https://huggingface.co/{record.hf_repo} ({record.hf_file or record.file}) or {where}"
    if offline:
        why = "downloads are off (MFNET_OFFLINE / HF_HUB_OFFLINE)"
    elif not (record.urls or record.hf_repo):
        why = "mfnet has no download link for them"
    else:
        why = "no source could be reached" + (f" ({'; '.join(failures)})" if failures else "")
    return (
        f"weights {record.name} are not cached and {why}: download {record.file} from {where} and put it at "
        f"{cached_path(record)}, or run `mfnet weights import FILE --as {record.name}`"
    )


def _try_hub(record: WeightsRecord, *, offline: bool, failures: list[str]) -> ResolvedWeights | None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        failures.append("the Hub client is not installed (pip install 'mfnet[hub]')")
        return None
    try:
        path = hf_hub_download(
            record.hf_repo,
            record.hf_file or record.file,
            revision=record.hf_revision,
            local_files_only=offline,
        )
    except Exception as err:  # not cached offline, no network, no such repo: the next source may have it
        failures.append(f"hf-hub:{record.hf_repo}: {type(err).__name__}")
        return None
    path = Path(path)
    verify_file(path, record)
    return ResolvedWeights(path, record, "hub")


def _resolve_hf_folder(spec: str, *, offline: bool) -> ResolvedWeights:
    repo, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MfnetError("hf-hub: names need the Hub client: pip install 'mfnet[hub]'") from None
    try:
        folder = snapshot_download(
            repo, revision=revision or None, allow_patterns=[CONFIG_FILE, "*.safetensors"], local_files_only=offline
        )
    except Exception as err:
        why = "it is not in the Hugging Face cache and downloads are off" if offline else f"{type(err).__name__}"
        raise WeightsNotFoundError(
            f"hf-hub:{spec} could not be loaded ({why}): run once with network access, or download the folder and "
            "pass its path"
        ) from None
    return _from_folder(Path(folder), source="hub")


def download_to_cache(record: WeightsRecord, url: str, *, progress: bool = True) -> Path:
    """Downloads ``url`` to a temporary file, checks it, then moves it into the cache; a bad file is deleted."""
    target = cached_path(record)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{record.file}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, tmp, progress=progress)
        verify_file(Path(tmp), record, shown_as=url, fix="it was not cached; the link serves another file")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def import_file(path: str | os.PathLike[str], record: WeightsRecord, *, verify: bool = True) -> Path:
    """Copies a file the user obtained elsewhere into the cache as ``record``'s, after checking it.

    The file must hash to the record's sha256 when it has one; without one its hash is pinned beside the cached
    file, so a later change to the file is noticed. With ``verify`` the weights are also loaded into the record's
    architecture (the file must fit it).
    """
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source} does not exist: pass the file you downloaded")
    actual = sha256_of(source)
    if record.sha256 and actual != record.sha256.lower():
        raise ChecksumError(
            f"{source} is not the file of {record.name}: its sha256 is {actual} but the record says {record.sha256}"
        )
    if verify:
        model = build_model(record.architecture, num_classes=record.num_classes, **record.arch_kwargs)
        load_weights(model, read_checkpoint(source))
    target = cached_path(record)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{record.file}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    pinned = target.with_name(target.name + ".sha256")
    if record.sha256 is None:
        pinned.write_text(f"{actual}  {record.file}\n")
    else:
        pinned.unlink(missing_ok=True)
    return target
