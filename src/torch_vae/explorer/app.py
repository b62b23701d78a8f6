"""The live explorer's web server (``torch-vae explore``): a FastAPI app under uvicorn that
serves one page (static/explorer.html, .js, .css: no outside resources, so it works offline)
and a JSON API over an ``explorer.Explorer``.

Every request and response is a pydantic model built for the model at hand, so the OpenAPI
schema (``/openapi.json``) is exact: a code has exactly ``latent_dims`` finite numbers, an
image index lies in the test split. A bad request gets a 4xx with ``{"detail": message}``:
422 for a value the schema refuses, 413 for a body or an image too large, 415 for a file that
is not an image or a JSON body sent as another kind. A conditional model's requests name the
class to decode as (``class``: an index into the model's classes, or a name), which a request
for any other model may not. A
discrete model's code is its grid of h x w code indices, row by row: exactly h w integers in
0..K-1 (K: its codebook's size); its answers say, for each cell, how many of the test images
have that code there (``usage``).
Decoding runs on the event loop itself (a decode takes well under a
millisecond; one at a time keeps PyTorch's threads from fighting), uploads are decoded in the
thread pool.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# models built at run time (api_models), so they must be objects, not strings.
import errno
import logging
import socket
from collections.abc import Collection, Sequence
from importlib import resources
from types import SimpleNamespace
from typing import Annotated, Any, Literal, Union

import torch
from fastapi import FastAPI, File, Form, Path, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    create_model,
)
from starlette.exceptions import HTTPException  # what FastAPI raises for a body it cannot parse

from ..errors import TorchVaeError
from ..version import __version__
from .state import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    Z_BOUND,
    Explorer,
    UploadError,
    read_upload,
)

log = logging.getLogger(__name__)

# Bytes of a request body: an upload's file, and room for the multipart headers around it.
MAX_BODY = MAX_UPLOAD_BYTES + 64 * 1024
MAX_STEPS = 64  # frames of one interpolation
# PyTorch threads while serving (unless --threads says otherwise; mapping the test split at
# start uses PyTorch's choice). One decode is too small to split: on 2 cores, 2 threads made
# a decode 20x slower at the 95th percentile whenever anything else ran (each parallel region
# waits for a thread the system has put aside); see docs/benchmarks.md "Explorer latency".
SERVING_THREADS = 1
ERRORS = {
    400: "the body cannot be parsed",
    413: "the body, file or image is too large",
    415: "the file is not an image, or a JSON body came as another kind (a form, text)",
    422: "a value the schema refuses, or an image that cannot be used",
}


class Error(BaseModel):
    detail: str = Field(description="what is wrong with the request")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": Error, "description": ERRORS[c]} for c in codes}


def _number(value: Any) -> Any:
    """Lets a JSON number through to pydantic's integer check (which takes 3.0, as JSON Schema
    does, and refuses 3.5); refuses a string or a boolean, which JSON Schema does not count."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    return value


def whole(low: int, high: int) -> Any:
    """A JSON integer in [low, high] (constraints first, so that the schema shows them)."""
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_number)]


def class_value(classes: Sequence[str]) -> Any:
    """A class of a conditional model in JSON: its index, or its name (one error that lists
    them for anything else)."""
    shown = ", ".join(repr(c) for c in classes[:20]) + (" ..." if len(classes) > 20 else "")

    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                f"unknown class {value!r}: an index 0 to {len(classes) - 1}, or one of {shown}"
            ) from None

    kinds = Union[whole(0, len(classes) - 1), Literal[tuple(classes)]]  # noqa: UP007
    return Annotated[kinds, WrapValidator(check)]


def form_class(classes: Sequence[str]) -> Any:
    """A class of a conditional model in a form field: its name, or its index as text."""
    return Literal[tuple(dict.fromkeys([*classes, *map(str, range(len(classes)))]))]


def _with_class(base: type[BaseModel], classes: Sequence[str], required: bool) -> Any:
    """``base`` with the field ``class``: a conditional model's class to decode as."""
    what = "the class to decode as: an index into classes, or a name"
    if required:
        field = (class_value(classes), Field(alias="class", description=what))
    else:
        field = (class_value(classes) | None, Field(None, alias="class",
                                                    description=what + " (random)"))  # fmt: skip
    return create_model(base.__name__, __base__=base, class_=field)


