"""The rendered objects as text: one YAML stream, or one file per object with a
kustomization.yaml; every file starts with `HEADER`, which tells a stale one from the user's."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

HEADER = "# Rendered by `pipeserve k8s render`: change the command and render again.\n"


def _dump(document: Any) -> str:
    # No line wrapping: a long value (a list of key hashes) stays on one line.
    return yaml.safe_dump(document, sort_keys=False, width=1_000_000)


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """One multi-document YAML stream."""
    return HEADER + "".join(f"---\n{_dump(obj)}" for obj in objects)


def file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}.yaml"


def kustomization(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [file_name(obj) for obj in objects],
    }


def write_directory(objects: list[dict[str, Any]], directory: Path) -> list[Path]:
    """One file per object and a kustomization.yaml listing them; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {file_name(obj): HEADER + _dump(obj) for obj in objects}
    files["kustomization.yaml"] = HEADER + _dump(kustomization(objects))
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale_files(directory: Path, written: list[Path]) -> list[Path]:
    """Files of an earlier render in `directory` that this one did not write."""
    return sorted(
        path
        for path in directory.glob("*.yaml")
        if path not in written and path.read_text().startswith(HEADER)
    )
