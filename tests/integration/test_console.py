"""The review console on the real stack: over HTTP as an attacker would try it, and in a real browser (Debian's
chromium, headless) as an operator uses it: log in, watch a listing classified through Kafka arrive without a reload,
correct it from the queue with the keyboard, and find the correction on its Kafka topic and over gRPC."""

from __future__ import annotations

import http.cookiejar
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import grpc
import pytest

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2, results_pb2
from services.drivers.traffic import TopicReader, submit_listings
from services.localstack.stack import REPOSITORY_ROOT
from services.results.taxonomy import Taxonomies
from services.trainer.real_models import clothing_dataset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def console(stack):
    return stack.console


@pytest.fixture(scope="module")
def operator(console):
    return "ana", console.add_operator("ana", locale="de")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Visitor:
    """An HTTP client with its own cookies, that sees redirects and error statuses as answers."""

    def __init__(self, base: str):
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies), NoRedirect())

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {}, method=method)
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def login_form_token(self) -> str:
        _, _, body = self.request("/login")
        return re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()

    def login(self, name: str, password: str, token: str | None = None):
        token = self.login_form_token() if token is None else token
        form = urllib.parse.urlencode({"operator": name, "password": password, "csrf_token": token}).encode()
        return self.request("/login", form, {"content-type": "application/x-www-form-urlencoded"})

    def csrf(self) -> str:
        _, _, body = self.request("/")
        return re.search(rb'name="csrf-token" content="([^"]+)"', body).group(1).decode()


def classify_through_kafka(stack, results, listing: common_pb2.Listing, timeout_s: float = 90):
    submit_listings(stack.kafka_settings, [listing])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return results.GetClassification(results_pb2.GetClassificationRequest(listing_id=listing.listing_id),
                                             timeout=5)
        except Exception:  # noqa: BLE001  (NOT_FOUND until it is stored)
            time.sleep(0.3)
    raise AssertionError(f"{listing.listing_id} was not classified in {timeout_s} s")


def photo(label: str = "dress") -> bytes:
    return sorted((clothing_dataset() / "validation" / label).glob("*.jpg"))[0].read_bytes()


def test_nothing_of_a_listing_is_shown_without_a_session(console):
    visitor = Visitor(console.url)
    status, headers, _ = visitor.request("/")
    assert status == 303 and headers["location"] == "/login"
    for path in ("/api/recent", "/api/review", "/api/failures", "/api/feed", "/api/statistics", "/api/corrections",
                 "/api/marketplaces", "/api/categories?marketplace=de-modehaus&q=a", "/thumbnails/" + "a" * 64):
        status, _, body = visitor.request(path)
        assert status == 401 and b"listing" not in body, path
    forged = Visitor(console.url)
    forged.cookies.set_cookie(http.cookiejar.Cookie(
        0, "console_session", "eyJvIjoiYW5hIn0.forged", None, False, "127.0.0.1", False, False, "/", True, False,
        None, True, None, None, {}))
    assert forged.request("/api/recent")[0] == 401


def test_pages_carry_a_content_security_policy_and_cookies_are_httponly_and_samesite(console, operator):
    visitor = Visitor(console.url)
    status, headers, _ = visitor.request("/login")
    assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in \
        headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    status, headers, _ = visitor.login(*operator)
    assert status == 303 and headers["location"] == "/"
    session_cookie = headers["set-cookie"] if "console_session" in headers["set-cookie"] else ""
    assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie.replace("Strict", "strict")
    assert operator[1] not in (REPOSITORY_ROOT / "README.md").read_text()


