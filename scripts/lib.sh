# Shared by the scripts: install and run the test server and the shell
# client. Source it; do not run it.
#
# The test server is SecantusDB (a MongoDB-compatible server on the real wire
# protocol), run as a separate process only. Production uses real MongoDB.

MONGOQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MONGOQ_TOOLS="${MONGOQ_TOOLS:-$MONGOQ_ROOT/.tools}"
SECANTUS_VERSION="0.5.3-beta.196"
SECANTUS_PY_VERSION="0.7.0b3"
# Which test server: rs (secantusd-rs, built from crates.io) or py
# (secantusd-py, a binary wheel from PyPI). Both speak MongoDB's wire
# protocol on WiredTiger storage; they are independent implementations.
MONGOQ_TEST_SERVER="${MONGOQ_TEST_SERVER:-rs}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

# Puts the chosen test server on PATH (installing it if missing) and sets
# SERVER_BIN; tests that start servers of their own use MONGOQ_SERVER_BIN.
ensure_server() {
  case "$MONGOQ_TEST_SERVER" in
    rs) ensure_server_rs; SERVER_BIN=secantusd-rs ;;
    py) ensure_server_py; SERVER_BIN=secantusd-py ;;
    *) log "MONGOQ_TEST_SERVER must be rs or py, not '$MONGOQ_TEST_SERVER'"; return 1 ;;
  esac
  export MONGOQ_SERVER_BIN="$SERVER_BIN" MONGOQ_TEST_SERVER
}

# secantusd-py from its wheel, in a virtual environment of its own under
# $MONGOQ_TOOLS (never the system Python). Seconds.
ensure_server_py() {
  local venv="$MONGOQ_TOOLS/secantus-py"
  export PATH="$venv/bin:$PATH"
  if command -v secantusd-py >/dev/null 2>&1; then return 0; fi
  log "installing the test server (secantusd-py $SECANTUS_PY_VERSION, a wheel, into $venv; seconds)"
  mkdir -p "$MONGOQ_TOOLS"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "SecantusDB==$SECANTUS_PY_VERSION"
  # py-spy (a wheel) lets scripts/test.sh show the server's threads if the
  # suite hangs; the tests do not need it.
  "$venv/bin/pip" install --quiet py-spy >/dev/null 2>&1 ||
    log "py-spy did not install: a hung suite will not show the server's threads"
}

# Which server a newcomer's demo should use: one already installed, else
# the wheel (seconds, where building the Rust server takes minutes).
pick_installed_server() {
  if [ -n "${MONGOQ_TEST_SERVER_SET:-}" ]; then return 0; fi
  if command -v secantusd-rs >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/secantusd-rs" ]; then
    MONGOQ_TEST_SERVER=rs
  else
    MONGOQ_TEST_SERVER=py
  fi
}

# secantusd-rs on PATH, building it once (about 5 minutes) if missing.
ensure_server_rs() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if command -v secantusd-rs >/dev/null 2>&1; then return 0; fi
  log "installing the test server (secantusd-rs $SECANTUS_VERSION; about 5 minutes, once)"
  if ! command -v cmake >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq cmake >/dev/null
  fi
  cargo install secantus-mdb --version "$SECANTUS_VERSION" --ignore-rust-version --quiet
}

# Puts Debian's faketime on PATH (the clock-skew tests give workers a wrong
# wall clock with it), installing it with apt when missing.
ensure_faketime() {
  if command -v faketime >/dev/null 2>&1; then return 0; fi
  log "installing faketime for the clock-skew tests"
  apt-get install -y -qq faketime >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq faketime >/dev/null; }
}

# Puts mongosh on PATH, installing it from npm into $MONGOQ_TOOLS if missing.
ensure_mongosh() {
  if command -v mongosh >/dev/null 2>&1; then return 0; fi
  export PATH="$MONGOQ_TOOLS/node_modules/.bin:$PATH"
  if command -v mongosh >/dev/null 2>&1; then return 0; fi
  command -v npm >/dev/null 2>&1 || { log "npm is needed to install mongosh; install Node.js"; return 1; }
  log "installing mongosh into $MONGOQ_TOOLS"
  mkdir -p "$MONGOQ_TOOLS"
  npm install --prefix "$MONGOQ_TOOLS" --no-fund --no-audit --loglevel=error mongosh >/dev/null
  command -v mongosh >/dev/null 2>&1
}

