"""Where a training run's initial weights come from (`train.pretrained`), as one local file and its sha256.

    none       random initial weights
    timm       the timm backbone's pretrained weights from the Hugging Face hub, through its cache
               (HF_HOME); no network and nothing cached -> a ConfigError in seconds saying how to
               pre-fetch or point at a file, never a hang on retries
    champion   the registry champion's weights-only model file (warm start)
    <path|URL> a weights file: safetensors or a weights-only torch file (a state dict), local or any
               fsspec URL (s3://, gs://, https://...); downloaded once into the run's scratch folder

The source and the file's sha256 go into the model file's lineage and the model card.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import fsspec

from lab2prod.core.errors import ConfigError
from lab2prod.core.files import sha256_file
from lab2prod.core.storage import is_remote, resolve
from lab2prod.registry import store as registry

log = logging.getLogger("models.nets.weights")

HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "none", "timm", "champion", "file"
    label: str  # what the lineage records: "none", "timm:<repo>", "champion:v0003", the path or URL
    path: Path | None = None  # the local file to load
    sha256: str | None = None


def _reachable(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to the URL's host be opened within `timeout` seconds?"""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_error(architecture: str, what: str) -> ConfigError:
    return ConfigError(
        f"train.pretrained = 'timm': the weights of {architecture!r} ({what}) are not in the local cache and "
        "the hub cannot be reached. On a machine with network, pre-fetch them into the cache this one reads "
        f"(HF_HOME): python -c \"import timm; timm.create_model('{architecture}', pretrained=True)\", "
        "or save them to a file and set train.pretrained to its path or URL (safetensors or a weights-only "
        "state dict)."
    )


def _from_hub(architecture: str) -> Path:
    """The timm backbone's pretrained weights file: from the Hugging Face cache, else downloaded."""
    import timm

    cfg = timm.models.get_pretrained_cfg(architecture)
    if cfg is None:
        raise ConfigError(f"train.pretrained = 'timm': timm has no pretrained weights for {architecture!r}")
    repo = cfg.hf_hub_id
    if repo:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
        names += ["model.safetensors", "pytorch_model.bin"]
        for name in names:
            cached = try_to_load_from_cache(repo, name)
            if isinstance(cached, str):
                return Path(cached)
        if constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT):
            raise _offline_error(architecture, f"hub repo {repo}")
        return Path(hf_hub_download(repo, "model.safetensors"))
    if cfg.url:  # older timm weights released as a plain URL: torch.hub's cache
        import torch.hub

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if cached.is_file():
            return cached
        if not _reachable(cfg.url):
            raise _offline_error(architecture, cfg.url)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg.url, str(cached))
        return cached
    raise ConfigError(f"train.pretrained = 'timm': timm names no download for {architecture!r}'s weights")


def _from_file(location: str, project: Path, scratch: Path) -> Path:
    where = resolve(location, project)
    if not is_remote(where):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(
                f"train.pretrained = {location!r}: no such file ({path}); give a safetensors or weights-only torch "
                "file, 'timm', 'champion' or 'none'"
            )
        return path
    local = scratch / Path(urlparse(where).path).name
    try:
        with fsspec.open(where, "rb") as src, open(local, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    except (OSError, ImportError, ValueError) as exc:
        raise ConfigError(f"train.pretrained = {location!r}: cannot read it ({exc})") from None
    return local


def _from_champion(registry_dir: str, project: Path, scratch: Path) -> tuple[str, Path]:
    where = registry.location(project, registry_dir)
    current = registry.champion(where)
    if current is None:
        raise ConfigError(
            f"train.pretrained = 'champion': the registry {where} has no champion yet; train once from 'none' "
            "(or a timm backbone) and let `lab2prod retrain` promote it"
        )
    version = current["version"]
    registry.verify(where, version)  # every file of the version matches its manifest's sha256
    return version, registry.local_copy(where, version, "model.pt", scratch)


def resolve_weights(
    pretrained: str, architecture: str, project: Path, registry_dir: str, scratch: Path
) -> WeightsSource:
    """The initial weights `train.pretrained` names, as a local file with its sha256."""
    if pretrained == "none":
        return WeightsSource("none", "none")
    if pretrained == "timm":
        path = _from_hub(architecture)
        kind, label = "timm", f"timm:{architecture}"
    elif pretrained == "champion":
        version, path = _from_champion(registry_dir, project, scratch)
        kind, label = "champion", f"champion:{version}"
    else:
        path = _from_file(pretrained, project, scratch)
        kind, label = "file", pretrained
    digest = sha256_file(path)
    log.info("train: initial weights from %s (%s, sha256 %s)", label, path, digest[:12])
    return WeightsSource(kind, label, path, digest)
