"""Helm's own Go code from Python (helm-python-sdk): render and lint a chart offline, with no helm
binary and no cluster, and parse what it renders into Kubernetes objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

HelmError = helm_python.HelmError

# The newest Kubernetes whose API schemas kubernetes-validate bundles (1.35 to 1.37 in 1.37.0).
KUBERNETES_VERSION = "1.37.0"

RELEASE = "tes"


def render(chart: Path, values: dict[str, Any], *, namespace: str) -> list[dict[str, Any]]:
    """Every object `helm install` would create (hooks included), in template order; values are
    checked against the chart's values.schema.json first, as an install does."""
    loaded = helm_python.Chart.load(chart)
    try:
        manifests = loaded.render(values, name=RELEASE, namespace=namespace, is_install=True)
    finally:
        loaded.close()
    objects = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return objects


def lint(chart: Path, values: dict[str, Any]) -> list[str]:
    """`helm lint --strict`'s warnings and errors (its informational notes are left out)."""
    report = helm_python.lint(
        chart, values, strict=True, namespace="fivesafes", kube_version=f"v{KUBERNETES_VERSION}"
    )
    problems = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return problems + list(report["errors"])
