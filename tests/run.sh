#!/usr/bin/env bash
# THE test command of parkguard: installs what the tests need when it is missing (Debian
# packages, a Python venv with pinned pymodbus), then runs every test of the workspace
# against real servers that the tests start themselves on free ports.
#
#   tests/run.sh                 # everything
#   tests/run.sh -p parkguard-rules   # extra arguments go to `cargo test`
#
# Idempotent: a second run installs nothing and goes straight to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\033[1m[run.sh]\033[0m %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------
need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have mosquitto || need_pkgs+=(mosquitto)
have mosquitto_pub || need_pkgs+=(mosquitto-clients)
have socat || need_pkgs+=(socat)
have victoria-metrics || need_pkgs+=(victoria-metrics)
have chromium || need_pkgs+=(chromium)
have chromedriver || need_pkgs+=(chromium-driver)
have openssl || need_pkgs+=(openssl)
have curl || need_pkgs+=(curl)
# A CJK font, or Chinese text renders as empty boxes in the console screenshots.
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need_pkgs+=(fonts-wqy-microhei)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_pkgs[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian starts a system mosquitto on 1883 after install; the tests never use it (each test
# starts its own on a free port), so leave it alone.

# --- Python venv with pinned pymodbus (the independent Modbus peer) ---------------------
PYMODBUS_VERSION=3.16.1
venv="$root/.venv"
if ! "$venv/bin/python3" -c "import pymodbus, serial, sys; sys.exit(0 if pymodbus.__version__ == '$PYMODBUS_VERSION' else 1)" >/dev/null 2>&1; then
  say "creating Python venv with pymodbus $PYMODBUS_VERSION in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "pymodbus[serial]==$PYMODBUS_VERSION"
fi
export PARKGUARD_VENV="$venv"

# --- promtool (daemon/tests/dashboards.rs runs the alert rules' unit tests with it) ------
# From Debian's `prometheus` package, unpacked into .tools/ (installing the package would
# also start a Prometheus server on :9090).
promtool="$root/.tools/prometheus/usr/bin/promtool"
if ! have promtool && [ ! -x "$promtool" ]; then
  say "unpacking promtool from the Debian prometheus package into .tools/"
  mkdir -p "$root/.tools/prometheus"
  ( cd "$root/.tools" && rm -f prometheus_*.deb && apt-get download -q prometheus >/dev/null 2>&1 \
      && dpkg -x prometheus_*.deb prometheus && rm -f prometheus_*.deb )
fi
if [ -x "$promtool" ]; then export PARKGUARD_PROMTOOL="$promtool"; fi

# --- cargo-deb (daemon/tests/deploy.rs builds and installs the Debian package) ----------
# Only when missing: 3–6 minutes of build on 2 cores, once per machine.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version >/dev/null 2>&1; then
  say "installing cargo-deb $CARGO_DEB_VERSION from crates.io"
  cargo install -q --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi

# --- the tests -------------------------------------------------------------------------
# A one-off build gains nothing from incremental caches; they doubled the size of target/.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
avail_kb=$(df -Pk . | awk 'NR==2 {print $4}')
say "free disk here: $((avail_kb / 1024)) MiB (a full test build needs about 6 GiB)"
say "cargo test --workspace $*"
exec cargo test --workspace "$@"
