"""Reading the metric names out of the Grafana dashboard's PromQL (tests of deploy/grafana/tessera.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "tessera.json"

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile", "by", "without", "on",
    "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "topk", "bottomk", "abs", "clamp_min",
}


def queried_metrics(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: strings, label matchers, grouping lists and ranges
    are removed, then every identifier left that is not one of PromQL's words (or a number) is one."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # strings (inside matchers)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)  # grouping label lists
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b", " ", text)  # numbers
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text)) - PROMQL_WORDS
    return {name for name in names if name.lower() not in ("inf", "nan")}


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every target's ``expr`` in the dashboard, rows' nested panels included."""
    dashboard = json.loads(path.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for child in [panel, *panel.get("panels", [])]:
            exprs += [target["expr"] for target in child.get("targets", [])]
    return exprs