def _code_types(d: int, grid: Sequence[int] | None, codes: int) -> tuple[Any, Any, Any, str]:
    """A code in a request, in an answer, the interpolation methods and words for a code: of
    latent-``d`` Gaussian codes (``d`` finite numbers within +-Z_BOUND), or a discrete model's
    ``grid`` (h, w) of indices into ``codes`` code vectors (h w integers, row by row)."""
    if grid is None:
        number = Field(strict=True, allow_inf_nan=False, ge=-Z_BOUND, le=Z_BOUND)
        code = Annotated[list[Annotated[float, number]], Field(min_length=d, max_length=d)]
        return code, list[float], Literal["linear", "slerp"], f"a latent code: {d} numbers"
    cells = grid[0] * grid[1]
    code = Annotated[list[whole(0, codes - 1)], Field(min_length=cells, max_length=cells)]
    what = (f"a code grid: {grid[0]}x{grid[1]} code indices 0..{codes - 1}, row by row "
            f"({cells} integers)")  # fmt: skip
    return code, list[int], Literal["linear"], what  # linear: between the code vectors


def api_models(
    d: int, n: int, classes: Sequence[str] = (), grid: Sequence[int] | None = None, codes: int = 0
) -> SimpleNamespace:
    """The request and response models for latent-``d`` codes and ``n`` test images (and a
    conditional model's ``classes``, which its requests name); a discrete model's codes are
    ``grid`` (h, w) indices into ``codes`` code vectors of ``d`` numbers."""
    number = Field(strict=True, allow_inf_nan=False, ge=-Z_BOUND, le=Z_BOUND)
    Point = Annotated[list[Annotated[float, number]], Field(min_length=2, max_length=2)]
    strict = ConfigDict(extra="forbid")
    Code, CodeOut, Method, what = _code_types(d, grid, codes)

    class DecodeRequest(BaseModel):
        model_config = strict
        z: Code = Field(description=what)

    class MapRequest(BaseModel):
        model_config = strict
        xy: Point = Field(description="a point of the map (GET /api/map)")

    class SampleRequest(BaseModel):
        model_config = strict
        seed: whole(0, 2**31 - 1) | None = Field(None, description="(random)")

    class InterpolateRequest(BaseModel):
        model_config = strict
        a: Code
        b: Code
        steps: whole(2, MAX_STEPS) = Field(16, description="frames, a and b too")
        method: Method = "linear"

    if classes:
        DecodeRequest = _with_class(DecodeRequest, classes, True)
        MapRequest = _with_class(MapRequest, classes, True)
        SampleRequest = _with_class(SampleRequest, classes, False)
        InterpolateRequest = _with_class(InterpolateRequest, classes, True)
    index = Path(ge=0, le=n - 1, description=f"a test image, 0..{n - 1}")
    answers = _answer_models(CodeOut, grid is not None)
    requests = {k: v for k, v in locals().items() if k[0].isupper() or k == "index"}
    return SimpleNamespace(**requests, **answers)


class _Usage(BaseModel):
    """What a discrete model's answers with a code grid add."""

    usage: list[float] = Field(
        description="for each cell, row by row: the share of the test images that have its "
        "code there"
    )


def _answer_models(CodeOut: Any, discrete: bool) -> dict[str, Any]:
    """The answers' models, by name, whose codes are ``CodeOut`` (a discrete model's add
    ``usage``)."""
    Pair = Annotated[list[float], Field(min_length=2, max_length=2)]

    class Decoded(_Usage if discrete else BaseModel):
        image: str = Field(description="the decoded image, a PNG data URL")
        xy: Pair = Field(description="where the code lies on the map")

    class Coded(Decoded):
        z: CodeOut = Field(description="the code")

    class Sampled(Coded):
        label: int | None = Field(
            description="the class it was decoded as, an index into classes (null: the model "
            "is not conditional)"
        )

    class Encoded(Coded):
        input: str = Field(description="the image as the model sees it, a PNG data URL")

    class TestImage(Encoded):
        index: int
        label: int | None = Field(description="its class (an index into classes), if known")

    class Interpolation(BaseModel):
        z: list[CodeOut] = Field(description="the codes from a to b (grids: quantized)")
        xy: list[Pair] = Field(description="their places on the map")
        frames: list[str] = Field(description="their decoded images, PNG data URLs")

    return {k: v for k, v in locals().items() if k[0].isupper() and k != "CodeOut"}