# Finds headless Chromium for the dashboard's browser test, installing
# Debian's `chromium` when missing and apt can. Exports MONGOQ_CHROMIUM, or
# MONGOQ_SKIP_BROWSER with the reason it cannot be had (the test then says
# so loudly instead of passing quietly).
ensure_chromium() {
  local found
  for name in chromium chromium-browser google-chrome; do
    if found="$(command -v "$name")"; then export MONGOQ_CHROMIUM="$found"; return 0; fi
  done
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing chromium for the dashboard's browser test"
    if { apt-get install -y -qq chromium >/dev/null 2>&1 ||
         { apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1; }; } &&
       found="$(command -v chromium)"; then
      export MONGOQ_CHROMIUM="$found"
      return 0
    fi
    export MONGOQ_SKIP_BROWSER="apt-get could not install chromium"
  else
    export MONGOQ_SKIP_BROWSER="no chromium on PATH and no root apt-get to install Debian's chromium package"
  fi
  log "browser test will be skipped: $MONGOQ_SKIP_BROWSER"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts the test server on a free port with a fresh data directory.
# Sets SERVER_PORT, SERVER_DIR, SERVER_PID, SERVER_URI. Stop it with stop_server.
start_server() {
  SERVER_PORT="${1:-$(free_port)}"
  SERVER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mongoq-server.XXXXXX")"
  "${SERVER_BIN:-secantusd-rs}" --port "$SERVER_PORT" --storage-path "$SERVER_DIR/data" >"$SERVER_DIR/server.log" 2>&1 &
  SERVER_PID=$!
  SERVER_URI="mongodb://127.0.0.1:$SERVER_PORT"
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$SERVER_PORT") 2>/dev/null; then
      log "test server ${SERVER_BIN:-secantusd-rs} up at $SERVER_URI (pid $SERVER_PID, data $SERVER_DIR)"
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  log "the test server did not start; its log:"
  cat "$SERVER_DIR/server.log" >&2
  return 1
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
  if [ -n "${SERVER_DIR:-}" ]; then
    rm -rf "$SERVER_DIR"
    SERVER_DIR=""
  fi
}

# A Python with pymongo (and mypy, which checks the package's types) for the
# Python client's tests and bench row, in a virtual environment of its own
# under $MONGOQ_TOOLS (never the system Python; seconds). Exports
# MONGOQ_PYTHON. The tests put clients/python on PYTHONPATH, so they run the
# checkout's client, not an installed one.
PYMONGO_VERSION="4.20.1"
MYPY_VERSION="2.4.1"
ensure_python_client() {
  local venv="$MONGOQ_TOOLS/python-client"
  if ! "$venv/bin/python" -c "import pymongo, mypy.version, sys; sys.exit(pymongo.version != '$PYMONGO_VERSION' or mypy.version.__version__ != '$MYPY_VERSION')" 2>/dev/null; then
    log "installing pymongo $PYMONGO_VERSION and mypy $MYPY_VERSION for the Python client's tests (into $venv; seconds)"
    mkdir -p "$MONGOQ_TOOLS"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "pymongo==$PYMONGO_VERSION" "mypy==$MYPY_VERSION"
  fi
  export MONGOQ_PYTHON="$venv/bin/python"
}

# Debian's pymongo for /usr/bin/python3 (python3-pymongo, 3.11 on Debian 12),
# so a test runs the client as a host installed from the .deb would. Without
# root apt-get that test says it was not checked, with the reason.
ensure_debian_pymongo() {
  if /usr/bin/python3 -c 'import pymongo' 2>/dev/null; then return 0; fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing Debian's python3-pymongo for the client's test on /usr/bin/python3"
    apt-get install -y -qq python3-pymongo >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq python3-pymongo >/dev/null 2>&1; } ||
      log "python3-pymongo did not install: that test will say it was not checked"
  fi
}
