"""The ZIP file every package is written into: entries readable by everyone, dated when they were written.

`zipfile` gives an entry opened for writing by name the date 1980-01-01 and, like `writestr`, the mode
0600, so a package unzipped on Linux or macOS is readable by its owner only and looks forty years old.
`PackageZipFile` gives every entry it creates by name the mode 0644 and the current time instead.
"""

from __future__ import annotations

import stat
import time
import zipfile
from typing import IO, Any, Literal

# Regular file, rw-r--r--, in the upper 16 bits of `external_attr` (the Unix mode, as `zip` writes it).
ENTRY_MODE = 0o644
_EXTERNAL_ATTR = (stat.S_IFREG | ENTRY_MODE) << 16


class PackageZipFile(zipfile.ZipFile):
    """A `zipfile.ZipFile` whose new entries get mode 0644 and the time they were written."""

    def new_entry(self, name: str) -> zipfile.ZipInfo:
        """The header of an entry `name` written now, compressed as the archive is."""
        # Local time, as `zipfile.writestr` and the `zip` tool date entries (a ZIP date has no zone).
        info = zipfile.ZipInfo(name, date_time=time.localtime(time.time())[:6])
        info.external_attr = _EXTERNAL_ATTR
        info.compress_type = self.compression
        # zipfile's own way to carry the level to the entry (named so from 3.7 to 3.13).
        info._compresslevel = self.compresslevel  # type: ignore[attr-defined]
        return info

    def open(
        self,
        name: str | zipfile.ZipInfo,
        mode: Literal["r", "w"] = "r",
        pwd: bytes | None = None,
        *,
        force_zip64: bool = False,
    ) -> IO[bytes]:
        """As `ZipFile.open`; an entry opened for writing by name gets the package's mode and time."""
        if mode == "w" and isinstance(name, str):
            name = self.new_entry(name)
        return super().open(name, mode, pwd, force_zip64=force_zip64)

    def writestr(self, zinfo_or_arcname: str | zipfile.ZipInfo, data: Any, *args: Any, **kwargs: Any) -> None:
        """As `ZipFile.writestr`; an entry given by name gets the package's mode and time."""
        if isinstance(zinfo_or_arcname, str):
            zinfo_or_arcname = self.new_entry(zinfo_or_arcname)
        super().writestr(zinfo_or_arcname, data, *args, **kwargs)