def test_a_state_change_without_the_csrf_token_is_refused(stack, console, operator, results):
    visitor = Visitor(console.url)
    visitor.login(*operator)
    token = visitor.csrf()
    listing = common_pb2.Listing(listing_id=f"csrf-{uuid.uuid4().hex[:8]}", marketplace="de-modehaus", locale="de",
                                 image_bytes=photo())
    classified = classify_through_kafka(stack, results, listing)
    body = json.dumps({"correction_id": uuid.uuid4().hex, "listing_id": listing.listing_id,
                       "classification_sequence": classified.sequence,
                       "category_id": classified.category.id}).encode()
    for headers in ({}, {"x-csrf-token": "not-the-token"}, {"x-csrf-token": ""}):
        status, _, answer = visitor.request("/api/corrections", body, {"content-type": "application/json", **headers})
        assert status == 403 and b"CSRF" in answer
    assert not results.ListCorrections(results_pb2.ListCorrectionsRequest(listing_id=listing.listing_id)).corrections
    # The login form is protected too: a login posted from elsewhere (no token of ours) is refused.
    outsider = Visitor(console.url)
    assert outsider.login(*operator, token="made-up")[0] == 403
    status, _, answer = visitor.request("/api/corrections", body, {"content-type": "application/json",
                                                                   "x-csrf-token": token})
    assert status == 200 and json.loads(answer)["correction"]["operator"] == operator[0]


def test_repeated_bad_passwords_are_slowed_even_for_the_right_one_afterwards(console):
    name = "guessed"
    password = console.add_operator(name)
    visitor = Visitor(console.url)
    for _ in range(5):
        assert visitor.login(name, "wrong password, sorry")[0] == 401
    status, headers, body = visitor.login(name, password)
    assert status == 429 and int(headers["retry-after"]) >= 1 and b"Too many failed attempts" in body
    time.sleep(int(headers["retry-after"]) + 0.2)
    assert visitor.login(name, password)[0] == 303


