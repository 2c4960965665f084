# Sourced by the Makefile targets and CI: one target dir and one compiler
# cache that survive between runs, so RocksDB's C++ (12 minutes on 2 cores)
# compiles once per machine, not once per feature change.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ringstore-target}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ringstore-ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
# Timestamps and absolute paths differ between clones; ignore them so CI's
# fresh clone still hits the cache.
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-time_macros,include_file_mtime,include_file_ctime,file_macro}"
export CCACHE_NOHASHDIR=1
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$HOME}"
if command -v ccache >/dev/null 2>&1; then
  export CC="ccache cc" CXX="ccache c++"
fi
