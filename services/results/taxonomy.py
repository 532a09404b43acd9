"""Marketplace taxonomies: which category of each marketplace a model label stands for, with localised names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind


@dataclass(frozen=True)
class MarketplaceTaxonomy:
    marketplace: str
    default_locale: str
    # label -> (category id, {locale: path})
    categories: dict[str, tuple[str, dict[str, list[str]]]]

    def category(self, label: str, locale: str) -> common_pb2.Category | None:
        entry = self.categories.get(label)
        if entry is None:
            return None
        category_id, paths = entry
        path = paths.get(locale) or paths.get(locale.split("-")[0]) or paths[self.default_locale]
        return common_pb2.Category(id=category_id, name=path[-1], path=path)


class Taxonomies:
    """All marketplaces' taxonomies, loaded once from a JSON file (see taxonomies/sample.json)."""

    def __init__(self, marketplaces: dict[str, MarketplaceTaxonomy]):
        self.marketplaces = marketplaces

    @classmethod
    def load(cls, path: Path) -> "Taxonomies":
        document = json.loads(path.read_text())
        marketplaces = {}
        for name, body in document["marketplaces"].items():
            categories = {label: (entry["id"], entry["path"]) for label, entry in body["categories"].items()}
            for label, (_, paths) in categories.items():
                if body["default_locale"] not in paths:
                    raise ValueError(f"{path}: {name}/{label} has no path in the default locale")
            marketplaces[name] = MarketplaceTaxonomy(name, body["default_locale"], categories)
        return cls(marketplaces)

    def for_marketplace(self, marketplace: str) -> MarketplaceTaxonomy:
        taxonomy = self.marketplaces.get(marketplace)
        if taxonomy is None:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"unknown marketplace {marketplace!r}; known: "
                                      f"{', '.join(sorted(self.marketplaces))}")
        return taxonomy
