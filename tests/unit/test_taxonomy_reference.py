"""The real reference data (Shopify taxonomy, Google mapping, HS 2022) and the marketplace files that use it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from services.results.taxonomy import (CONFIG, REFERENCE_DATA, ConfigurationError, Nomenclature, ShopifyTaxonomy,
                                       Taxonomies, depends_on)

LABELS = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]
SHOPIFY = REFERENCE_DATA / "shopify-product-taxonomy"


@pytest.fixture(scope="module")
def taxonomies():
    return Taxonomies.load(model_labels=LABELS)


def test_every_apparel_category_resolves_in_every_locale_the_data_has():
    shopify = ShopifyTaxonomy.load(SHOPIFY)
    assert len(shopify.locales) == 21 and "pt-BR" in shopify.locales and "ja" in shopify.locales
    assert len(shopify.paths) == 462
    for category_id, paths in shopify.paths.items():
        assert set(paths) == set(shopify.locales), category_id
        assert all(len(path) == category_id.count("-") + 1 for path in paths.values()), category_id


def test_the_worked_example_matches(taxonomies):
    """../shared/datasets/LABEL-MAPPING-EXAMPLE.md, worked by hand: dress -> aa-1-4 -> Google 2271 -> 6104/6204."""
    marketplace = taxonomies.for_marketplace("de-modehaus")
    dress = taxonomies.category(marketplace, "dress", "de")
    assert dress.id == "gid://shopify/TaxonomyCategory/aa-1-4" and dress.name == "Kleider"
    assert (dress.google_category.id, dress.google_category.name) == ("2271", "Apparel & Accessories > Clothing > "
                                                                              "Dresses")
    assert {c.heading for c in dress.customs_codes} == {"6104", "6204"}
    assert all(c.code.startswith(("61044", "62044")) for c in dress.customs_codes)
    knitted_cotton = next(c for c in dress.customs_codes if c.code == "610442")
    assert knitted_cotton.description.startswith("Dresses; women's or girls', of cotton")
    assert dict(knitted_cotton.depends_on) == {"construction": "knitted or crocheted", "wearer": "women's or girls'",
                                               "material": "of cotton"}
    t_shirt = taxonomies.category(taxonomies.for_marketplace("jp-ichiba"), "t-shirt", "ja")
    assert [c.code for c in t_shirt.customs_codes] == ["610910", "610990"] and t_shirt.name == "Tシャツ"


def test_every_customs_code_named_exists_in_the_nomenclature(taxonomies):
    nomenclature = Nomenclature.load(REFERENCE_DATA / "harmonized-system")
    for codes in taxonomies.customs.values():
        assert codes
        for code in codes:
            assert nomenclature.entries[code.code][2] == 6 and nomenclature.entries[code.code][1] == code.heading
            assert code.description == nomenclature.entries[code.code][0]


def test_a_category_without_customs_codes_takes_its_ancestors(taxonomies):
    sneakers = taxonomies.category(taxonomies.for_marketplace("jp-ichiba"), "shoes", "ja")
    assert sneakers.id.endswith("/aa-8-8") and {c.heading for c in sneakers.customs_codes} == {"6402", "6403", "6404",
                                                                                               "6405"}


def test_depends_on_reads_the_attributes_from_the_descriptions():
    assert depends_on("Shirts; men's or boys' (not knitted or crocheted)",
                      "Shirts; men's or boys', of cotton (not knitted or crocheted)") == {
        "construction": "not knitted or crocheted (woven)", "wearer": "men's or boys'", "material": "of cotton"}


def test_at_least_four_marketplaces_in_different_countries_and_languages(taxonomies):
    marketplaces = taxonomies.marketplaces.values()
    assert len({m.country for m in marketplaces}) >= 4 and len({m.default_locale for m in marketplaces}) >= 4


def test_search_finds_categories_by_name_in_the_operators_language(taxonomies):
    found = taxonomies.search(taxonomies.for_marketplace("de-modehaus"), "kleid", "de")
    assert "gid://shopify/TaxonomyCategory/aa-1-4" in [c.id for c in found]


def copy_config(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    return config


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('"gid://shopify/TaxonomyCategory/aa-1-4"', '"gid://shopify/TaxonomyCategory/aa-99"'),
     "de-modehaus.toml: labels.dress = 'gid://shopify/TaxonomyCategory/aa-99': no such Shopify category"),
    (lambda t: t.replace('dress = "gid://shopify/TaxonomyCategory/aa-1-4"', 'dress = ""'),
     "de-modehaus.toml: labels.dress: has no category"),
    (lambda t: t.replace("dress = ", "robe = "), "de-modehaus.toml: labels.robe: the models have no such label"),
    (lambda t: t.replace('default_locale = "de"', 'default_locale = "de-AT"'),
     "de-modehaus.toml: default_locale 'de-AT' is not one of its locales"),
    (lambda t: t.replace('locales = ["de", "en"]', 'locales = ["de", "xx"]'), "de-modehaus.toml: locales ['xx']"),
])
def test_a_wrong_marketplace_file_refuses_the_start_naming_file_and_entry(tmp_path, edit, message):
    config = copy_config(tmp_path)
    path = config / "marketplaces" / "de-modehaus.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigurationError) as raised:
        Taxonomies.load(config / "marketplaces", config / "customs.toml", model_labels=LABELS)
    assert message in str(raised.value)


def test_an_unknown_hs_code_refuses_the_start(tmp_path):
    config = copy_config(tmp_path)
    customs = config / "customs.toml"
    customs.write_text(customs.read_text().replace('hs = ["6109"]', 'hs = ["6199"]'))
    with pytest.raises(ConfigurationError, match=r"customs.toml: \[categories.'aa-1-13-8'\] hs '6199': no HS 2022"):
        Taxonomies.load(config / "marketplaces", customs, model_labels=LABELS)


def test_a_model_label_no_marketplace_maps_refuses_the_start():
    with pytest.raises(ConfigurationError, match="model labels no marketplace maps: scarf"):
        Taxonomies.load(model_labels=[*LABELS, "scarf"])


def test_the_result_service_refuses_to_start_with_the_message(tmp_path):
    config = copy_config(tmp_path)
    path = config / "marketplaces" / "fr-boutique.toml"
    path.write_text(path.read_text().replace("hat = ", "chapeau = "))
    fusion = tmp_path / "fusion.json"
    fusion.write_text('{"models": {"efficientnet_lite0": {"version": 1, "weight": 1}}, "labels": %s}'
                      % str(LABELS).replace("'", '"'))
    run = subprocess.run([sys.executable, "-m", "services.results"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                              "RESULTS_MARKETPLACES_DIR": str(config / "marketplaces"),
                              "RESULTS_FUSION_PATH": str(fusion), "RESULTS_METRICS_PORT": "0",
                              "RESULTS_API_KEYS": "gateway=0123456789abcdef0123"})
    assert run.returncode == 2
    assert "refusing to start" in run.stderr and "fr-boutique.toml: labels.chapeau" in run.stderr
