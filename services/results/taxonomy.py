"""Marketplace categories from real reference data: Shopify's product taxonomy, Google's, and the HS nomenclature.

Nothing of the taxonomies or the nomenclature is typed here: names, paths, Google categories and customs
descriptions are read from the files in `reference_data/` (unchanged copies, see its README). What is configuration:
- `config/customs.toml`: which HS headings (4 digits) or groups (5 digits) can apply to a Shopify category;
- `config/marketplaces/*.toml`: one file per marketplace: its locales, default locale, review threshold and which
  Shopify category each model label means.
Everything is validated once, at start-up; a mistake refuses the start with the file and the entry that is wrong.
"""

from __future__ import annotations

import csv
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind

HERE = Path(__file__).resolve().parent
REFERENCE_DATA = HERE / "reference_data"
CONFIG = HERE / "config"
SHOPIFY_GID = "gid://shopify/TaxonomyCategory/"


class ConfigurationError(ValueError):
    """A marketplace or customs file is wrong; the message names the file and the entry."""


def _short_id(category_id: str) -> str:
    return category_id.removeprefix(SHOPIFY_GID)


@dataclass(frozen=True)
class ShopifyTaxonomy:
    """Category id (short, e.g. 'aa-1-4') -> locale -> path of names."""

    paths: dict[str, dict[str, list[str]]]
    locales: tuple[str, ...]

    @classmethod
    def load(cls, folder: Path) -> "ShopifyTaxonomy":
        paths: dict[str, dict[str, list[str]]] = {}
        locales = sorted(p.name for p in (folder / "dist").iterdir() if (p / "categories.txt").exists())
        for locale in locales:
            for line in (folder / "dist" / locale / "categories.txt").read_text(encoding="utf-8").splitlines():
                if not line.startswith(SHOPIFY_GID):
                    continue
                gid, _, path = line.partition(" : ")
                paths.setdefault(_short_id(gid.strip()), {})[locale] = [p.strip() for p in path.split(" > ")]
        return cls(paths, tuple(locales))


def load_google_mapping(folder: Path) -> dict[str, tuple[str, str]]:
    """Shopify short id -> (Google product category id, full name), from Shopify's own mapping files."""
    import yaml

    base = folder / "data" / "integrations" / "google" / "2021-09-21"
    names = {str(entry["id"]): entry["full_name"]
             for entry in yaml.safe_load((base / "full_names.yml").read_text(encoding="utf-8"))}
    rules = yaml.safe_load((base / "mappings" / "from_shopify.yml").read_text(encoding="utf-8"))["rules"]
    mapping = {}
    for rule in rules:
        google_ids = [str(i) for i in rule["output"].get("product_category_id") or []]
        if google_ids and google_ids[0] in names:
            mapping[str(rule["input"]["product_category_id"])] = (google_ids[0], names[google_ids[0]])
    return mapping


@dataclass(frozen=True)
class Nomenclature:
    """HS 2022: code -> (description, parent, level)."""

    entries: dict[str, tuple[str, str, int]]

    @classmethod
    def load(cls, folder: Path) -> "Nomenclature":
        with (folder / "data" / "harmonized-system.csv").open(encoding="utf-8", newline="") as handle:
            return cls({row["hscode"]: (row["description"], row["parent"], int(row["level"]))
                        for row in csv.DictReader(handle) if row["level"].isdigit()})

    def subheadings(self, prefix: str) -> list[str]:
        return sorted(code for code, (_, _, level) in self.entries.items() if level == 6 and code.startswith(prefix))


_WEARER = re.compile(r"\b(men's or boys'|women's or girls')")
_MATERIAL = re.compile(r"((?:(?:with )?outer soles (?:and uppers )?|(?:with )?uppers )?of (?!heading|chapter|item)"
                       r"[^,;()]+(?:\([^)]*\))?)")


def depends_on(heading_description: str, description: str) -> dict[str, str]:
    """The attributes the nomenclature splits on, read from the heading's and the subheading's own words."""
    text = f"{heading_description}; {description}"
    attributes = {}
    if "not knitted or crocheted" in text:
        attributes["construction"] = "not knitted or crocheted (woven)"
    elif "knitted or crocheted" in text:
        attributes["construction"] = "knitted or crocheted"
    wearer = _WEARER.search(text)
    if wearer:
        attributes["wearer"] = wearer.group(1)
    qualifier = description.partition(";")[2] or description
    material = _MATERIAL.search(qualifier)
    if material:
        attributes["material"] = material.group(1).replace("(not knitted or crocheted)", "").strip()
    return attributes


