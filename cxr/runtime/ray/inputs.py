"""Takes a folder, a storage URL or a manifest; makes the file names a Ray scan reads, in local-scan order."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cxr.errors import DataError
from cxr.imaging.decode import READABLE_SUFFIXES
from cxr.imaging.dicom import might_be_dicom
from cxr.runtime.scan import _matches, find_images

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(source: str | Path) -> bool:
    """True for ``scheme://...`` (s3, gs, abfs, hdfs, file...); a Path or a plain path is local."""
    return not isinstance(source, Path) and bool(_URL.match(source))


def _walk_key(rel: str) -> tuple[tuple[int, str], ...]:
    """Sort key giving ``os.walk`` order as ``find_images`` uses it: a folder's files, then its subfolders."""
    parts = rel.split("/")
    return (*((1, p) for p in parts[:-1]), (0, parts[-1]))


def find_images_at_url(
    url: str, *, recursive: bool = False, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[str]:
    """The file URLs a scan of the folder ``url`` reads, by the rules and in the order of ``find_images``."""
    try:
        from pyarrow import fs as pafs
    except ImportError as e:  # pyarrow comes with ray[data]
        from cxr.runtime.ray.cluster import RayUnavailableError

        raise RayUnavailableError(
            f"reading {url} needs pyarrow (part of Ray Data), which is not installed",
            hint="pip install -e '.[ray]' in a clone of cxr",
        ) from e
    try:
        filesystem, base = pafs.FileSystem.from_uri(url)
        info = filesystem.get_file_info(base)
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot open {url}: {e}",
            hint="check the URL and this machine's credentials for that storage",
            path=url,
        ) from e
    if info.type != pafs.FileType.Directory:
        raise DataError(
            f"{url} is not a folder" if info.type == pafs.FileType.File else f"folder {url} does not exist",
            hint="pass a folder URL such as s3://bucket/xrays",
            path=url,
        )
    base = base.rstrip("/")
    prefix = url.rstrip("/")
    found: list[tuple[tuple[tuple[int, str], ...], str]] = []
    for entry in filesystem.get_file_info(pafs.FileSelector(base, recursive=recursive)):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(base) :].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        name = rel.rsplit("/", 1)[-1]
        if include:
            selected = _matches(rel, name, include)
        else:
            suffix = Path(name).suffix.lower()
            selected = suffix in READABLE_SUFFIXES
            if suffix == "":  # old PACS exports: DICOM without a suffix
                with filesystem.open_input_stream(entry.path) as f:
                    selected = might_be_dicom(f.read(132))
        if selected and not (exclude and _matches(rel, name, exclude)):
            found.append((_walk_key(rel), f"{prefix}/{rel}"))
    return [u for _, u in sorted(found)]


def find_inputs(
    source: str | Path,
    *,
    recursive: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[str]:
    """File names under a local/NFS folder or an object-storage folder URL, in scan order."""
    if is_url(source):
        return find_images_at_url(str(source), recursive=recursive, include=include, exclude=exclude)
    return [str(p) for p in find_images(Path(source), recursive=recursive, include=include, exclude=exclude)]


def manifest_inputs(manifest: Path, root: str | Path | None = None, split: str | None = None) -> list[str]:
    """The files a cxr manifest lists (one split, or all), under ``root`` (default: the manifest's root)."""
    from cxr.data.manifest import load_manifest

    url_root = root is not None and is_url(root)
    m = load_manifest(
        manifest, check_files=not url_root, root=None if root is None or url_root else Path(root)
    )
    rows = m.rows if split is None else m.split(split)
    if not rows:
        raise DataError(
            f"manifest {manifest} has no images in split {split!r}",
            hint="pick another --split",
            path=manifest,
        )
    if url_root:  # object storage: the listed files are checked when they are read
        return [f"{str(root).rstrip('/')}/{r.path}" for r in rows]
    return [str(m.abspath(r)) for r in rows]
