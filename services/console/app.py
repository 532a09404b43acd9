"""The console's web edge (Starlette): pages, a JSON API for them, the live feed as server-sent events, thumbnails.

Everything but the login page, the static files and /healthz needs a session. State-changing requests need the
session's CSRF token. Data from sellers and other systems reaches the page only as JSON that the page's script puts in
with textContent (never as HTML), under a Content-Security-Policy that allows no inline script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs

import grpc
import jinja2
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from services.common.contracts.product_classification.v1 import common_pb2, results_pb2
from services.console.accounts import OperatorAccounts
from services.console.results_client import FeedHub, ResultsClient, ResultsUnavailable
from services.console.sessions import LOGIN_COOKIE, SESSION_COOKIE, LoginThrottle, Session, SessionSigner, tokens_match
from services.console.settings import ConsoleSettings

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
MAX_FORM_BYTES = 8 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class SecurityHeaders:
    """ASGI middleware: every response carries the CSP and the other headers that keep the page to itself."""

    def __init__(self, app, tls: bool):
        self.app = app
        self.headers = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                        (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                        (b"cross-origin-opener-policy", b"same-origin"),
                        (b"cross-origin-resource-policy", b"same-origin")]
        if tls:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, with_headers)


class RequestTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge()
    return bytes(body)


# What each kind of failure means to an operator, and what to do about it (README: Errors, First steps by alert).
FAILURE_MEANING = {
    common_pb2.ERROR_KIND_INVALID_REQUEST: "the event or call broke the contract (a producer's bug)",
    common_pb2.ERROR_KIND_INVALID_IMAGE: "the photo could not be read (damaged, or not a photo)",
    common_pb2.ERROR_KIND_IMAGE_TOO_LARGE: "the photo is over a size limit",
    common_pb2.ERROR_KIND_SOURCE_UNREACHABLE: "the photo's host could not be reached",
    common_pb2.ERROR_KIND_SOURCE_TOO_SLOW: "the photo's host sent it too slowly",
    common_pb2.ERROR_KIND_UNAVAILABLE: "a dependency was away",
    common_pb2.ERROR_KIND_INTERNAL: "our error: replay once fixed (replay-dead-letters)",
    common_pb2.ERROR_KIND_OVERLOADED: "no room to decode it in time: replay when the workers have room",
}
FAILURE_KINDS = [name.removeprefix("ERROR_KIND_") for name, value in common_pb2.ErrorKind.items() if value]


def kind_name(value: int) -> str:
    """'INVALID_IMAGE' for ERROR_KIND_INVALID_IMAGE; a kind this console does not know (a newer result service's) as
    its number."""
    if value not in common_pb2.ErrorKind.values():
        return str(value)
    return common_pb2.ErrorKind.Name(value).removeprefix("ERROR_KIND_")


def _timestamp(value: Timestamp) -> str:
    return value.ToJsonString() if value.seconds or value.nanos else ""


def category_json(category: common_pb2.Category) -> dict:
    return {"id": category.id, "name": category.name, "path": list(category.path), "locale": category.locale,
            "google": category.google_category.name,
            "customs": [{"code": c.code, "description": c.description} for c in category.customs_codes]}


def classification_json(c: common_pb2.Classification) -> dict:
    return {"listing_id": c.listing_id, "marketplace": c.marketplace, "locale": c.locale,
            "status": common_pb2.ClassificationStatus.Name(c.status).removeprefix("CLASSIFICATION_STATUS_"),
            "category": category_json(c.category), "label": c.label, "confidence": round(c.confidence, 4),
            "review_threshold": round(c.review_threshold, 4),
            "candidates": [{"label": k.label, "confidence": round(k.confidence, 4),
                            "category": category_json(k.category)} for k in c.candidates],
            "image_digest": c.image_digest, "sequence": c.sequence, "classified_at": _timestamp(c.classified_at),
            "error_kind": kind_name(c.error_kind) if c.error_kind else "",
            "error_reason": c.error_reason, "superseded": c.superseded}


def correction_json(c: common_pb2.Correction) -> dict:
    return {"correction_id": c.correction_id, "listing_id": c.listing_id, "marketplace": c.marketplace,
            "classification_sequence": c.classification_sequence, "category": category_json(c.category),
            "label": c.label, "model_was_right": c.model_was_right, "operator": c.operator,
            "model_category": category_json(c.model_answer.category), "model_confidence":
            round(c.model_answer.confidence, 4), "corrected_at": _timestamp(c.corrected_at), "sequence": c.sequence,
            "carried_from_sequence": c.carried_from_sequence,
            "photo_replaced_by_sequence": c.photo_replaced_by_sequence}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"cache-control": "no-store"})


def create_app(settings: ConsoleSettings) -> Starlette:
    settings.check_serving()
    accounts = OperatorAccounts(settings.accounts_path)
    signer = SessionSigner(settings.session_secret.get_secret_value(), settings.session_ttl_s)
    account_throttle = LoginThrottle(settings.login_failures_allowed, settings.login_lockout_max_s)
    address_throttle = LoginThrottle(settings.login_failures_allowed_per_address, settings.login_lockout_max_s)
    client = ResultsClient(settings)
    hub = FeedHub(client, settings.max_feed_clients)
    templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                                       autoescape=True))  # every value escaped, always
    hashing = asyncio.Semaphore(2)  # scrypt takes 32 MiB and a core each: a login flood queues, it cannot exhaust

    def cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, secure=settings.cookies_secure,
                            samesite="strict", path="/")

    def session_of(request: Request) -> Session | None:
        session = signer.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        operator = accounts.get(session.operator)
        if operator is None or operator.fingerprint != session.fingerprint:
            return None  # the account was removed or its password changed: its sessions end
        return session

    def api(handler):
        """JSON endpoints: a session required; POSTs need its CSRF token; results' errors as clear statuses."""
        async def endpoint(request: Request):
            session = session_of(request)
            if session is None:
                return error_response(401, "log in first")
            if request.method != "GET" and not tokens_match(request.headers.get("x-csrf-token"),
                                                            session.csrf_token):
                return error_response(403, "missing or wrong CSRF token; reload the page")
            try:
                return await handler(request, session)
            except RequestTooLarge:
                return error_response(413, "request too large")
            except ResultsUnavailable as error:
                return error_response(503, f"the result service is not answering ({error}); try again")
            except grpc.aio.AioRpcError as error:
                status = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
                          grpc.StatusCode.FAILED_PRECONDITION: 409}.get(error.code(), 502)
                return error_response(status, error.details() or error.code().name)
            except ValueError as error:
                return error_response(400, str(error))
        return endpoint

    def query(request: Request, name: str, max_length: int = 200) -> str:
        value = request.query_params.get(name, "")
        if len(value) > max_length:
            raise ValueError(f"{name} is too long")
        return value

    def integer(request: Request, name: str, default: int, low: int, high: int) -> int:
        value = request.query_params.get(name, "")
        try:
            number = int(value) if value else default
        except ValueError:
            raise ValueError(f"{name} must be a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"{name} must be between {low} and {high}")
        return number

    # -- pages

    async def login_page(request: Request, message: str = "", status: int = 200):
        if session_of(request) is not None and request.method == "GET":
            return RedirectResponse("/", status_code=303)
        token = secrets.token_urlsafe(24)
        response = templates.TemplateResponse(request, "login.html", {"csrf_token": token, "message": message},
                                              status_code=status, headers={"cache-control": "no-store"})
        cookie(response, LOGIN_COOKIE, token, 3600)
        return response

    async def login(request: Request):
        try:
            form = parse_qs((await read_body(request, MAX_FORM_BYTES)).decode("utf-8", "replace"))
        except RequestTooLarge:
            return error_response(413, "request too large")
        name = (form.get("operator") or [""])[0].strip().lower()[:64]
        password = (form.get("password") or [""])[0][:1024]
        if not tokens_match((form.get("csrf_token") or [""])[0], request.cookies.get(LOGIN_COOKIE)):
            return await login_page(request, "The form expired; please try again.", 403)
        account, address = f"operator:{name}", f"address:{request.client.host if request.client else ''}"
        wait = max(account_throttle.wait_s(account), address_throttle.wait_s(address))
        if wait > 0:
            response = await login_page(request, f"Too many failed attempts; try again in {int(wait) + 1} s.", 429)
            response.headers["retry-after"] = str(int(wait) + 1)
            return response
        async with hashing:
            operator = await asyncio.to_thread(accounts.authenticate, name, password)
        if operator is None:
            account_throttle.failed(account)
            address_throttle.failed(address)
            log.info("login refused", extra={"operator": name})
            return await login_page(request, "Wrong operator name or password.", 401)
        account_throttle.succeeded(account)  # not the address: one good account must not reset a guesser's count
        value, _ = signer.issue(operator.name, operator.locale, operator.fingerprint)
        response = RedirectResponse("/", status_code=303)
        cookie(response, SESSION_COOKIE, value, settings.session_ttl_s)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        log.info("login", extra={"operator": operator.name})
        return response

    async def logout(request: Request):
        session = session_of(request)
        try:
            form = parse_qs((await read_body(request, MAX_FORM_BYTES)).decode("utf-8", "replace"))
        except RequestTooLarge:
            return error_response(413, "request too large")
        if session is not None and not tokens_match((form.get("csrf_token") or [""])[0], session.csrf_token):
            return error_response(403, "missing or wrong CSRF token")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def console_page(request: Request):
        session = session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        return templates.TemplateResponse(request, "console.html",
                                          {"operator": session.operator, "locale": session.locale,
                                           "csrf_token": session.csrf_token},
                                          headers={"cache-control": "no-store"})

    async def healthz(_request: Request):
        return JSONResponse({"status": "ok", "feed_connected": hub.connected.is_set()})

    # -- the JSON API

    async def me(_request: Request, session: Session):
        return JSONResponse({"operator": session.operator, "locale": session.locale})

    async def marketplaces(_request: Request, session: Session):
        found = await client.call("ListMarketplaces", results_pb2.ListMarketplacesRequest(locale=session.locale))
        return JSONResponse({"marketplaces": [
            {"name": m.name, "locales": list(m.locales), "default_locale": m.default_locale,
             "review_threshold": round(m.review_threshold, 4),
             "categories": [category_json(c) for c in m.categories]} for m in found.marketplaces]})

    async def recent(request: Request, session: Session):
        found = await client.call("ListClassifications", results_pb2.ListClassificationsRequest(
            marketplace=query(request, "marketplace"), page_size=integer(request, "limit", 30, 1, 200)))
        classifications = list(found.classifications)
        await client.localize(classifications, session.locale)
        return JSONResponse({"classifications": [classification_json(c) for c in classifications]})

    async def failures(request: Request, session: Session):
        kind = query(request, "kind", 40)
        if kind and kind not in FAILURE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAILURE_KINDS)}")
        found = await client.call("ListClassifications", results_pb2.ListClassificationsRequest(
            marketplace=query(request, "marketplace"), page_size=integer(request, "limit", 30, 1, 200),
            before_sequence=integer(request, "before", 0, 0, 2 ** 62),
            failed_only=True, error_kind=common_pb2.ErrorKind.Value("ERROR_KIND_" + kind) if kind else 0))
        return JSONResponse({"classifications": [classification_json(c) for c in found.classifications],
                             "next_before": found.next_before_sequence})

    async def review_queue(request: Request, session: Session):
        found = await client.call("ListReviewQueue", results_pb2.ListReviewQueueRequest(
            marketplace=query(request, "marketplace"), category_id=query(request, "category"),
            listing_id=query(request, "listing", 256),
            page_size=integer(request, "limit", 25, 1, 100), offset=integer(request, "offset", 0, 0, 1_000_000)))
        classifications = list(found.classifications)
        await client.localize(classifications, session.locale)
        return JSONResponse({"classifications": [classification_json(c) for c in classifications],
                             "total": found.total})

    async def categories(request: Request, session: Session):
        found = await client.call("SearchCategories", results_pb2.SearchCategoriesRequest(
            marketplace=query(request, "marketplace"), locale=session.locale, query=query(request, "q", 100),
            page_size=integer(request, "limit", 15, 1, 50)))
        return JSONResponse({"categories": [category_json(c) for c in found.categories]})

    async def record_correction(request: Request, session: Session):
        try:
            body = json.loads(await read_body(request, MAX_FORM_BYTES))
            request_ = results_pb2.RecordCorrectionRequest(
                correction_id=str(body["correction_id"]), listing_id=str(body["listing_id"]),
                classification_sequence=int(body["classification_sequence"]), category_id=str(body["category_id"]),
                operator=session.operator, locale=session.locale)
        except (ValueError, KeyError, TypeError):
            raise ValueError("send JSON with correction_id, listing_id, classification_sequence and category_id") \
                from None
        correction = await client.call("RecordCorrection", request_)
        log.info("correction recorded", extra={"operator": session.operator, "listing_id": correction.listing_id[:100],
                                               "model_was_right": correction.model_was_right})
        return JSONResponse({"correction": correction_json(correction)})

    async def corrections(request: Request, session: Session):
        found = await client.call("ListCorrections", results_pb2.ListCorrectionsRequest(
            marketplace=query(request, "marketplace"), listing_id=query(request, "listing_id", 256),
            page_size=integer(request, "limit", 30, 1, 200)))
        return JSONResponse({"corrections": [correction_json(c) for c in found.corrections]})

    async def statistics(request: Request, session: Session):
        found = await client.call("GetStatistics", results_pb2.GetStatisticsRequest(
            marketplace=query(request, "marketplace"), window_s=integer(request, "window", 3600, 60, 30 * 86400),
            locale=session.locale))
        share = found.needs_review / max(1, found.classified + found.needs_review)
        return JSONResponse({
            "window_s": found.window_s, "classified": found.classified, "needs_review": found.needs_review,
            "failed": found.failed, "needs_review_share": round(share, 4), "checked": found.checked,
            "checked_accuracy": round(found.checked_correct / found.checked, 4) if found.checked else None,
            "per_minute": [{"start": b.start, "classifications": b.classifications} for b in found.per_minute],
            "per_category": [{"label": c.label, "category": c.category.name or c.label, "classified": c.classified,
                              "needs_review": c.needs_review, "checked": c.checked,
                              "checked_correct": c.checked_correct} for c in found.per_category],
            "failed_by_kind": [{"kind": kind_name(f.error_kind),
                                "meaning": FAILURE_MEANING.get(f.error_kind, "not recorded"), "count": f.count}
                               for f in found.failed_by_kind]})

    async def feed(request: Request, session: Session):
        marketplace = query(request, "marketplace")
        subscriber = hub.subscribe()
        if subscriber is None:
            return error_response(503, "this console replica serves as many live feeds as it can; try another")

        async def events():
            try:
                yield "retry: 2000\n\n"
                while not subscriber.dropped and time.time() < session.expires_at:
                    try:
                        first = await asyncio.wait_for(subscriber.queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield ": still here\n\n"
                        continue
                    batch = [first]
                    while not subscriber.queue.empty() and len(batch) < 100:
                        batch.append(subscriber.queue.get_nowait())
                    batch = [c for c in batch if not marketplace or c.marketplace == marketplace]
                    try:
                        await client.localize(batch, session.locale)
                    except (ResultsUnavailable, grpc.aio.AioRpcError):
                        pass  # names in the listing's own locale this time
                    for classification in batch:
                        yield f"event: classification\ndata: {json.dumps(classification_json(classification))}\n\n"
            finally:
                hub.unsubscribe(subscriber)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def thumbnail(request: Request, _session: Session):
        digest = request.path_params["digest"]
        found = await client.call("GetThumbnail", results_pb2.GetThumbnailRequest(image_digest=digest))
        return Response(found.jpeg, media_type="image/jpeg",
                        headers={"cache-control": "private, max-age=86400, immutable"})

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await client.start()
        hub.start()
        yield
        await hub.stop()
        await client.stop()

    routes = [
        Route("/healthz", healthz),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", console_page),
        Route("/api/me", api(me)),
        Route("/api/marketplaces", api(marketplaces)),
        Route("/api/recent", api(recent)),
        Route("/api/review", api(review_queue)),
        Route("/api/failures", api(failures)),
        Route("/api/categories", api(categories)),
        Route("/api/corrections", api(record_correction), methods=["POST"]),
        Route("/api/corrections", api(corrections), methods=["GET"]),
        Route("/api/statistics", api(statistics)),
        Route("/api/feed", api(feed)),
        Route("/thumbnails/{digest:str}", api(thumbnail)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders, tls=settings.tls_cert_file is not None)
    app.state.accounts = accounts
    app.state.hub = hub
    return app