@dataclass(frozen=True)
class Marketplace:
    name: str
    country: str
    locales: tuple[str, ...]
    default_locale: str
    review_threshold: float | None
    labels: dict[str, str]  # model label -> Shopify short id
    source: Path

    def resolve_locale(self, requested: str) -> str:
        """pt-BR -> pt -> the default: the first of the marketplace's locales that matches."""
        for candidate in (requested, requested.split("-")[0]):
            for locale in self.locales:
                if candidate and locale.lower() == candidate.lower():
                    return locale
        return self.default_locale


@dataclass
class Taxonomies:
    """Every marketplace's categories, with names in every locale, Google categories and customs codes."""

    marketplaces: dict[str, Marketplace]
    shopify: ShopifyTaxonomy
    google: dict[str, tuple[str, str]]
    customs: dict[str, list[common_pb2.CustomsCode]]
    default_review_threshold: float = 0.0
    _cache: dict = field(default_factory=dict)

    @classmethod
    def load(cls, marketplaces_dir: Path = CONFIG / "marketplaces", customs_path: Path = CONFIG / "customs.toml",
             reference_dir: Path = REFERENCE_DATA, model_labels: list[str] | None = None,
             default_review_threshold: float = 0.0) -> "Taxonomies":
        shopify = ShopifyTaxonomy.load(reference_dir / "shopify-product-taxonomy")
        google = load_google_mapping(reference_dir / "shopify-product-taxonomy")
        nomenclature = Nomenclature.load(reference_dir / "harmonized-system")
        customs = _load_customs(customs_path, shopify, nomenclature)
        files = sorted(marketplaces_dir.glob("*.toml"))
        if not files:
            raise ConfigurationError(f"{marketplaces_dir}: no marketplace files (*.toml)")
        marketplaces = {}
        for path in files:
            marketplace = _load_marketplace(path, shopify, customs, model_labels)
            if marketplace.name in marketplaces:
                raise ConfigurationError(f"{path}: marketplace {marketplace.name!r} is also defined in "
                                         f"{marketplaces[marketplace.name].source}")
            marketplaces[marketplace.name] = marketplace
        if model_labels is not None:
            unmapped = sorted(set(model_labels) - {label for m in marketplaces.values() for label in m.labels})
            if unmapped:
                raise ConfigurationError(f"{marketplaces_dir}: model labels no marketplace maps: {', '.join(unmapped)}")
        return cls(marketplaces, shopify, google, customs, default_review_threshold)

    def for_marketplace(self, marketplace: str) -> Marketplace:
        found = self.marketplaces.get(marketplace)
        if found is None:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"unknown marketplace {marketplace!r}; known: "
                                      f"{', '.join(sorted(self.marketplaces))}")
        return found

    def review_threshold(self, marketplace: Marketplace) -> float:
        return marketplace.review_threshold if marketplace.review_threshold is not None \
            else self.default_review_threshold

    def category_by_id(self, marketplace: Marketplace, short_id: str, locale: str) -> common_pb2.Category:
        """The category named in the marketplace's locale nearest to the one asked for (what listings get)."""
        return self._category(short_id, marketplace.resolve_locale(locale))

    def category_in_locale(self, marketplace: Marketplace, short_id: str, locale: str) -> common_pb2.Category:
        """The category named in any of the taxonomy's locales (an operator's language need not be the
        marketplace's): pt-BR -> pt-BR, else pt, else the marketplace's default."""
        return self._category(short_id, self.taxonomy_locale(locale) or marketplace.default_locale)

    def taxonomy_locale(self, requested: str) -> str | None:
        for candidate in (requested, requested.split("-")[0]):
            for locale in self.shopify.locales:
                if candidate and locale.lower() == candidate.lower():
                    return locale
        return None

    def _category(self, short_id: str, resolved: str) -> common_pb2.Category:
        category = common_pb2.Category()
        category.CopyFrom(self._shared_category(short_id, resolved))
        return category

    def _shared_category(self, short_id: str, resolved: str) -> common_pb2.Category:
        """The cached message itself, never to be changed: for callers that copy it into their own message."""
        key = (short_id, resolved)
        if key not in self._cache:
            paths = self.shopify.paths[short_id]
            path = paths.get(resolved) or paths["en"]
            google_id, google_name = self.google.get(short_id, ("", ""))
            self._cache[key] = common_pb2.Category(
                id=SHOPIFY_GID + short_id, name=path[-1], path=path, locale=resolved,
                google_category=common_pb2.GoogleProductCategory(id=google_id, name=google_name),
                customs_codes=self.customs_for(short_id))
        return self._cache[key]

    def customs_for(self, short_id: str) -> list[common_pb2.CustomsCode]:
        """The category's own customs codes, else its nearest ancestor's (Sneakers -> Shoes)."""
        while short_id:
            if short_id in self.customs:
                return self.customs[short_id]
            short_id = short_id.rpartition("-")[0]
        return []

    def category(self, marketplace: Marketplace, label: str, locale: str) -> common_pb2.Category | None:
        short_id = marketplace.labels.get(label)
        return None if short_id is None else self.category_by_id(marketplace, short_id, locale)

    def copy_category_into(self, target: common_pb2.Category, marketplace: Marketplace, label: str,
                           locale: str) -> None:
        """What category() answers, copied straight into a field of the caller's message (a category with its
        customs codes is about 5 KB: one copy instead of three)."""
        target.CopyFrom(self._shared_category(marketplace.labels[label], marketplace.resolve_locale(locale)))

    def search(self, marketplace: Marketplace, text: str, locale: str, limit: int = 20,
               any_locale: bool = False) -> list[common_pb2.Category]:
        """Categories of the taxonomy whose name (in the locale, or English) contains the text; names that start
        with it first. any_locale: the locale may be any of the taxonomy's, not only the marketplace's."""
        resolved = (self.taxonomy_locale(locale) if any_locale else None) or marketplace.resolve_locale(locale)
        needle = text.casefold().strip()
        found = []
        for short_id, paths in self.shopify.paths.items():
            names = [n.casefold() for n in (paths.get(resolved, paths["en"])[-1], paths["en"][-1])]
            if not needle or any(needle in n for n in names):
                starts = any(n.startswith(needle) for n in names)
                found.append((not starts, len(paths["en"]), short_id))
        found.sort()
        return [self._category(i, resolved) for _, _, i in found[:limit]]


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{path}: cannot be read: {error}") from None