def test_sockets_held_open_by_one_machine_neither_fill_the_console_nor_stay_open(console):
    """Slowloris from 127.0.0.2: more idle sockets than the server's concurrency limit (1,000), which turned every
    operator away with 503 before the console had a header deadline and a cap per address."""
    port = int(console.url.rsplit(":", 1)[1].strip("/"))
    held = []
    try:
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)))
        except OSError as error:
            pytest.skip(f"cannot connect from 127.0.0.2: {error}")
        for _ in range(1099):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)))
        time.sleep(0.5)
        assert Visitor(console.url).request("/login")[0] == 200
        refused = 0
        for sock in held:
            sock.settimeout(0.01)
            try:
                refused += sock.recv(64).startswith(b"HTTP/1.1 429 ")
            except TimeoutError:
                pass
        assert refused >= 1100 - 64
        held[0].settimeout(15)  # a held one is closed at the header deadline (10 s)
        assert held[0].recv(64) == b""
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make browser installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(condition, timeout_s: float = 60, what: str = ""):
    """Polls condition() until it holds. An element the page re-rendered between being found and being read (the
    queue and the feed replace their items as they update) counts as "not yet", and the next poll finds it anew."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_operator_sees_a_listing_arrive_live_and_corrects_it_with_the_keyboard(stack, console, operator, results,
                                                                                 browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(console.url + "/login")
    browser.find_element(By.ID, "operator").send_keys(operator[0])
    browser.find_element(By.ID, "password").send_keys(operator[1] + Keys.ENTER)
    wait_for(lambda: browser.current_url.rstrip("/") == console.url, 30, "the console page")
    wait_for(lambda: browser.find_element(By.ID, "feed-state").text == "Live.", 30, "the live feed")
    browser.execute_script("window.notReloaded = true")
    title = browser.title

    # A listing id as a hostile seller would send it: it must show as text, and run nothing.
    hostile = f'<img src=x onerror="document.title=\'pwned\'">-{uuid.uuid4().hex[:8]}'
    listing = common_pb2.Listing(listing_id=hostile, marketplace="jp-ichiba", locale="ja", image_bytes=photo("dress"))
    reader = TopicReader(stack.kafka_settings, stack.kafka_settings.topics.listing_corrected)
    try:
        classified = classify_through_kafka(stack, results, listing)

        def card():
            for item in browser.find_elements(By.CSS_SELECTOR, "#feed li"):
                if item.get_attribute("data-listing") == hostile:
                    return item
            return None
        item = wait_for(card, 60, "the listing in the live feed")
        assert browser.execute_script("return window.notReloaded") is True  # pushed, not reloaded
        assert hostile in item.text and not browser.find_elements(By.CSS_SELECTOR, "img[src='x']")
        assert browser.title == title
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018
        # The category in the operator's language (German), not the listing's (Japanese).
        taxonomies = Taxonomies.load()
        german = taxonomies.category_in_locale(taxonomies.marketplaces["jp-ichiba"],
                                               classified.category.id.rsplit("/", 1)[-1], "de").name
        assert german in item.text.splitlines()
        thumbnail = item.find_element(By.TAG_NAME, "img")
        assert thumbnail.get_attribute("src").endswith("/thumbnails/" + classified.image_digest)
        wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                thumbnail), 20, "the thumbnail")

        # The review queue, by keyboard alone: open it, find the listing, search a category, pick it with Enter.
        browser.find_element(By.ID, "tab-review").send_keys(Keys.ENTER)
        browser.find_element(By.ID, "review-listing").send_keys(hostile + Keys.ENTER)
        wait_for(lambda: [li.get_attribute("data-listing") for li in
                          browser.find_elements(By.CSS_SELECTOR, "#queue li")] == [hostile], 30, "the queue")
        ActionChains(browser).send_keys("/").perform()
        assert browser.switch_to.active_element.get_attribute("id") == "category-search"
        ActionChains(browser).send_keys("sneaker").perform()
        chosen = wait_for(lambda: [li.get_attribute("data-category") for li in
                                   browser.find_elements(By.CSS_SELECTOR, "#search-results li.selected")], 20,
                          "search results")[0]  # read in the same poll: the results re-render as the search runs
        assert chosen and chosen != classified.category.id
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_for(lambda: browser.find_element(By.ID, "status").text.startswith("Saved:"), 20, "the saved message")
        assert hostile in browser.find_element(By.ID, "status").text

        # Over gRPC: stored with the operator, the time and the model's answer beside it.
        [correction] = results.ListCorrections(results_pb2.ListCorrectionsRequest(listing_id=hostile)).corrections
        assert correction.operator == operator[0] and correction.category.id == chosen
        assert correction.model_answer.category.id == classified.category.id and not correction.model_was_right
        assert correction.corrected_at.seconds >= classified.classified_at.seconds
        # On the corrections topic, for listing services.
        records = reader.read(lambda rs: any(events_pb2.ListingCorrected.FromString(r.value).correction.listing_id
                                             == hostile for r in rs), 30)
        events = [events_pb2.ListingCorrected.FromString(r.value) for r in records]
        [event] = [e for e in events if e.correction.listing_id == hostile]
        assert event.correction.category.id == chosen and event.event_id
        # Judged: it has left the queue.
        queue = results.ListReviewQueue(results_pb2.ListReviewQueueRequest(listing_id=hostile))
        assert queue.total == 0
    finally:
        reader.close()


def test_a_verdict_given_after_the_seller_replaced_the_photo_is_saved_not_sent_and_the_operator_is_told(
        stack, console, operator, results, browser):
    """The operator's queue shows the listing's photo A; the seller replaces it with B before the operator decides.
    The verdict on A is stored but not published (a listing service would give B the category chosen for A), and
    the page says so."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(console.url + "/")
    if browser.current_url.endswith("/login"):
        browser.find_element(By.ID, "operator").send_keys(operator[0])
        browser.find_element(By.ID, "password").send_keys(operator[1] + Keys.ENTER)
    wait_for(lambda: browser.find_elements(By.ID, "tab-review"), 30, "the console page")
    listing_id = f"replaced-{uuid.uuid4().hex[:8]}"
    first = classify_through_kafka(stack, results, common_pb2.Listing(
        listing_id=listing_id, marketplace="de-modehaus", locale="de", image_bytes=photo("dress")))
    browser.find_element(By.ID, "tab-review").send_keys(Keys.ENTER)
    search = browser.find_element(By.ID, "review-listing")
    search.clear()
    search.send_keys(listing_id + Keys.ENTER)
    wait_for(lambda: [li.get_attribute("data-listing") for li in
                      browser.find_elements(By.CSS_SELECTOR, "#queue li")] == [listing_id], 30, "the queue")
    # the seller's new photo is classified while the page still shows the first one
    submit_listings(stack.kafka_settings, [common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus",
                                                              locale="de", image_bytes=photo("shoes"))])
    deadline = time.monotonic() + 90
    while (current := results.GetClassification(results_pb2.GetClassificationRequest(listing_id=listing_id),
                                                timeout=5)).sequence == first.sequence:
        assert time.monotonic() < deadline, "the new photo was not classified"
        time.sleep(0.3)
    reader = TopicReader(stack.kafka_settings, stack.kafka_settings.topics.listing_corrected)
    try:
        ActionChains(browser).send_keys("1").perform()  # the first candidate, for photo A
        wait_for(lambda: browser.find_element(By.ID, "status").text.startswith("Saved, not sent"), 20,
                 "the not-sent message")
        assert listing_id in browser.find_element(By.ID, "status").text
        [correction] = results.ListCorrections(results_pb2.ListCorrectionsRequest(listing_id=listing_id)).corrections
        assert correction.classification_sequence == first.sequence
        assert correction.photo_replaced_by_sequence == current.sequence
        records = reader.read(lambda rs: False, 3)  # what a wrong publication would have sent by now
        assert not [r for r in records if listing_id.encode() == r.key]
    finally:
        reader.close()
    browser.find_element(By.ID, "tab-corrections").send_keys(Keys.ENTER)
    wait_for(lambda: any(listing_id in row.text and "not sent" in row.text
                         for row in browser.find_elements(By.CSS_SELECTOR, "#corrections tr")), 20,
             "the correction marked as not sent")


