"""`edge-infer serve`: the reader over HTTP (edge_infer.serve_app) with uvicorn, and the drawing page at /.

Needs the serve extra (`pip install "edge-infer[serve]"`: Starlette, uvicorn, python-multipart); without it
the command says so in one line and exits 2. The model is loaded and the port bound before the first line
is printed, so a bad model or a port in use is one error line (exit 2), and `--port 0` picks a free port and
prints it. SIGTERM or Ctrl-C stops accepting connections, lets the requests in progress finish (up to
--timeout), and exits 0.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_infer.cli_errors import fail

if TYPE_CHECKING:
    from types import FrameType

    import click
    import uvicorn

PROG = "edge-infer serve"
SWITCH_INTERVAL_S = 0.0005
SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


@dataclass
class ServeOptions:
    """The command line's settings; their defaults are the options' defaults."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None
    int8: bool = False
    min_confidence: float = 0.0
    threads: int = 1
    max_body: str = "8M"
    max_images: int = 64
    timeout: float = 30.0
    max_queue: int = 64
    cors: tuple[str, ...] = ()
    token: str | None = None
    batching: bool = True
    batch_wait: float = 2.0  # milliseconds


def parse_size(text: str) -> int:
    """'8M' -> 8388608: bytes, with an optional K, M or G suffix (powers of 1024)."""
    number, unit = text.strip().upper().rstrip("IB"), ""
    if number and number[-1] in SIZE_UNITS:
        number, unit = number[:-1], number[-1]
    if not number.isdigit() or int(number) == 0:
        raise ValueError(f"{text!r} is not a size: give bytes, e.g. 65536, 512K or 8M")
    return int(number) * SIZE_UNITS[unit]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (IPv4 or IPv6, as the host says); OSError when that fails."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = found[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(options: ServeOptions) -> None:
    """Load the model, bind, and serve until SIGTERM or Ctrl-C."""
    import uvicorn

    from edge_infer.classifier import Classifier, ModelError
    from edge_infer.serve_app import ServeConfig, create_app

    if options.int8 and options.model:
        fail(PROG, "--int8 selects the bundled int8 model; with --model, pass your int8 file itself")
    try:
        max_body = parse_size(options.max_body)
    except ValueError as error:
        fail(PROG, f"--max-body: {error}")
    try:
        classifier = Classifier(
            options.model, int8=options.int8, threads=options.threads, min_confidence=options.min_confidence
        )
    except ModelError as error:
        from edge_infer.cli import model_problem

        fail(PROG, model_problem(options.model, error))
    config = ServeConfig(
        max_body=max_body,
        max_images=options.max_images,
        timeout_s=options.timeout,
        max_queue=options.max_queue,
        token=options.token or None,
        cors=options.cors,
        batching=options.batching,
        batch_wait_s=options.batch_wait / 1000,
    )
    app = create_app(config, classifier)
    try:
        sock = listen(options.host, options.port)
    except (OSError, UnicodeError) as error:
        fail(PROG, f"cannot listen on {options.host}:{options.port}: {getattr(error, 'strerror', None) or error}")
    host, port = sock.getsockname()[:2]
    if not is_loopback(options.host):
        sys.stderr.write(
            f"{PROG}: warning: listening on {options.host}, reachable from other machines"
            f"{'' if config.token else ' without a token (set --token)'}\n"
        )
    shown = f"[{host}]" if ":" in host else host
    print(f"{PROG}: listening on http://{shown}:{port}/ (the drawing page; the API under /v1)", flush=True)
    # The event loop and the model's thread take turns with the GIL; at the default switch interval (5 ms) a
    # thread that wants it back waits up to 5 ms while the other is busy, which under load is most of a
    # request's latency (32 clients: p50 68 -> 44 ms, requests/s 412 -> 668; benchmarks/serve.py).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    server = _uvicorn_server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=max(1, round(options.timeout)),
            server_header=False,
        )
    )
    server.run(sockets=[sock])
    print(f"{PROG}: stopped", flush=True)


def _uvicorn_server(config: uvicorn.Config) -> uvicorn.Server:
    import uvicorn

    class CleanExit(uvicorn.Server):
        """uvicorn's server, except that stopping on SIGTERM or Ctrl-C ends with exit code 0: uvicorn raises the
        signal again after its graceful shutdown, which would end the process by that signal."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return CleanExit(config)


def _command() -> click.Command:
    import click

    from edge_infer.cli_errors import OneLineErrors

    defaults = ServeOptions()

    @click.command(PROG, cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--host", default=defaults.host, show_default=True, help="Address to listen on (0.0.0.0: all).")
    @click.option(
        "--port", type=click.IntRange(0, 65535), default=defaults.port, show_default=True, help="0: any free port."
    )
    @click.option("--model", type=click.Path(dir_okay=False), default=None, help="An .onnx or .ort model.")
    @click.option("--int8", is_flag=True, help="Use the bundled int8 model.")
    @click.option(
        "--min-confidence",
        type=click.FloatRange(0.0, 1.0),
        default=defaults.min_confidence,
        metavar="P",
        help="Below this probability a digit is 'not sure' (requests may set their own).",
    )
    @click.option(
        "--threads", type=click.IntRange(1), default=defaults.threads, show_default=True, help="onnxruntime threads."
    )
    @click.option(
        "--max-body", default=defaults.max_body, show_default=True, help="Largest request body (bytes, K, M)."
    )
    @click.option(
        "--max-images", type=click.IntRange(1), default=defaults.max_images, show_default=True, help="Per request."
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(0.1),
        default=defaults.timeout,
        show_default=True,
        help="Seconds a request may take (body and answer); also the grace period at shutdown.",
    )
    @click.option(
        "--max-queue",
        type=click.IntRange(1),
        default=defaults.max_queue,
        show_default=True,
        help="Requests in progress at once; more are answered 503.",
    )
    @click.option("--cors", multiple=True, metavar="ORIGIN", help="Let pages from ORIGIN call the API (repeatable).")
    @click.option(
        "--token", envvar="EDGE_INFER_TOKEN", help="Require 'Authorization: Bearer TOKEN' (env EDGE_INFER_TOKEN)."
    )
    @click.option(
        "--batching/--no-batching",
        default=defaults.batching,
        show_default=True,
        help="Requests that arrive together share one model run.",
    )
    @click.option(
        "--batch-wait",
        type=click.FloatRange(0.0, 100.0),
        default=defaults.batch_wait,
        show_default=True,
        metavar="MS",
        help="Longest wait of a run for requests still decoding.",
    )
    def command(**settings: Any) -> None:
        """Serve the digit reader over HTTP: POST /v1/digits, POST /v1/numbers, GET /v1/model, GET /healthz,
        /openapi.json, and a drawing page at /. Loopback only unless --host says otherwise."""
        serve(ServeOptions(**settings))

    return command


def main(args: list[str]) -> None:
    """`edge-infer serve ARGS` (edge_infer.cli dispatches here)."""
    try:
        import python_multipart  # noqa: F401  # (Starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        missing = error.name or str(error)
        fail(PROG, f'the server needs the serve extra ({missing} is not installed): pip install "edge-infer[serve]"')
    _command().main(args, prog_name=PROG)