class Dim(BaseModel):
    index: int
    kl: float = Field(description="average KL over the test images, nats")
    active: bool = Field(description="carries information (KL above 0.01 nats)")


class Info(BaseModel):
    model: str
    dataset: str
    version: str
    latent_kind: str = Field(
        description="gaussian: a code is latent_dims numbers; discrete: a grid of code indices"
    )
    latent_dims: int = Field(description="a code's numbers (discrete: each code vector's)")
    grid: list[int] | None = Field(
        description="a discrete model's code grid [h, w]: a code is h*w indices, row by row"
    )
    codebook_size: int | None = Field(description="a discrete model's codes: indices 0..K-1")
    image_size: int
    channels: int
    images: int = Field(description="test images on the map")
    classes: list[str] | None
    conditional: bool = Field(description="the model decodes a class: requests name it")
    dims: list[Dim] = Field(description="every dimension, the largest KL first (discrete: none)")
    sliders: int = Field(description="how many of dims the page shows as sliders")
    map: Literal["code", "pca"] = Field(
        description="the code itself, or its PCA plane (discrete: of the encoder outputs)"
    )
    sampler: str = Field(description="where random samples come from")
    fitted_sampler: bool = Field(description="random samples come from a fitted prior")
    z_bound: float
    max_upload_bytes: int
    max_upload_pixels: int


class MapData(BaseModel):
    x: list[float]
    y: list[float]
    labels: list[int] | None = Field(description="the class of each point, -1 for none")


def _floats(t: torch.Tensor) -> list:
    return torch.nan_to_num(t.float(), posinf=Z_BOUND, neginf=-Z_BOUND).tolist()


def _info(ex: Explorer, sliders: int) -> Info:
    dims = [Dim(index=i, kl=float(ex.kl[i]), active=bool(ex.active[i])) for i in ex.order]
    sampler = "the prior N(0, I)"
    if ex.discrete:
        sampler = "uniform codes (no fitted prior: torch-vae fit-sampler --sampler transformer)"
    if ex.sampler is not None:
        describe = getattr(ex.sampler, "describe", None)
        sampler = describe() if callable(describe) else type(ex.sampler).__name__
    c = ex.model.config
    grid = list(ex.model.latent_shape) if ex.discrete else None
    return Info(
        model=ex.name, dataset=ex.dataset, version=__version__,
        latent_kind=ex.model.latent_kind, latent_dims=c.latent_dims, grid=grid,
        codebook_size=ex.model.codebook_size if ex.discrete else None,
        image_size=c.image_size, channels=c.in_channels, images=len(ex.images),
        classes=ex.classes, conditional=ex.conditional, dims=dims,
        sliders=min(sliders, len(dims)),
        map="code" if ex.center is None else "pca", sampler=sampler,
        fitted_sampler=ex.sampler is not None, z_bound=Z_BOUND,
        max_upload_bytes=MAX_UPLOAD_BYTES, max_upload_pixels=MAX_UPLOAD_PIXELS,
    )  # fmt: skip


def _listed(ex: Explorer, z: torch.Tensor) -> list:
    """Codes (B, ...) as the API's lists: d numbers, or a discrete model's h w indices."""
    return z.flatten(1).tolist() if ex.discrete else _floats(z)


def _placed(ex: Explorer, z: torch.Tensor) -> dict[str, Any]:
    """What an answer says of the code ``z`` (1, ...) besides its image: its place on the
    map, and a discrete model's usage of each of its codes."""
    extra = dict(xy=_floats(ex.to_map(z)[0]))
    if ex.discrete:
        extra["usage"] = [round(v, 6) for v in _floats(ex.usage(z)[0])]
    return extra