def test_the_numbers_page_draws_its_charts(stack, results, console, operator, browser):
    from selenium.webdriver.common.by import By

    unreadable = common_pb2.Listing(listing_id=f"numbers-{uuid.uuid4().hex[:8]}", marketplace="de-modehaus",
                                    locale="de", image_bytes=b"<html><body>404 Not Found</body></html>")
    more = [common_pb2.Listing(listing_id=f"numbers-{uuid.uuid4().hex[:8]}", marketplace="de-modehaus", locale="de",
                               image_bytes=b"not a photo") for _ in range(30)]  # more than the list's first page
    submit_listings(stack.kafka_settings, more)
    assert classify_through_kafka(stack, results, unreadable).status == common_pb2.CLASSIFICATION_STATUS_FAILED
    for listing in more:
        classify_through_kafka(stack, results, listing)
    classify_through_kafka(stack, results, common_pb2.Listing(  # a category for its chart, run alone too
        listing_id=f"numbers-{uuid.uuid4().hex[:8]}", marketplace="de-modehaus", locale="de", image_bytes=photo()))
    browser.get(console.url + "/")
    if browser.current_url.endswith("/login"):
        browser.find_element(By.ID, "operator").send_keys(operator[0])
        browser.find_element(By.ID, "password").send_keys(operator[1] + "\n")
    wait_for(lambda: browser.find_elements(By.ID, "tab-numbers"), 30, "the console page")
    browser.find_element(By.ID, "tab-numbers").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#category-chart svg rect"), 30, "the category chart")
    totals = browser.find_element(By.ID, "totals").text
    assert "share needing review" in totals and "model right where checked" in totals
    failures = browser.find_element(By.ID, "failure-chart")
    assert failures.find_elements(By.CSS_SELECTOR, "svg rect")
    assert "INVALID_IMAGE: the photo could not be read" in failures.text
    failures.find_element(By.CSS_SELECTOR, 'button[data-kind="INVALID_IMAGE"]').click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#failures tr.older button"), 20, "the first page")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#failures tr:not(.older)")) == 30
    browser.find_element(By.CSS_SELECTOR, "#failures tr.older button").click()
    wait_for(lambda: any(unreadable.listing_id in row.text and "web page" in row.text
                         for row in browser.find_elements(By.CSS_SELECTOR, "#failures tr")), 20,
             "the unreadable listing among the older failures, with its reason")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#failures tr:not(.older)")) > 30


