#!/usr/bin/env bash
# Install what querywatch's build and test suite need, when it is missing.
#
#   libclang-dev         pg_query builds libpg_query with bindgen, which needs libclang
#   postgresql           the server binaries (initdb, pg_ctl, postgres, psql, pgbench)
#   postgresql-contrib   pg_stat_statements and auto_explain (a transitional package
#                        on recent Debian, but harmless and explicit)
#   pgbadger             the peer the benchmark compares against
#   time                 GNU time: /usr/bin/time -f %M gives the benchmark's peak RSS
#   python3-venv         the venv below (Debian's python3 has no ensurepip without it)
#   prometheus           promtool: `promtool check rules|config` and `promtool test rules`
#                        on deploy/prometheus/ (tests/it/prometheus_rules.rs)
#   chromium             the browser tests/it/web_page.rs drives (/usr/bin/chromium)
#
# It also creates target/pyenv, a venv with the official Python
# opentelemetry-proto package, for wire/tests/python_interop.rs, and the
# Python SDK with its OTLP exporters, for collector/tests/receive.rs; and
# target/node, Playwright's library (playwright-core, no browser download) for
# tests/it/web_page.rs, with the machine's node and npm.
#
# Idempotent: when everything is present it prints only the PostgreSQL bin dir
# on stdout (so callers can do `PG_BIN=$(scripts/deps.sh)`), nothing else.
# As root it runs `apt-get update` once (only when something is missing) and
# `apt-get install -y --no-install-recommends`. Not root and something missing:
# it prints the exact command to run and exits 1, rather than calling sudo
# behind the user's back.
#
# `scripts/deps.sh --build-only` installs only what building needs
# (libclang-dev) and prints nothing: enough for `querywatch analyze`.
set -euo pipefail

build_only=false
case "${1:-}" in
    --build-only) build_only=true ;;
    "") ;;
    *) echo "usage: scripts/deps.sh [--build-only]" >&2; exit 2 ;;
esac

packages=(libclang-dev postgresql postgresql-contrib pgbadger time python3-venv chromium prometheus)
if $build_only; then
    packages=(libclang-dev)
fi

# dpkg-query is the authority on "installed"; a binary on PATH may come from a
# different source, but these are Debian package names, so ask dpkg.
missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    cmd=(apt-get install -y --no-install-recommends "${missing[@]}")
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "deps.sh: missing packages: ${missing[*]} (Debian names); no apt-get here, install the equivalents" >&2
        exit 1
    elif [[ "$(id -u)" -eq 0 ]]; then
        echo "deps.sh: installing ${missing[*]}" >&2
        # Progress output goes to stderr so stdout stays the bin dir only.
        export DEBIAN_FRONTEND=noninteractive
        apt-get update >&2
        "${cmd[@]}" >&2
    else
        echo "deps.sh: missing packages: ${missing[*]}" >&2
        echo "run as root:  apt-get update && ${cmd[*]}" >&2
        exit 1
    fi
fi

if $build_only; then
    exit 0
fi

# The OTLP interop test decodes our bytes with a decoder we did not write:
# the Python opentelemetry-proto package, in a venv under target/ (never the
# system's site-packages). 1.38.0 is generated from OTLP proto v1.7.0; the
# Rust opentelemetry-proto 0.33 carries v1.10.0, and the metrics, logs,
# resource and collector messages are the same in both (1.8-1.10 changed
# comments and profiles-only fields). All output to stderr: stdout is the bin dir.
otlp_py_version=1.38.0
pyenv_dir="$(cd "$(dirname "$0")/.." && pwd)/target/pyenv"
# The SDK and its OTLP exporters (same release family: 1.38.0, semconv
# 0.59b0) send to the collector's receiver in collector/tests/receive.rs.
otlp_py_packages=(
    "opentelemetry-proto==$otlp_py_version"
    "opentelemetry-sdk==$otlp_py_version"
    "opentelemetry-exporter-otlp-proto-grpc==$otlp_py_version"
    "opentelemetry-exporter-otlp-proto-http==$otlp_py_version"
)
if ! "$pyenv_dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(any(m.version(p) != '$otlp_py_version' for p in ('opentelemetry-proto', 'opentelemetry-sdk', 'opentelemetry-exporter-otlp-proto-grpc', 'opentelemetry-exporter-otlp-proto-http')))" >/dev/null 2>&1; then
    echo "deps.sh: creating $pyenv_dir with ${otlp_py_packages[*]}" >&2
    python3 -m venv "$pyenv_dir" >&2
    "$pyenv_dir/bin/python" -m pip install --quiet --disable-pip-version-check "${otlp_py_packages[@]}" >&2
fi

# The web page test drives Debian's chromium through Playwright's library
# alone: playwright-core never downloads a browser of its own. Installed with
# the machine's node and npm into target/node (never globally).
playwright_version=1.65.1
node_dir="$(cd "$(dirname "$0")/.." && pwd)/target/node"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "deps.sh: node and npm are needed for tests/it/web_page.rs (Debian: nodejs, npm)" >&2
    exit 1
fi
if ! node -e "process.exit(require('$node_dir/node_modules/playwright-core/package.json').version === '$playwright_version' ? 0 : 1)" >/dev/null 2>&1; then
    echo "deps.sh: installing playwright-core@$playwright_version into $node_dir" >&2
    npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error "playwright-core@$playwright_version" >&2
fi

# Validators of the deployment files (tests/it/deploy_files.rs), in the same
# venv; once installed they work offline: check-jsonschema vendors the
# compose-spec JSON schema (`--builtin-schema vendor.compose-spec`),
# kubernetes-validate the Kubernetes API schemas of each release it names.
deploy_py_packages=("check-jsonschema==0.39.0" "kubernetes-validate==1.37.0")
if ! "$pyenv_dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('check-jsonschema') != '0.39.0' or m.version('kubernetes-validate') != '1.37.0')" >/dev/null 2>&1; then
    echo "deps.sh: installing ${deploy_py_packages[*]} into $pyenv_dir" >&2
    "$pyenv_dir/bin/python" -m pip install --quiet --disable-pip-version-check "${deploy_py_packages[@]}" >&2
fi

# Find the server binaries. Debian's pg_config (postgresql-common/libpq-dev)
# reports the bin dir of the installed server; fall back to the newest version
# directory when pg_config is absent or points somewhere without initdb.
pg_bin=""
if command -v pg_config >/dev/null 2>&1; then
    pg_bin=$(pg_config --bindir 2>/dev/null || true)
fi
if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" ]]; then
    pg_bin=""
    # Version-sort so that 15 < 16 < 17 (plain lexical order would not).
    newest=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$newest" && -x "$newest/initdb" ]]; then
        pg_bin=$newest
    fi
fi
if [[ -z "$pg_bin" ]]; then
    echo "deps.sh: PostgreSQL server binaries (initdb) not found under pg_config --bindir or /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
echo "$pg_bin"
