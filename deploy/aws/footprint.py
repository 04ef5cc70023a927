"""What the Lambda functions' image holds, measured against Lambda's size limits.

The functions run the adpulse package with its runtime dependencies (no extras). Their
installed size decides the packaging: a zip (with its layers) may unpack to at most
250 MB, a container image may be 10 GB. :func:`runtime_footprint` sums the files the
installed distributions list (this environment's wheels, the ones ``pip install`` puts
in the image for the same platform). ``.venv/bin/python deploy/aws/footprint.py``
prints it (a development tool: it reads the metadata with ``packaging``, a dependency of
the development tools, not of adpulse).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys
from dataclasses import dataclass
from typing import Final

from packaging.requirements import Requirement

#: Lambda's limits (bytes): a zip function with its layers, unzipped; a container image.
ZIP_LIMIT: Final = 250 * 1024 * 1024
IMAGE_LIMIT: Final = 10 * 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Footprint:
    """Installed bytes per distribution of a package's runtime closure."""

    sizes: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def largest(self, n: int = 8) -> list[tuple[str, int]]:
        return sorted(self.sizes.items(), key=lambda kv: -kv[1])[:n]


def runtime_closure(root: str = "adpulse") -> list[str]:
    """The installed distributions ``root`` needs at run time: its requirements without
    extras, and theirs, whose markers hold on this interpreter."""
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = _key(name)
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform dependency that is not installed here
        seen[key] = dist.metadata["Name"]
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
            # Extras named in the requirement (psycopg[binary]) pull their own packages.
            for extra in req.extras:
                todo.extend(_extra_requirements(req.name, extra))
    return sorted(seen.values())


def _extra_requirements(name: str, extra: str) -> list[str]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return []
    out = []
    for text in dist.requires or ():
        req = Requirement(text)
        marker = req.marker
        if (
            marker is not None
            and marker.evaluate({"extra": extra})
            and not marker.evaluate({"extra": ""})
        ):
            out.append(req.name)
    return out


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_bytes(name: str) -> int:
    """Bytes of the files an installed distribution lists (its RECORD)."""
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or ():
        try:
            total += os.path.getsize(str(dist.locate_file(file)))
        except OSError:
            continue
    return total


def runtime_footprint(root: str = "adpulse") -> Footprint:
    """Installed bytes of every distribution in :func:`runtime_closure`."""
    return Footprint({name: installed_bytes(name) for name in runtime_closure(root)})


def main() -> None:
    footprint = runtime_footprint()
    mb = 1024 * 1024
    for name, size in footprint.largest(12):
        print(f"{size / mb:8.1f} MiB  {name}")
    print(f"{footprint.total / mb:8.1f} MiB  total, {len(footprint.sizes)} distributions")
    print(f"zip limit {ZIP_LIMIT / mb:.0f} MiB, image limit {IMAGE_LIMIT / mb:.0f} MiB")
    sys.exit(0)


if __name__ == "__main__":
    main()
