# Sourced by scripts/demo and scripts/test: Debian packages and the project venv.
# Installs only what is missing; uses apt-get as root, sudo otherwise, and says what to
# install by hand when neither is possible.

VENV="${VOXGATE_VENV:-.venv}"

need_debs() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo="sudo"
    else
      echo "Please install these Debian packages first: ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo ">> apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

venv_stamp() {
  # What an install covered: the extras and the project's packaging files. A venv stamped
  # with it is not installed again, so a second `scripts/demo` works without a network
  # (pip re-resolved setuptools and every dependency from the index on each run).
  echo "$1 $(cat pyproject.toml setup.py 2>/dev/null | sha256sum | cut -c1-16)"
}

need_venv() {
  # $1: the pip extras to install, e.g. "mic,dev"
  if [ ! -x "$VENV/bin/python" ]; then
    echo ">> python3 -m venv $VENV"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.voxgate-install"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$(venv_stamp "$1")" ] \
      && "$VENV/bin/python" -c 'import voxgate' 2>/dev/null; then
    return 0
  fi
  rm -f "$stamp"
  echo ">> pip install -e .[$1]"
  # setuptools >= 77 reads pyproject's SPDX license (venvs may bundle an older one).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip \
    "setuptools>=77" wheel >/dev/null \
    && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$1]" \
    && venv_stamp "$1" > "$stamp"  # only once both went through
}

BASE_DEBS=(python3 python3-venv python3-dev gcc libsndfile1 portaudio19-dev
           libasound2-plugins alsa-utils espeak-ng)