def _load_customs(path: Path, shopify: ShopifyTaxonomy, nomenclature: Nomenclature
                  ) -> dict[str, list[common_pb2.CustomsCode]]:
    document = _read_toml(path).get("categories", {})
    customs = {}
    for category_id, entry in document.items():
        short_id = _short_id(category_id)
        if short_id not in shopify.paths:
            raise ConfigurationError(f"{path}: [categories.{category_id!r}]: no such Shopify category")
        codes = []
        for prefix in entry.get("hs", []):
            prefix = str(prefix).replace(".", "")
            subheadings = nomenclature.subheadings(prefix) if len(prefix) in (4, 5, 6) else []
            if not subheadings:
                raise ConfigurationError(f"{path}: [categories.{category_id!r}] hs {prefix!r}: no HS 2022 subheading "
                                         "has this code")
            for code in subheadings:
                description, heading, _ = nomenclature.entries[code]
                heading_description = nomenclature.entries[heading][0]
                codes.append(common_pb2.CustomsCode(code=code, description=description, heading=heading,
                                                    heading_description=heading_description,
                                                    depends_on=depends_on(heading_description, description)))
        customs[short_id] = codes
    return customs


def _load_marketplace(path: Path, shopify: ShopifyTaxonomy, customs: dict, model_labels: list[str] | None
                      ) -> Marketplace:
    document = _read_toml(path)
    where = str(path)
    for key in ("marketplace", "locales", "default_locale", "labels"):
        if key not in document:
            raise ConfigurationError(f"{where}: {key!r} is missing")
    locales = tuple(document["locales"])
    unknown = [locale for locale in locales if locale not in shopify.locales]
    if unknown:
        raise ConfigurationError(f"{where}: locales {unknown}: the taxonomy has {', '.join(shopify.locales)}")
    if document["default_locale"] not in locales:
        raise ConfigurationError(f"{where}: default_locale {document['default_locale']!r} is not one of its locales")
    threshold = document.get("review_threshold")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ConfigurationError(f"{where}: review_threshold {threshold!r} must be within 0..1")
    labels = {}
    for label, category_id in document["labels"].items():
        if not category_id:
            raise ConfigurationError(f"{where}: labels.{label}: has no category")
        short_id = _short_id(str(category_id))
        if short_id not in shopify.paths:
            raise ConfigurationError(f"{where}: labels.{label} = {category_id!r}: no such Shopify category")
        if model_labels is not None and label not in model_labels:
            raise ConfigurationError(f"{where}: labels.{label}: the models have no such label (they have "
                                     f"{', '.join(model_labels)})")
        labels[label] = short_id
    return Marketplace(document["marketplace"], document.get("country", ""), locales, document["default_locale"],
                       None if threshold is None else float(threshold), labels, path)
