"""Secrets come from the environment, a systemd credential, or a 0600 file, in that order."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


class SecretError(Exception):
    pass


class PartialWrite(OSError):
    """write_new_secret created the file but could not fill it; the file was removed."""


def write_new_secret(path: Path, text: str) -> None:
    """Create `path` holding `text`, mode 0600, never over an existing key (OSError from
    the create as raised, e.g. FileExistsError). An empty regular file is the placeholder
    the systemd unit needs for a credential not in use (docs/service.md): it holds no key,
    so it is replaced. A file that could not be written completely is removed, since an
    empty key file would block the next try: PartialWrite."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        st = os.lstat(path)
        if not (stat.S_ISREG(st.st_mode) and st.st_size == 0):
            raise
        os.unlink(path)
        fd = os.open(path, flags, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            # On disk before anything is sealed or signed with it: after a power cut the
            # file could otherwise be empty (delayed allocation) and all it sealed unreadable.
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        Path(path).unlink(missing_ok=True)
        raise PartialWrite(exc.errno, exc.strerror, str(path)) from exc
    os.chmod(path, 0o600)
    try:  # and its name in the folder
        dir_fd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:  # some file systems cannot sync a folder: the key is written
        log.warning("%s: could not sync its folder (%s)", path, exc.strerror)


class SecretUnreadable(SecretError):
    """The secret's file is there but cannot be read (a directory, no permission)."""


def _unreadable(name: str, path: Path, exc: OSError) -> SecretUnreadable:
    return SecretUnreadable(f"secret '{name}': cannot read {path} ({exc.strerror})")


def override_source(name: str) -> str | None:
    """Where read_secret(name, file) takes the secret from ahead of `file`: the variable or
    the systemd credential, when set and not empty (an empty one counts as not set, as in
    read_secret); None when `file` would be read."""
    env_name = "VOXGATE_" + name.upper().replace("-", "_")
    if os.environ.get(env_name, "").strip():
        return f"${env_name}"
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / name
        try:
            with open(path, "rb") as f:  # bounded, as read_secret reads it
                if f.read(MAX_SECRET_BYTES + 1).strip():
                    return f"the credential {name} ({path})"
        except FileNotFoundError:
            pass
        except OSError:  # read_secret stops there with the error
            return f"the credential {name} ({path})"
    return None


# Keys and passwords are at most a few hundred bytes. A key_file naming /dev/zero or
# /dev/urandom (meant for `head -c 32 /dev/urandom > FILE`) was read without end at the start.
# Not limited to regular files: `--key-file <(pass show audit-key)` is a pipe.
MAX_SECRET_BYTES = 64 * 1024


def read_secret(
    name: str, file: Path | None = None, *, required: bool = True, strip: bool = True
) -> bytes | None:
    """Return secret `name` (e.g. 'mqtt-password').

    Looks at $VOXGATE_<NAME> (dashes become underscores), then
    $CREDENTIALS_DIRECTORY/<name> (systemd LoadCredential=), then `file`; an empty variable
    or file counts as not set. Surrounding
    whitespace is dropped; with strip=False a file's bytes come as stored, for keys that may
    be 32 raw bytes (about 1 in 20 random keys starts or ends with a whitespace byte).
    """
    env_name = "VOXGATE_" + name.upper().replace("-", "_")
    empty: list[str] = []
    if env_name in os.environ:
        if os.environ[env_name].strip():
            return os.environ[env_name].encode()
        # Like an empty credential: not set. As a key, b"" would be one everyone knows.
        empty.append(f"${env_name}")
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates: list[Path] = []
    if cred_dir:
        candidates.append(Path(cred_dir) / name)
    if file is not None:
        candidates.append(Path(file))
    for path in candidates:
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:  # e.g. a credentials folder this user may not enter
            raise SecretUnreadable(
                f"secret '{name}': cannot read {path} ({exc.strerror})"
            ) from None
        # A file's mode only: "chmod 600 it" said of /dev/zero (key_file: /dev/zero, refused
        # below) would break the system for everyone.
        if mode & (stat.S_IRWXG | stat.S_IRWXO) and stat.S_ISREG(mode):
            log.warning(
                "secret file %s is readable by others (mode %o); chmod 600 it",
                path,
                stat.S_IMODE(mode),
            )
        try:
            with open(path, "rb") as f:
                value = f.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:  # a directory, no permission: say which file
            raise SecretUnreadable(
                f"secret '{name}': cannot read {path} ({exc.strerror})"
            ) from None
        if len(value) > MAX_SECRET_BYTES:
            raise SecretUnreadable(
                f"secret '{name}': {path} holds more than {MAX_SECRET_BYTES // 1024} kB: not a "
                "key or password (the wrong file, or a device such as /dev/zero?)"
            )
        if value.strip():
            return value.strip() if strip else value
        # An empty file is a placeholder (the systemd unit loads every credential a door
        # may use; systemd refuses to start when a listed file is missing): not set.
        empty.append(str(path))
    if required:
        where = [f"${env_name}"] + [str(c) for c in candidates]
        found = f"; empty: {', '.join(empty)}" if empty else ""
        raise SecretError(f"secret '{name}' not found (looked at: {', '.join(where)}{found})")
    return None
