"""The local admin HTTP API (Flask): token-authenticated, JSON in and out, bounded uploads.

Routes are described in docs/api/openapi.yaml (a test checks every route appears there).
"""

from __future__ import annotations

import hmac
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from voxgate import __version__
from voxgate.api.decisions import recent_events
from voxgate.api.users import EnrollRefused, UnknownUser, UserAdmin, UserExists
from voxgate.cohort import CohortError
from voxgate.config import ConfigError, VoxgateConfig, parse_config
from voxgate.embedding.errors import ModelError
from voxgate.httplimits import REJECTED_LOG_BURST, REJECTED_LOG_EVERY_S
from voxgate.logs import LogLimit
from voxgate.voiceprints import BadName, KeyMissing, StoreError, normalize_name

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
# The largest config POST /config/check reads. A config is a few kB; the upload limit
# (api.max_upload_mb, 10 MB) let one request keep a core busy for minutes in the YAML parser
# (300 kB of values: 18 s on the x86 test host), the core the door's audio needs.
MAX_CONFIG_BYTES = 64 * 1024
MIN_TOKEN_LEN = 16
DEFAULT_EVENTS = "decision"


class ApiError(Exception):
    """An API that must not start (no token, short token); str() is meant for the user."""


def load_token(cfg: VoxgateConfig) -> bytes:
    from voxgate.config.secrets import SecretError, read_secret

    try:
        token = read_secret("api-token", cfg.api.token_file)
    except SecretError as exc:
        raise ApiError(f"admin API: {exc}") from None
    assert token is not None
    if len(token) < MIN_TOKEN_LEN:
        raise ApiError(
            f"admin API: the token is {len(token)} characters; use at least {MIN_TOKEN_LEN} "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def audit_path(cfg: VoxgateConfig) -> Path:
    return Path(cfg.audit.path or Path(cfg.data_dir) / "audit.jsonl")


# The longest request text (path, method, message) a log line quotes whole.
LOG_TEXT_MAX = 200


def _printable(text: str, limit: int = LOG_TEXT_MAX) -> str:
    """Text from the request for a log line: a line break in it (a path arrives
    percent-decoded, an upload's file name too) would start a forged line in the text log
    (the journal), and a terminal escape in it would act on the terminal of whoever reads
    the log, so control characters are shown escaped. Past `limit` characters it is cut:
    anyone reaching the port, token or not, sent 60 kB paths that were logged whole, twice."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def _path() -> str:
    return _printable(request.path)


def _method() -> str:
    # Any token the client sends (an escape sequence too); ours are short.
    return _printable(request.method, 16)


def _slash_in_name() -> bool:
    """The request's undecoded path has an encoded / in a user name segment."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
    head, sep, rest = raw.partition(f"{PREFIX}/users/")
    return bool(sep) and not head and "%2f" in rest.split("?")[0].lower()


def _error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": code, "message": message, **extra}), status


def create_app(
    cfg: VoxgateConfig,
    admin: UserAdmin,
    token: bytes,
    *,
    audit_file: Path | None = None,
    clock: Callable[[], float] = time.time,
    audit_event: Callable[..., Any] | None = None,
    current: Callable[[], VoxgateConfig] | None = None,
) -> Flask:
    """The Flask app. `token` is the bearer token every request must carry. `current()`
    gives the running config for GET /config (the daemon's changes at a reload); `cfg`
    when not given.

    `audit_event(event, **fields)` (e.g. the daemon's AuditLog.append) records every change
    made through the API: admin_enroll, admin_erase, admin_export.
    """
    if len(token) < MIN_TOKEN_LEN:
        raise ApiError(f"admin API token must be at least {MIN_TOKEN_LEN} characters")
    app = Flask("voxgate.api")
    app.config["MAX_CONTENT_LENGTH"] = int(cfg.api.max_upload_mb * 1024 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    started = clock()
    audit = audit_file or audit_path(cfg)
    # Requests without the right token need nothing but the port, and made two log lines
    # each (about 1300 a second over one keep-alive connection): past journald's rate limit
    # in seconds, which then dropped the daemon's own lines with them.
    rejected_log = LogLimit(
        REJECTED_LOG_BURST,
        REJECTED_LOG_EVERY_S,
        what="API requests without the right token",
        logger=log,
    )

    @app.before_request
    def _authenticate() -> tuple[Response, int] | None:
        g.t0 = time.monotonic()
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        # WSGI hands headers over decoded as Latin-1: encoding back gives the bytes sent (a
        # UTF-8 token's bytes included; .encode() made those never match).
        sent = given.strip().encode("latin-1", "replace")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(sent, token)
        if not ok:
            g.quiet = not rejected_log.allow()  # nor its access line below
            if not g.quiet:
                log.warning(
                    "API: rejected %s %s from %s (bad or missing token)",
                    _method(),
                    _path(),
                    request.remote_addr,
                )
            resp, status = _error(401, "unauthorized", "missing or wrong bearer token")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="voxgate"'
            return resp, status
        return None

    @app.after_request
    def _log(resp: Response) -> Response:
        if request.method == "OPTIONS" and resp.status_code == 200 and not resp.data:
            # Flask's automatic answer is an empty text/html body; say the same in JSON.
            allow = resp.headers.get("Allow", "")
            resp = jsonify({"allow": [m.strip() for m in allow.split(",") if m.strip()]})
            resp.headers["Allow"] = allow
        if getattr(g, "quiet", False):
            return resp
        t0 = getattr(g, "t0", None)
        ms = (time.monotonic() - t0) * 1000 if t0 is not None else 0.0
        log.info("API %s %s -> %d (%.0f ms)", _method(), _path(), resp.status_code, ms)
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = (exc.name or "error").lower().replace(" ", "_")
        if isinstance(exc, ClientDisconnected):
            # The server stopped reading (httplimits: the request's deadline, its silence
            # timeout) or the client went away: werkzeug's text blamed "the browser (or proxy)".
            log.warning("API: %s %s: the request body was cut off", _method(), _path())
            msg = (
                "the request body did not arrive whole in time (send it faster, or check "
                "api.max_upload_mb: the deadline grows with it)"
            )
            return _error(408, "request_timeout", msg)
        if isinstance(exc, _ConfigTooLarge):
            msg = f"a config is at most {MAX_CONFIG_BYTES // 1024} kB"
        elif exc.code == 413:
            msg = f"request body larger than {cfg.api.max_upload_mb:g} MB (api.max_upload_mb)"
        elif exc.code == 404 and _slash_in_name():
            # The server decodes %2F before routing, so 'a%2Fb' matched no route: a bare
            # "URL not found" for what is a name no voxgate user can have.
            msg = "a user name cannot contain / (%2F) in the API: voxgate enroll refuses it"
            return _error(400, "bad_request", msg)
        else:
            msg = exc.description or exc.name
        resp, status = _error(exc.code or 500, code, msg)
        for name, value in exc.get_headers():  # e.g. the Allow list a 405 must carry
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("API: %s %s failed", _method(), _path())
        return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")

    def _audit(event: str, **fields: Any) -> None:
        if audit_event is None:
            return
        try:
            audit_event(event, via="api", remote=request.remote_addr, **fields)
        except Exception:
            log.exception("API: could not write audit event %s", event)

    def _name(raw: str, new: bool = False) -> str:
        # Werkzeug turns path bytes that are not UTF-8 into U+FFFD: two different names
        # ('Ren%E9', 'Ren%E8' in Latin-1) would become one, and erase the wrong person.
        if "\ufffd" in raw:
            raise _BadRequest("the user name must be UTF-8, percent-encoded")
        try:
            name = normalize_name(raw)
        except StoreError as exc:
            raise _BadRequest(str(exc)) from None
        # A new name with a backslash was enrolled here while voxgate enroll and the MQTT
        # commands refuse it (MQTT could then never erase it). Erase and export still take
        # one, so a user enrolled before the rule can be removed.
        if new and "\\" in name:
            raise _BadRequest(
                "user name must not contain / or \\ (voxgate enroll and the MQTT commands "
                "refuse them too)"
            )
        return name

    @app.errorhandler(_BadRequest)
    def _bad_request(exc: _BadRequest) -> tuple[Response, int]:
        log.warning("API: bad request %s %s: %s", _method(), _path(), _printable(str(exc), 1000))
        return _error(400, "bad_request", str(exc))

    @app.errorhandler(StoreError)
    def _store_error(exc: StoreError) -> tuple[Response, int]:
        log.error("API: voiceprint store: %s", exc)
        return _error(503, "store_unavailable", str(exc))

    @app.errorhandler(KeyMissing)
    def _no_key(exc: KeyMissing) -> tuple[Response, int]:
        # `voxgate api` run without the key, as its start said: not logged as an error.
        return _error(
            503, "voiceprint_key_missing", f"this endpoint needs the voiceprint key: {exc}"
        )

    # -- routes ---------------------------------------------------------------------------

    @app.get(f"{PREFIX}/health")
    def health() -> tuple[Response, int]:
        body: dict[str, Any] = {
            "status": "ok",
            "version": __version__,
            "device_id": cfg.device_id,
            "uptime_s": round(clock() - started, 1),
        }
        try:
            body["users"] = len(admin.store.users())
        except KeyMissing as exc:  # run so on purpose: health, decisions and config work
            body["voiceprints"] = f"not opened: {exc}"
        except StoreError as exc:
            body.update(status="degraded", problem=str(exc))
            return jsonify(body), 503
        return jsonify(body), 200

    @app.get(f"{PREFIX}/users")
    def list_users() -> Response:
        return jsonify({"users": admin.users()})

    @app.post(f"{PREFIX}/users/<name>")
    def enroll(name: str) -> tuple[Response, int]:
        name = _name(name, new=True)
        admin.need_store()  # without the voiceprint key: 503 before the upload is looked at
        if request.mimetype != "multipart/form-data":
            raise _BadRequest("send multipart/form-data with one or more 'take' audio files")
        files = request.files.getlist("take")
        if not files:
            raise _BadRequest("no 'take' files in the upload")
        if len(files) > cfg.api.max_takes:
            raise _BadRequest(f"{len(files)} takes; at most {cfg.api.max_takes} (api.max_takes)")
        replace = request.form.get("replace", "false").lower() in {"1", "true", "yes"}
        prompts = request.form.get("prompts", "").replace(",", " ").split() or None
        # isdigit() alone also takes '²' or '١' (other scripts' digits): stored as templates
        # of "digits" no challenge ever asks for.
        if prompts is not None and (
            len(prompts) != len(files)
            or not all(p.isascii() and p.isdigit() and len(p) <= 32 for p in prompts)
        ):
            raise _BadRequest("'prompts' must hold one digit string per take, in order")
        takes = _read_takes(files)
        try:
            result = admin.enroll(name, takes, replace=replace, prompts=prompts)
        except UserExists as exc:
            return _error(409, "conflict", str(exc))
        except BadName as exc:  # a name no new user may have: the request's fault
            raise _BadRequest(str(exc)) from None
        except EnrollRefused as exc:
            _audit("admin_enroll", user=name, ok=False, problems=exc.report["problems"])
            return _error(422, "enrollment_refused", str(exc), report=exc.report)
        except CohortError as exc:  # speaker.cohort set but unusable: the device's fault
            log.error("API: enrollment of %s: speaker.cohort: %s", name, exc)
            return _error(503, "cohort_unavailable", str(exc))
        except ModelError as exc:  # speaker.model: loaded at the first enrollment here
            log.error("API: enrollment of %s: cannot load the speaker model: %s", name, exc)
            return _error(503, "model_unavailable", f"cannot load the speaker model: {exc}")
        # The users the new voiceprint matched (enrollment.same_voice), when there are any.
        alike = {"same_voice_as": result["same_voice_as"]} if result["same_voice_as"] else {}
        _audit("admin_enroll", user=result["name"], ok=True, version=result["version"], **alike)
        return jsonify(result), 201

    @app.delete(f"{PREFIX}/users/<name>")
    def erase(name: str) -> tuple[Response, int]:
        name = _name(name)
        try:
            name = admin.erase(name)  # as enrolled, not as this request spelled it
        except UnknownUser as exc:
            return _error(404, "not_found", str(exc))
        _audit("admin_erase", user=name)
        return jsonify({"erased": name}), 200

    @app.get(f"{PREFIX}/users/<name>/export")
    def export(name: str) -> tuple[Response, int]:
        name = _name(name)
        try:
            doc = admin.export(name)
        except UnknownUser as exc:
            return _error(404, "not_found", str(exc))
        from voxgate.erasure import held_about

        doc["also_held"] = held_about(current() if current is not None else cfg, doc["name"])
        _audit("admin_export", user=doc["name"])
        return jsonify(doc), 200

    @app.get(f"{PREFIX}/decisions")
    def decisions() -> Response | tuple[Response, int]:
        # The default too stays within the configured bound (it may be set under 50).
        bound = cfg.api.decisions_limit
        limit = _query_int("limit", min(50, bound), 1, bound)
        wanted = request.args.get("event", DEFAULT_EVENTS)
        events = None if wanted == "*" else {e for e in wanted.split(",") if e}
        try:
            found = recent_events(audit, limit, events)
        except OSError as exc:  # e.g. a folder or an unreadable file where the log should be
            log.error("API: cannot read the audit log %s: %s", audit, exc)
            return _error(503, "audit_unavailable", f"cannot read the audit log ({exc.strerror})")
        return jsonify(
            {
                "events": found.events,
                "skipped_lines": found.skipped_lines,
                "complete": found.complete,
            }
        )

    @app.get(f"{PREFIX}/config")
    def running_config() -> Response:
        # Secrets are never in the config (only the paths of their files).
        return jsonify((current() if current is not None else cfg).model_dump(mode="json"))

    @app.post(f"{PREFIX}/config/check")
    def config_check() -> tuple[Response, int]:
        if (request.content_length or 0) > MAX_CONFIG_BYTES:
            raise _ConfigTooLarge()
        # A chunked body (no length) is read one byte past the limit to see it is over.
        data = request.stream.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise _ConfigTooLarge()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _BadRequest("the config must be UTF-8 text") from None
        try:
            parse_config(text, "upload")
        except ConfigError as exc:
            return jsonify({"valid": False, "problems": exc.problems}), 200
        return jsonify({"valid": True, "problems": []}), 200

    return app


class _BadRequest(Exception):
    pass


class _ConfigTooLarge(RequestEntityTooLarge):
    pass


def _query_int(name: str, default: int, lo: int, hi: int) -> int:
    """A query integer in ASCII digits: int() alone also read '٣' (3), ' 5', '+5' and '1_0'
    (and raised on more than 4300 digits)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or not lo <= int(raw) <= hi:
        raise _BadRequest(f"{name} must be a whole number {lo}..{hi} in digits 0-9")
    return int(raw)


def upload_folder() -> str | None:
    """Where uploaded takes wait to be decoded: a RAM file system when there is one. The
    takes are a person's voice in the clear; in /tmp on the SD card, their blocks stay on
    the card after the file is deleted. None: the default temporary folder."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return None
    for point, fstype in mounts:
        if point == "/dev/shm" and fstype == "tmpfs" and os.access(point, os.W_OK | os.X_OK):
            return point
    return None


def _read_takes(files: list[Any]) -> list[Any]:
    """Decode every uploaded take to 16 kHz mono int16, or explain which one is unusable."""
    from voxgate.audio import AudioError, AudioIncomplete
    from voxgate.audio.file import MAX_TAKE_S, read_audio

    takes = []
    with tempfile.TemporaryDirectory(prefix="voxgate-upload-", dir=upload_folder()) as tmp:
        for i, f in enumerate(files, 1):
            label = f"take {i} ({f.filename or 'unnamed'})"
            path = Path(tmp) / f"take-{i}"
            f.save(path)
            if path.stat().st_size == 0:
                raise _BadRequest(f"{label}: empty file")
            try:
                # Uploads decode inside the daemon. complete: half a take makes no voiceprint.
                pcm = read_audio(path, max_s=MAX_TAKE_S, complete=True)
            except AudioIncomplete as exc:  # its message says what to do; the format is fine
                raise _BadRequest(str(exc).replace(str(path), label)) from None
            except AudioError as exc:
                msg = str(exc).replace(str(path), label)
                raise _BadRequest(f"{msg}; send WAV or FLAC") from None
            if len(pcm) == 0:
                raise _BadRequest(f"{label}: no audio samples")
            takes.append(pcm)
    return takes