def _add_latent_routes(app: FastAPI, ex: Explorer, m: SimpleNamespace) -> None:
    """Codes in, images out: decode, a map point, a random sample, an interpolation (a
    conditional model's as the class each request names)."""

    def label(req: BaseModel) -> int | None:
        value = getattr(req, "class_", None)
        return None if value is None else ex.class_index(value)

    def coded(z: torch.Tensor, y: int | None) -> dict[str, Any]:
        return dict(z=_listed(ex, z)[0], image=ex.decode(z, y)[0], **_placed(ex, z))

    @app.post("/api/decode", response_model=m.Decoded, responses=_errors(400, 413, 415, 422))
    async def decode(req: m.DecodeRequest) -> Any:
        """Decode a latent code (a discrete model's code grid) to an image."""
        z = ex.code(req.z)
        return m.Decoded(image=ex.decode(z, label(req))[0], **_placed(ex, z))

    @app.post("/api/map/decode", response_model=m.Coded, responses=_errors(400, 413, 415, 422))
    async def map_decode(req: m.MapRequest) -> Any:
        """Decode the code of a point of the map (a discrete model's: the point's encoder
        output, quantized)."""
        return m.Coded(**coded(ex.from_map(torch.tensor([req.xy])), label(req)))

    @app.post("/api/sample", response_model=m.Sampled, responses=_errors(400, 413, 415, 422))
    async def sample(req: m.SampleRequest | None = None) -> Any:
        """A random code (the model's ex-post sampler, or the prior: a discrete model's
        uniform codes) and its image; a conditional model's of the class asked for, else of
        one drawn with the seed. The body is optional (none: a random seed)."""
        req = req if req is not None else m.SampleRequest()
        seed = req.seed if req.seed is not None else int(torch.randint(2**62, ()).item())
        # off the event loop: a fitted transformer's draw takes about half a second, which
        # would hold up every other request (another tab's slider) meanwhile
        z, y = await run_in_threadpool(ex.sample, seed, label(req))
        return m.Sampled(**coded(z, y), label=y)

    @app.post("/api/interpolate", response_model=m.Interpolation,
              responses=_errors(400, 413, 415, 422))  # fmt: skip
    async def interpolate(req: m.InterpolateRequest) -> Any:
        """Decoded codes from a to b (both included), on a line or a great circle (slerp); a
        discrete model's on the line between the grids' code vectors (each frame's code
        quantized)."""
        codes, frames = ex.interpolate(
            ex.code(req.a)[0], ex.code(req.b)[0], req.steps, req.method, label(req)
        )
        shown = _listed(ex, ex.quantize(codes) if ex.discrete else codes)
        return m.Interpolation(z=shown, xy=_floats(ex.to_map(codes)), frames=frames)


def _add_image_routes(app: FastAPI, ex: Explorer, m: SimpleNamespace) -> None:
    """Images in: a test image by index, an uploaded one."""
    from .state import data_url

    def encoded(image, y: int | None, **extra: Any) -> dict[str, Any]:
        z = ex.encode(image[None], y)
        return dict(
            z=_listed(ex, z)[0], image=ex.decode(z, y)[0], **_placed(ex, z),
            input=data_url(image), **extra,
        )  # fmt: skip

    @app.get("/api/images/{index}", response_model=m.TestImage, responses=_errors(422))
    async def test_image(index: Annotated[int, m.index]) -> Any:
        """A test image, its code, its reconstruction and its place on the map (a conditional
        model's encoded and decoded as the image's own class)."""
        label = None if ex.labels is None else int(ex.labels[index])
        y = label if ex.conditional else None
        return m.TestImage(**encoded(ex.images[index], y, index=index, label=label))

    takes = ("file", "class") if ex.conditional else ("file",)

    async def upload(request: Request, file: UploadFile, y: int | None) -> Any:
        extra = sorted(set((await request.form()).keys()) - set(takes))
        if extra:  # as the JSON endpoints refuse extra inputs
            raise UploadError(422, f"unknown form field(s) {', '.join(extra)}: this endpoint "
                              f"takes {' and '.join(takes)}")  # fmt: skip
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        c = ex.model.config
        image = await run_in_threadpool(read_upload, data, c.in_channels, c.image_size)
        return m.Encoded(**encoded(image, y))

    File_ = Annotated[UploadFile, File(description="an image file")]
    if ex.conditional:
        what = "the class to encode and decode it as: a name, or an index into classes"
        Class = Annotated[form_class(ex.classes), Form(alias="class", description=what)]

        async def encode(request: Request, file: File_, class_: Class) -> Any:
            return await upload(request, file, ex.class_index(class_))
    else:

        async def encode(request: Request, file: File_) -> Any:
            return await upload(request, file, None)

    encode.__doc__ = """Encode an uploaded image (at most 10 MiB and 20 megapixels; PNG, JPEG,
        GIF, BMP, WebP, TIFF or PPM; a conditional model's as the class ``class``): its code,
        reconstruction and place on the map."""
    app.add_api_route("/api/encode", encode, methods=["POST"], response_model=m.Encoded,
                      responses=_errors(400, 413, 415, 422))  # fmt: skip


