"""The HTTP API and drawing page of `edge-infer serve` (Starlette): a thin layer over Classifier.

    app = create_app(ServeConfig(), Classifier())   # an ASGI app; edge_infer.serve runs it with uvicorn

POST /v1/digits and /v1/numbers answer with the CLI's --json records (edge_infer.cli.digit_record,
number_record, error_record), one per image in the order sent. Small images are decoded on the event loop,
larger ones in a small thread pool; their digits are classified by the Batcher (edge_infer.serve_batching),
which lets requests that arrive together share one session.run. Every error is JSON, {"error": "one line"},
with its HTTP status. The OpenAPI description (/openapi.json) is built from the same tables that the
handlers read (QUERY, ROUTES), so the two can't disagree.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge_infer.classifier import Classifier, Prediction, read_each, usable_cpus
from edge_infer.cli import digit_record, error_record, info_record, number_record
from edge_infer.input_picture import input_pixels
from edge_infer.number import NumberPlan, all_digits, decide_all, plan_number
from edge_infer.preprocess import ImageError, preprocess
from edge_infer.serve_batching import Batcher, QueueFull

__all__ = ["STATIC_DIR", "ServeConfig", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
RAW_TYPES = ("image/", "application/octet-stream")  # a raw body of one image (or no Content-Type at all)
# Bodies up to this size are decoded on the event loop: a small PNG takes ~0.1-0.3 ms to decode, less than
# handing it to a thread and back; larger ones (photos: tens of ms) go to the decoding threads.
INLINE_DECODE_BYTES = 16 * 1024
RAW_NAME = "-"  # the "path" of a raw body's record, as the CLI names stdin
T = TypeVar("T")


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings; their defaults are `edge-infer serve`'s."""

    max_body: int = 8 * 2**20  # bytes per request, refused (413) before they are read whole
    max_images: int = 64  # images per request
    timeout_s: float = 30.0  # per request, from the first body byte to the answer
    max_queue: int = 64  # requests in progress at once; more get 503 at once
    token: str | None = None  # when set, /v1/* needs "Authorization: Bearer <token>"
    cors: tuple[str, ...] = ()  # origins allowed to call the API from a browser
    batching: bool = True  # False: one session.run per request (for comparison)
    batch_wait_s: float = 0.002  # the longest a run waits for requests still decoding their images
    max_batch: int = 256  # images per session.run at most


class ApiError(Exception):
    """An error answer: status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status, headers=headers)


def with_min_confidence(prediction: Prediction, min_confidence: float | None) -> Prediction:
    """The prediction as a Classifier with this min_confidence would give it (None: as it is)."""
    if min_confidence is None or not prediction.digit_found:
        return prediction
    assert prediction.guess is not None  # (digit_found)
    sure = prediction.confidence >= min_confidence
    return replace(prediction, label=prediction.guess if sure else -1)


def png_base64(digit: np.ndarray) -> str:
    """The 28x28 model input as a base64 PNG (8-bit grey, bright ink), as `edge-infer --save-input` draws it."""
    buffer = io.BytesIO()
    Image.fromarray(input_pixels(digit)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def _limited_body(request: Request, max_body: int) -> AsyncGenerator[bytes, None]:
    """The request body, refused with 413 as soon as it is known to exceed max_body: from Content-Length
    before anything is read, or by counting the bytes received (chunked bodies, lying headers)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ApiError(413, f"the body is {int(declared)} bytes; the limit is {max_body}")
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_body:
            raise ApiError(413, f"the body is over the limit of {max_body} bytes")
        yield chunk


