#!/usr/bin/env bash
# Run NVIDIA perf_analyzer 2.60 (PyPI "perf-analyzer") on Debian 12 (bookworm).
#
# Usage:
#   perf_analyzer.sh [VENV_DIR] [--] PERF_ANALYZER_ARGS...
#   VENV=/path/to/venv perf_analyzer.sh PERF_ANALYZER_ARGS...
#
# VENV_DIR is taken from the first argument when it does not start with '-'
# (perf_analyzer itself takes no positional arguments), else from $VENV, else
# it is tests/python/.venv under the repository root.
#
# What it does, idempotently:
#  1. creates the virtualenv if needed and installs perf-analyzer==2.60.* into
#     it. The 2.60.0 wheel is tagged manylinux_2_38_x86_64, and bookworm's
#     glibc is 2.36, so a plain `pip install perf-analyzer==2.60.*` fails
#     ("from versions: 0.1.0") and an unpinned one installs a 0.1.0 placeholder.
#     We therefore install it with --platform manylinux_2_38_x86_64 --target.
#  2. downloads Debian 13 (trixie) libc6, libstdc++6, libgcc-s1, libssl3t64,
#     zlib1g and libzstd1 .debs with apt-get, using a private apt configuration (the system's
#     apt sources, lists and preferences are left untouched), and unpacks them
#     with dpkg-deb -x into a cache folder (default: target/perf-analyzer-libs
#     under the repository root; override with PA_LIBS_DIR). Nothing is installed.
#  3. runs the perf_analyzer ELF binary (not the Python wrapper, which always
#     exits 0) through the trixie dynamic loader, and exits with its exit code.
#
# Environment knobs:
#   VENV, PA_LIBS_DIR, REPO_ROOT, PYTHON (default python3),
#   PA_DEBIAN_MIRROR (default: the mirror of the system's own Debian apt source),
#   PA_DEBIAN_SUITE (default trixie), PA_QUIET=1 (no setup messages).
set -euo pipefail

PA_VERSION_SPEC="2.60.*"
PA_WHEEL_PLATFORM="manylinux_2_38_x86_64"
DEB_PACKAGES=(libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g libzstd1)
SUITE="${PA_DEBIAN_SUITE:-trixie}"

die() { echo "perf_analyzer.sh: error: $*" >&2; exit 1; }
log() { [[ "${PA_QUIET:-}" == 1 ]] || echo "perf_analyzer.sh: $*" >&2; }

[[ "$(uname -m)" == x86_64 ]] || die "only x86_64 is supported (this is $(uname -m))"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${REPO_ROOT:-}" ]]; then
  REPO_ROOT="$(git -C "$script_dir" rev-parse --show-toplevel 2>/dev/null || pwd)"
fi

# ---- arguments --------------------------------------------------------------
venv="${VENV:-}"
if [[ $# -gt 0 && "$1" != -* ]]; then
  venv="$1"; shift
fi
[[ "${1:-}" == "--" ]] && shift
venv="${venv:-$REPO_ROOT/tests/python/.venv}"
[[ "$venv" == /* ]] || venv="$REPO_ROOT/$venv"
libs_dir="${PA_LIBS_DIR:-$REPO_ROOT/target/perf-analyzer-libs}"
[[ "$libs_dir" == /* ]] || libs_dir="$REPO_ROOT/$libs_dir"

# ---- 1. virtualenv + perf-analyzer wheel ------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating virtualenv $venv"
  "${PYTHON:-python3}" -m venv "$venv" \
    || die "could not create virtualenv $venv (on Debian: apt-get install python3-venv)"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
  || die "could not query site-packages of $venv"
pa_pkg="$site/perf_analyzer"
pa_bin="$pa_pkg/bin/perf_analyzer"

installed_version() {
  [[ -f "$pa_pkg/__init__.py" ]] || return 0
  sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$pa_pkg/__init__.py"
}
if [[ ! -f "$pa_bin" || "$(installed_version)" != 2.60.* ]]; then
  log "installing perf-analyzer==$PA_VERSION_SPEC into $site"
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 \
    || die "pip is not available in $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      --no-deps --only-binary=:all: --platform "$PA_WHEEL_PLATFORM" \
      --upgrade --target "$site" "perf-analyzer==$PA_VERSION_SPEC" \
    || die "pip could not install perf-analyzer==$PA_VERSION_SPEC ($PA_WHEEL_PLATFORM wheel)"
  [[ -f "$pa_bin" ]] || die "perf-analyzer installed but $pa_bin is missing"
fi
[[ -x "$pa_bin" ]] || chmod +x "$pa_bin" || die "cannot make $pa_bin executable"

# ---- 2. Debian 13 runtime libraries -----------------------------------------
root="$libs_dir/root"
stamp="$libs_dir/.complete"
want_stamp="$SUITE: ${DEB_PACKAGES[*]}"
if [[ ! -f "$stamp" || "$(head -n1 "$stamp")" != "$want_stamp" ]]; then
  command -v apt-get >/dev/null || die "apt-get not found (a Debian machine is required)"
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
  mirror="${PA_DEBIAN_MIRROR:-}"
  if [[ -z "$mirror" ]]; then
    # The system's own Debian mirror: the source of the plain release suite.
    mirror="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null \
      | awk '$2 ~ /^[a-z]+$/ && $1 !~ /security/ {print $1; exit}')"
  fi
  [[ -n "$mirror" ]] || die "cannot tell the Debian mirror from the system's apt sources; set PA_DEBIAN_MIRROR"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f "$keyring" ]] || die "$keyring missing (apt-get install debian-archive-keyring)"

  log "fetching Debian $SUITE ${DEB_PACKAGES[*]} from $mirror"
  apt_dir="$libs_dir/apt"
  rm -rf "$apt_dir" "$root" "$libs_dir"/debs
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" \
           "$apt_dir/etc/preferences.d" "$apt_dir/etc/sources.list.d" "$libs_dir/debs" "$root"
  echo "deb [arch=amd64 signed-by=$keyring] $mirror $SUITE main" > "$apt_dir/etc/sources.list"
  : > "$apt_dir/status"
  apt_opts=(
    -o "Dir::Etc::sourcelist=$apt_dir/etc/sources.list"
    -o "Dir::Etc::sourceparts=$apt_dir/etc/sources.list.d"
    -o "Dir::Etc::preferences=$apt_dir/etc/preferences"
    -o "Dir::Etc::preferencesparts=$apt_dir/etc/preferences.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=$apt_dir/status"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Cache::archives=$apt_dir/cache/archives"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures=amd64"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
  )
  apt-get "${apt_opts[@]}" -qq update -o APT::Update::Error-Mode=any \
    || die "apt-get update for Debian $SUITE failed (mirror $mirror)"
  (cd "$libs_dir/debs" && apt-get "${apt_opts[@]}" -qq download "${DEB_PACKAGES[@]}") \
    || die "apt-get download of ${DEB_PACKAGES[*]} from $SUITE failed"
  for deb in "$libs_dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$root" || die "dpkg-deb -x $deb failed"
  done
  rm -rf "$apt_dir" # the package lists are ~10 MB; the .debs stay as a record
  { echo "$want_stamp"; ls "$libs_dir"/debs; } > "$stamp"
fi

loader=""
for cand in "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
            "$root/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"; do
  if [[ -f "$cand" ]]; then loader="$cand"; break; fi
done
[[ -n "$loader" ]] || die "no dynamic loader in $root; delete $libs_dir and retry"
libpath="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"

# ---- 3. run --------------------------------------------------------------------
exec "$loader" --library-path "$libpath" "$pa_bin" "$@"
