"""A location the user named (a local path or a filesystem URI: s3://, gs://, file:///shared/mount) as a
pyarrow filesystem plus a base path.

`Location` carries what the image roots (data.ImageRoot) and the scoring output (score.store.OutputStore)
share: the text the user gave (`uri`), the filesystem, the base path, and the names of files under it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from vehicle_ray.errors import InputError


def is_uri(location: str | Path) -> bool:
    """True for a filesystem URI (s3://, gs://, file:///...), False for a plain local path."""
    return "://" in str(location)


def resolve_location(location: str | Path, what: str) -> tuple[pafs.FileSystem, str, pafs.FileInfo]:
    """(pyarrow filesystem, base path, info) for a local path or a URI (s3://, gs://, file://...)."""
    text = str(location)
    try:
        if is_uri(text):
            fs, base = pafs.FileSystem.from_uri(text)
        else:
            fs, base = pafs.LocalFileSystem(), str(Path(text).resolve())
        return fs, base.rstrip("/") or "/", fs.get_file_info(base)
    except (pafs.ArrowException, OSError, ValueError) as exc:  # pyarrow raises several types here
        raise InputError(f"cannot open {what} {text}: {exc}") from exc


@dataclass(frozen=True)
class Location:
    """A directory as a pyarrow filesystem plus a base path; `uri` is what the user gave. Subclasses
    (ImageRoot, OutputStore) compare equal only to their own kind."""

    uri: str
    fs: pafs.FileSystem
    base: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The filesystem path of a name under the base (what `fs` opens)."""
        return posixpath.join(self.base, *parts)

    def full_name(self, name: str) -> str:
        """The user-facing location of one file: an absolute local path or a URI."""
        if self.is_local:
            return self.path(name)
        return self.uri.rstrip("/") + "/" + name