class Api:
    """The state of one server: the classifier, the batcher, the decoding threads and the limits."""

    def __init__(self, config: ServeConfig, classifier: Classifier) -> None:
        self.config, self.classifier = config, classifier
        self.batcher = Batcher(classifier.classify, max_batch=config.max_batch, wait_s=config.batch_wait_s)
        self.decoders = ThreadPoolExecutor(usable_cpus(), thread_name_prefix="edge-infer-decode")
        self.active = 0  # requests in progress

    def check_token(self, request: Request) -> None:
        if self.config.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.config.token.encode()):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    async def read_images(self, request: Request) -> list[tuple[str, bytes]]:
        """(name, bytes) per image: a raw body is one image named '-'; multipart files keep their names."""
        content_type = request.headers.get("content-type", "").lower()
        body = _limited_body(request, self.config.max_body)
        if content_type.startswith("multipart/form-data"):
            parser = MultiPartParser(
                request.headers, body, max_files=self.config.max_images, max_fields=self.config.max_images
            )
            try:
                form = await parser.parse()
            except MultiPartException as error:
                raise ApiError(400, f"bad multipart body: {error.message}") from None
            images = []
            try:
                for field, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        images.append((value.filename or field, await value.read()))
            finally:
                await form.close()
            if not images:
                raise ApiError(400, "the multipart body holds no files: send images as file fields")
            return images
        if content_type and not content_type.startswith(RAW_TYPES):
            raise ApiError(
                415, f"Content-Type {content_type.split(';')[0]} is not an image: send image bytes or multipart files"
            )
        data = b"".join([chunk async for chunk in body])
        if not data:
            raise ApiError(400, "the body is empty: send an image")
        return [(RAW_NAME, data)]

    async def decode(self, read: Callable[[Any], T], images: Sequence[bytes]) -> list[T | ImageError]:
        """read(image) for each image: small ones right here, larger ones in a decoding thread (the event loop
        keeps serving meanwhile)."""
        if sum(len(image) for image in images) <= INLINE_DECODE_BYTES:
            return read_each(images, read, "return")
        return await asyncio.get_running_loop().run_in_executor(
            self.decoders, lambda: read_each(images, read, "return")
        )

    async def classify(self, digits: np.ndarray) -> list[Prediction]:
        if self.config.batching:
            return await self.batcher.classify(digits)
        return await asyncio.get_running_loop().run_in_executor(self.decoders, self.classifier.classify, digits)

    async def answer(
        self, request: Request, numbers: bool, top_k: int, min_confidence: float | None, want_input: bool
    ) -> JSONResponse:
        """The records for the images of one request, in order (the body of POST /v1/digits and /v1/numbers)."""
        self.check_token(request)
        if self.active >= self.config.max_queue:
            raise ApiError(503, f"busy: {self.active} requests in progress; retry later", {"Retry-After": "1"})
        self.active += 1
        reading = True
        try:
            with anyio.fail_after(self.config.timeout_s):
                named = await self.read_images(request)
                reading = False
                if len(named) > self.config.max_images:
                    raise ApiError(400, f"{len(named)} images; the limit is {self.config.max_images} per request")
                names, blobs = [name for name, _ in named], [blob for _, blob in named]
                records = await (
                    self._numbers(names, blobs, min_confidence, want_input)
                    if numbers
                    else self._digits(names, blobs, top_k, min_confidence, want_input)
                )
        except TimeoutError:
            if reading:
                raise ApiError(408, f"the body took longer than {self.config.timeout_s:g} s to arrive") from None
            raise ApiError(503, f"no answer within {self.config.timeout_s:g} s; retry later") from None
        except QueueFull as error:
            raise ApiError(503, str(error), {"Retry-After": "1"}) from None
        finally:
            self.active -= 1
        if len(records) == 1 and names == [RAW_NAME] and "error" in records[0]:
            raise ApiError(422, f"cannot read the image: {records[0]['error']}")
        return JSONResponse({"results": records})

    async def _digits(
        self, names: list[str], blobs: list[bytes], top_k: int, min_confidence: float | None, want_input: bool
    ) -> list[dict[str, Any]]:
        with self.batcher.expecting():
            digits = await self.decode(preprocess, blobs)
        good = [digit for digit in digits if not isinstance(digit, ImageError)]
        predictions = iter(await self.classify(np.stack(good)) if good else [])
        records = []
        for name, digit in zip(names, digits, strict=True):
            if isinstance(digit, ImageError):
                records.append(error_record(name, digit))
                continue
            record = digit_record(name, with_min_confidence(next(predictions), min_confidence), top_k)
            if want_input:
                record["input"] = png_base64(digit)
            records.append(record)
        return records

    async def _numbers(
        self, names: list[str], blobs: list[bytes], min_confidence: float | None, want_input: bool
    ) -> list[dict[str, Any]]:
        with self.batcher.expecting():
            plans = await self.decode(plan_number, blobs)
        good: list[NumberPlan] = [plan for plan in plans if not isinstance(plan, ImageError)]
        digits = all_digits(good)
        predictions = [with_min_confidence(p, min_confidence) for p in await self.classify(digits)]
        readings = iter(zip(good, decide_all(good, predictions), strict=True))
        records = []
        for name, plan in zip(names, plans, strict=True):
            if isinstance(plan, ImageError):
                records.append(error_record(name, plan))
                continue
            _, reading = next(readings)
            record = number_record(name, reading)
            if want_input:
                for digit, shown in zip(reading.digits, record["digits"], strict=True):
                    shown["input"] = png_base64(plan.digits[plan.boxes.index(digit.box)])
            records.append(record)
        return records


@dataclass(frozen=True)
class QueryParameter:
    """A query parameter of POST /v1/digits or /v1/numbers: how it is read, and how /openapi.json shows it."""

    name: str
    kind: type  # int, float or bool
    default: Any
    description: str
    low: float | None = None
    high: float | None = None

    def read(self, text: str | None) -> Any:
        """The value of the parameter given as text (None: absent); ApiError 422 when it is not one."""
        if text is None:
            return self.default
        try:
            if self.kind is bool:
                if text.lower() not in BOOLEANS:
                    raise ValueError
                value: Any = BOOLEANS[text.lower()]
            else:
                value = self.kind(text)
        except ValueError:
            raise ApiError(422, f"{self.name}: {text!r} is not {KIND_NAMES[self.kind]}") from None
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ApiError(422, f"{self.name}: {text} is not in [{self.low:g}, {self.high:g}]")
        return value

    def openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": OPENAPI_TYPES[self.kind]}
        if self.default is not None:
            schema["default"] = self.default
        if self.low is not None:
            schema["minimum"], schema["maximum"] = self.low, self.high
        return {"name": self.name, "in": "query", "required": False, "description": self.description, "schema": schema}


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false"}
OPENAPI_TYPES = {int: "integer", float: "number", bool: "boolean"}
TOP_K = QueryParameter("top_k", int, 1, "Also list the next most likely digits (up to 10).", 1, 10)
MIN_CONFIDENCE = QueryParameter(
    "min_confidence", float, None, "Below this probability a digit is 'not sure' (default: the server's).", 0, 1
)
INPUT = QueryParameter("input", bool, False, "Add the 28x28 model input of each digit as a base64 PNG.")
QUERY = {"/v1/digits": (TOP_K, MIN_CONFIDENCE, INPUT), "/v1/numbers": (MIN_CONFIDENCE, INPUT)}