def _add_page_routes(app: FastAPI, ex: Explorer, sliders: int) -> None:
    static = resources.files("torch_vae.explorer") / "static"
    files = {
        "/": ("explorer.html", "text/html; charset=utf-8"),
        "/explorer.js": ("explorer.js", "text/javascript; charset=utf-8"),
        "/explorer.css": ("explorer.css", "text/css; charset=utf-8"),
    }
    for route, (name, media) in files.items():
        body = (static / name).read_bytes()
        app.add_api_route(route, _static(body, media), methods=["GET", "HEAD"],
                          include_in_schema=False)  # fmt: skip
    info = _info(ex, sliders)
    map_data = MapData(
        x=[round(v, 5) for v in _floats(ex.xy[:, 0])],
        y=[round(v, 5) for v in _floats(ex.xy[:, 1])],
        labels=None if ex.labels is None else [int(v) for v in ex.labels],
    )

    @app.get("/api/info", response_model=Info)
    async def get_info() -> Any:
        """The model, the dataset and every latent dimension, the largest KL first."""
        return info

    @app.get("/api/map", response_model=MapData)
    async def get_map() -> Any:
        """The test images' places on the map, with their classes."""
        return map_data


def _static(body: bytes, media: str):
    async def page() -> Response:
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    return page


def _json_body_sent_as_other(errors: list[dict[str, Any]], content_type: str) -> bool:
    """Whether a JSON route's body failed as a whole because it came as another kind than
    JSON (text, a form): FastAPI then reads no JSON and says the body is not an object."""
    if content_type == "application/json" or content_type.endswith("+json"):
        return False
    # the whole body refused (an upload's missing file is at ("body", "file") instead)
    return any(tuple(e.get("loc", ())) == ("body",) for e in errors)