def test_failures_are_listed_by_a_kind_the_service_knows_page_by_page(stack, console, operator, results):
    for _ in range(2):
        classify_through_kafka(stack, results, common_pb2.Listing(
            listing_id=f"failures-{uuid.uuid4().hex[:8]}", marketplace="fr-boutique", locale="fr",
            image_bytes=b"GIF89a" + b"\x00" * 40))
    visitor = Visitor(console.url)
    visitor.login(*operator)
    status, _, body = visitor.request("/api/failures?kind=INVALID_IMAGE&marketplace=fr-boutique&limit=1")
    first = json.loads(body)
    assert status == 200 and len(first["classifications"]) == 1 and first["next_before"]
    status, _, body = visitor.request(f"/api/failures?kind=INVALID_IMAGE&marketplace=fr-boutique&limit=1"
                                      f"&before={first['next_before']}")
    [older] = json.loads(body)["classifications"]
    assert older["sequence"] < first["classifications"][0]["sequence"] and older["error_kind"] == "INVALID_IMAGE"
    assert older["listing_id"] != first["classifications"][0]["listing_id"]
    assert visitor.request("/api/failures?before=-1")[0] == 400
    for kind in ("NOT_A_KIND", "UNSPECIFIED"):  # the latter would list every kind
        status, _, body = visitor.request(f"/api/failures?kind={kind}")
        assert status == 400 and b"INVALID_IMAGE" in body, kind
    status, _, body = visitor.request("/api/failures?kind=SOURCE_TOO_SLOW")
    assert status == 200 and all(c["error_kind"] == "SOURCE_TOO_SLOW" for c in json.loads(body)["classifications"])
    with pytest.raises(grpc.RpcError) as refused:  # a newer client's kind is refused, not read as "any"
        results.ListClassifications(results_pb2.ListClassificationsRequest(failed_only=True, error_kind=99),
                                    timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "99" in refused.value.details()


def test_export_corrections_writes_a_catalogue_make_train_takes(stack, console, operator, results, tmp_path):
    """Corrections made above (and here) come out as photos in the folder of the label the operator chose."""
    from services.trainer.dataset import load_catalogue_sizes

    visitor = Visitor(console.url)
    visitor.login(*operator)
    token = visitor.csrf()
    marketplace = "fr-boutique"
    labels = Taxonomies.load().marketplaces[marketplace].labels
    for index in range(5):  # five photos re-labelled "shoes" by an operator: enough for a category folder
        listing = common_pb2.Listing(listing_id=f"export-{uuid.uuid4().hex[:8]}-{index}", marketplace=marketplace,
                                     locale="fr", image_bytes=sorted((clothing_dataset() / "validation" / "pants")
                                                                     .glob("*.jpg"))[index].read_bytes())
        classified = classify_through_kafka(stack, results, listing)
        status, _, _ = visitor.request("/api/corrections", json.dumps({
            "correction_id": uuid.uuid4().hex, "listing_id": listing.listing_id,
            "classification_sequence": classified.sequence, "category_id": labels["shoes"]}).encode(),
            {"content-type": "application/json", "x-csrf-token": token})
        assert status == 200
    out = tmp_path / "corrected"
    run = subprocess.run([sys.executable, "-m", "services.tools.export_corrections", str(out), "--marketplace",
                          marketplace, "--results", stack.services["results"].address,
                          f"--api-key={stack.internal_keys['results']['localstack']}"],  # a key may start with '-'
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["exported"] >= 5
    shoes = sorted((out / "shoes").glob("*.jpg"))
    assert len(shoes) >= 5 and (out / "corrections.csv").read_text().count("\n") == counts["exported"] + 1
    labels_known = sorted({label for m in Taxonomies.load().marketplaces.values() for label in m.labels})
    catalogue = load_catalogue_sizes(out, [64], min_per_category=1, progress=False, categories=labels_known)[64]
    assert "shoes" in catalogue.categories and len(catalogue.labels) == counts["exported"]


def test_over_tls_the_session_cookie_is_secure_and_strict_transport_is_asked(stack, tmp_path):
    """The console serving HTTPS itself (CONSOLE_TLS_*): cookies are Secure and browsers are told to stay on TLS."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from services.localstack.processes import free_port
    from services.localstack.stack import ConsoleProcess

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                   .sign(key, hashes.SHA256()))
    (tmp_path / "console.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    (tmp_path / "console.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    port = free_port()
    console = ConsoleProcess({"CONSOLE_HTTP_ADDRESS": f"127.0.0.1:{port}",
                              "CONSOLE_RESULTS_ADDRESS": stack.services["results"].address,
                              "CONSOLE_RESULTS_API_KEY": stack.internal_keys["results"]["console"],
                              "CONSOLE_SESSION_SECRET": uuid.uuid4().hex * 2,
                              "CONSOLE_ACCOUNTS_PATH": str(tmp_path / "operators.json"),
                              "CONSOLE_TLS_CERT_FILE": str(tmp_path / "console.pem"),
                              "CONSOLE_TLS_KEY_FILE": str(tmp_path / "console.key")}, port, tmp_path / "console.log")
    password = console.add_operator("tls-operator")
    context = ssl.create_default_context(cafile=str(tmp_path / "console.pem"))
    console.url = f"https://localhost:{port}"
    console.process.start()
    try:
        def answering():
            try:
                with urllib.request.urlopen(console.url + "/healthz", context=context, timeout=2):
                    return True
            except OSError:
                return False
        wait_for(answering, 60, "the TLS console")
        visitor = Visitor(console.url)
        visitor.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(visitor.cookies),
                                                     urllib.request.HTTPSHandler(context=context), NoRedirect())
        status, headers, _ = visitor.login("tls-operator", password)
        assert status == 303 and "Secure" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
        assert headers["strict-transport-security"].startswith("max-age=")
    finally:
        console.stop()


@pytest.mark.parametrize("method, path, body, headers", [
    ("POST", "/api/corrections", b"not json", {}),
    ("POST", "/api/corrections", b"[1, 2, 3]", {}),
    ("POST", "/api/corrections", json.dumps({"correction_id": "x" * 20, "listing_id": "a",
                                             "classification_sequence": 10 ** 30, "category_id": "aa"}).encode(), {}),
    ("POST", "/api/corrections", json.dumps({"correction_id": "\u0000" * 20, "listing_id": "\ud800",
                                             "classification_sequence": -1, "category_id": ""}).encode(), {}),
    ("POST", "/api/corrections", b"{" * 20_000, {}),
    ("GET", "/api/review?offset=-5", None, {}),
    ("GET", "/api/review?limit=abc", None, {}),
    ("GET", "/api/review?marketplace=" + "m" * 5000, None, {}),
    ("GET", "/api/review?listing=%00%01%02", None, {}),
    ("GET", "/api/categories?marketplace=nowhere&q=x", None, {}),
    ("GET", "/api/statistics?window=999999999999", None, {}),
    ("GET", "/thumbnails/" + "g" * 64, None, {}),
    ("GET", "/thumbnails/..%2F..%2Fetc%2Fpasswd", None, {}),
    ("GET", "/static/..%2F..%2Fapp.py", None, {}),
])
def test_garbage_from_a_logged_in_browser_gets_a_clear_client_error_never_a_crash(console, operator, method, path,
                                                                                    body, headers):
    visitor = Visitor(console.url)
    visitor.login(*operator)
    token = visitor.csrf()
    status, answer_headers, answer = visitor.request(path, body, {"content-type": "application/json",
                                                                  "x-csrf-token": token, **headers}, method=method)
    assert 400 <= status < 500, (status, answer[:200])
    if answer_headers.get("content-type", "").startswith("application/json"):
        assert json.loads(answer)["error"]
    assert visitor.request("/healthz")[0] == 200  # and the console goes on