def read_query(request: Request, path: str) -> dict[str, Any]:
    """The query parameters of a request to path, by name; unknown ones are refused (422: a typo is not ignored)."""
    known = {parameter.name: parameter for parameter in QUERY[path]}
    unknown = sorted(set(request.query_params) - set(known))
    if unknown:
        raise ApiError(422, f"unknown query parameter {unknown[0]!r}; known: {', '.join(known)}")
    return {name: parameter.read(request.query_params.get(name)) for name, parameter in known.items()}


ROUTES = {  # path -> (method, summary, description) for /openapi.json
    "/v1/digits": (
        "post",
        "Classify single digits",
        "One image as the raw body (PNG, JPEG, GIF, BMP, TIFF, WebP, PNM, ICO, TGA) or several as multipart "
        'files. Answers {"results": [...]}: per image, in the order sent, the record `edge-infer --json` prints, '
        'or {"path", "error"} for an image that cannot be read. A raw body is named "-".',
    ),
    "/v1/numbers": (
        "post",
        "Read whole numbers (a line of digits per image)",
        "As /v1/digits, each image read as one number: the records of `edge-infer --number --json`.",
    ),
    "/v1/model": ("get", "The model's metadata, the server's limits and batching counts", ""),
    "/healthz": ("get", "Liveness: the model is loaded and the server answers", ""),
}
ERROR_STATUSES = {
    "/v1/digits": ("400", "401", "408", "413", "415", "422", "503"),
    "/v1/numbers": ("400", "401", "408", "413", "415", "422", "503"),
    "/v1/model": ("401",),
    "/healthz": (),
}


def openapi(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the API."""
    error = {
        "description": "An error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    body = {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        },
    }
    paths: dict[str, Any] = {}
    for path, (method, summary, description) in ROUTES.items():
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
            },
        }
        if description:
            operation["description"] = description
        if path in QUERY:
            operation["parameters"] = [parameter.openapi() for parameter in QUERY[path]]
            operation["requestBody"] = body
        if path.startswith("/v1/"):
            operation["security"] = [{}, {"bearer": []}]  # the token only when the server was given one
        operation["responses"].update({status: error for status in ERROR_STATUSES[path]})
        paths[path] = {method: operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": "edge-infer", "version": version, "summary": "Read digits and numbers from images."},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def create_app(config: ServeConfig, classifier: Classifier) -> Starlette:
    """The ASGI app: the API over `classifier`, the drawing page at /, JSON errors."""
    api = Api(config, classifier)
    description = openapi(_version())
    page = (STATIC_DIR / "index.html").read_bytes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await api.batcher.start()
        yield
        await api.batcher.stop()
        api.decoders.shutdown(wait=True)

    async def digits(request: Request) -> JSONResponse:
        query = read_query(request, "/v1/digits")
        return await api.answer(request, False, query["top_k"], query["min_confidence"], query["input"])

    async def numbers(request: Request) -> JSONResponse:
        query = read_query(request, "/v1/numbers")
        return await api.answer(request, True, 1, query["min_confidence"], query["input"])

    async def model(request: Request) -> JSONResponse:
        api.check_token(request)
        limits = {"max_body": config.max_body, "max_images": config.max_images, "timeout_s": config.timeout_s}
        batching = {"enabled": config.batching, "wait_s": config.batch_wait_s, **asdict(api.batcher.stats)}
        record = {**info_record(classifier), "min_confidence": classifier.min_confidence}
        return JSONResponse({**record, "limits": limits, "batching": batching})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def openapi_json(request: Request) -> JSONResponse:
        return JSONResponse(description)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error_response(error.status, error.message, error.headers)

    async def http_error(request: Request, error: Exception) -> JSONResponse:  # 404, 405 from the router
        assert isinstance(error, HTTPException)
        return error_response(error.status_code, str(error.detail), error.headers)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(error).__name__}: {error}")

    routes = [
        Route("/v1/digits", digits, methods=["POST"]),
        Route("/v1/numbers", numbers, methods=["POST"]),
        Route("/v1/model", model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: unexpected},
    )
    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-infer")
    except PackageNotFoundError:  # a source checkout that is not installed
        return "unknown"