def _describe(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one line: where, and what is wrong."""
    parts = []
    for e in errors[:4]:
        if e.get("type") == "json_invalid":  # its loc is the character where parsing failed
            at = next((p for p in e.get("loc", ()) if isinstance(p, int)), None)
            where = f" at character {at}" if at is not None else ""
            parts.append(f"body: not valid JSON{where} ({e.get('ctx', {}).get('error', '')})")
            continue
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = e.get("msg", "invalid")
        if "Expected UploadFile" in msg:  # a form field where a file goes
            msg = "an image file, sent as a multipart file part with a filename, not text"
        parts.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 4} more)" if len(errors) > 4 else ""
    return "; ".join(parts) + more


def create_app(ex: Explorer, sliders: int = 16, hosts: Collection[str] | None = None) -> FastAPI:
    """The explorer's app: the page and the JSON API over ``ex``; ``sliders``: how many latent
    dimensions the page shows as sliders; ``hosts``: the names the server answers to (its
    ``Host`` header; None: any), see ``SameOrigin``."""
    app = FastAPI(
        title="torch-vae explorer", version=__version__,
        description=f"Explore {ex.name or 'a model'}: decode codes, map points and uploads.",
        docs_url=None, redoc_url=None,  # their pages load scripts from a CDN: offline, none
    )  # fmt: skip
    grid, codes = (ex.model.latent_shape, ex.model.codebook_size) if ex.discrete else (None, 0)
    m = api_models(ex.latent_dims, len(ex.images), ex.classes if ex.conditional else (), grid,
                   codes)  # fmt: skip
    _add_latent_routes(app, ex, m)
    _add_image_routes(app, ex, m)
    _add_page_routes(app, ex, sliders)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        sent = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if _json_body_sent_as_other(errors, sent):
            came = f"it came as {sent}" if sent else "it came without a Content-Type"
            detail = f"body: send it as JSON with Content-Type: application/json ({came})"
            return JSONResponse({"detail": detail}, status_code=415)
        return JSONResponse({"detail": _describe(errors)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        # FastAPI's own words where a body cannot be parsed at all (JSON nested past Python's
        # recursion limit, say): said as the other bodies that are not valid JSON are
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            detail = ("body: not valid JSON (nested too deeply, a number of more than 4,300 "
                      "digits, or not JSON text)")  # fmt: skip
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(UploadError)
    async def bad_upload(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(SameOrigin, hosts=hosts)  # outermost: before anything is read
    return app


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(bound: str) -> tuple[str, ...] | None:
    """The ``Host`` names an explorer listening on ``bound`` answers to: the loopback names for
    a loopback address (a DNS name that a page rebinds to 127.0.0.1 is refused); that address
    and this machine's names for another; any (None) for every interface (0.0.0.0, ::)."""
    if bound in ("0.0.0.0", "::", ""):
        return None
    if bound in LOOPBACK or bound.startswith("127."):
        return (*LOOPBACK, bound)
    return (*LOOPBACK, bound, socket.gethostname(), socket.getfqdn())


class SameOrigin:
    """ASGI middleware: a request whose ``Host`` is not one the server answers to gets 403 (a
    page that rebinds its own DNS name to this machine cannot read the API), and so does a
    request sent by a page of another origin (its ``Origin`` header is not this server's), so
    that no web page the user visits can post to the explorer."""

    def __init__(self, app, hosts: Collection[str] | None):
        self.app, self.hosts = app, None if hosts is None else {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if self.hosts is not None and name not in self.hosts:
            detail = f"this explorer does not answer to host {host!r}; open it by its address"
        elif "origin" in headers and headers["origin"] != f"http://{host}":
            # "null" too: a sandboxed frame's or a local file's page is not this server's
            detail = f"requests from other sites ({headers['origin']}) are refused"
        elif headers.get("sec-fetch-site") == "cross-site":
            detail = "requests from other sites are refused"
        else:
            return await self.app(scope, receive, send)
        await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request whose body passes ``limit`` bytes gets 413 before the app
    sees it (by its Content-Length, or by counting a chunked body as it arrives); a smaller
    body is read and handed on whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        detail = f"the request body is larger than {self.limit:,} bytes"
        if scope.get("path") == "/api/encode":
            detail += (f": an uploaded image may have {MAX_UPLOAD_BYTES:,} bytes "
                       f"({MAX_UPLOAD_BYTES / 2**20:.0f} MiB) at most")  # fmt: skip
        else:  # a JSON request: codes and settings, a few kilobytes
            detail += ", far more than any request of this route needs (a few kilobytes of JSON)"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port), or a one-line error."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise TorchVaeError(f"cannot listen on --host {host!r}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise TorchVaeError(
            f"cannot listen on {host}:{port} ({exc.strerror}); {_bind_fix(exc)}"
        ) from None
    return sock


def _bind_fix(exc: OSError) -> str:
    """What to change when the listening socket cannot be bound, by the reason."""
    if exc.errno == errno.EADDRNOTAVAIL:
        return ("--host must be an address of this machine: 127.0.0.1 (the default) for this "
                "machine only, 0.0.0.0 for every network it is on")  # fmt: skip
    if exc.errno == errno.EACCES:
        return "ports below 1024 need administrator rights: pick a higher --port, or --port 0"
    return "pick another --port, or --port 0 for a free one"


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app, sock: socket.socket, announce=None):
    """A uvicorn server of ``app`` on ``sock`` (``server.run(sockets=[sock])``) that calls
    ``announce(url)`` once it listens; ``server.should_exit = True`` stops it."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and announce is not None:
                announce(url_of(sock))

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    return Server(config)
