#!/usr/bin/env bash
# Builds the dQEMU shard binary: unpack the pinned QEMU tarball, apply `series` in order,
# configure a minimal TCG x86_64 build, build QEMU and the x86 option ROMs, and stage
# bin/qemu-system-x86_64 plus share/qemu/ (firmware) into OUT.
#
# usage: build.sh TARBALL TOPDIR OUT JOBS PYTHON -- CONFIGURE_FLAGS...
# Exit codes: 3 a patch does not apply, 4 configure failed, 5 build failed, 6 firmware missing.
# The caller (cluster/qemu_build.py) fetches and checks the tarball and keys the cache.
set -euo pipefail
tarball=$1 topdir=$2 out=$3 jobs=$4 python=$5
shift 5
[ "$1" = "--" ] && shift
here=$(cd "$(dirname "$0")" && pwd)
work="$out.work"

rm -rf "$work" && mkdir -p "$work"
echo "dqemu-build: unpacking $(basename "$tarball")"
tar -C "$work" -xf "$tarball"
src="$work/$topdir"
cd "$src"

while read -r p; do
  case "$p" in ''|'#'*) continue ;; esac
  if [ ! -f "$here/$p" ]; then
    echo "dqemu-build: error: patch $p is listed in series but missing" >&2
    exit 3
  fi
  if ! patch -p1 --forward --batch --quiet < "$here/$p" > "$work/patch.log" 2>&1; then
    echo "dqemu-build: error: patch $p does not apply:" >&2
    sed 's/^/  /' "$work/patch.log" >&2
    exit 3
  fi
  echo "dqemu-build: applied $p"
done < "$here/series"

# The +ds tarball has no EDK2 blobs to unpack.
sed -i 's/^\( *\)unpack_edk2_blobs = bzip2.found()/\1unpack_edk2_blobs = false/' meson.build

# Compile through ccache when it is installed (Debian's /usr/lib/ccache puts a gcc in front of
# the real one; QEMU's configure hands meson explicit compiler names, so meson's own ccache
# detection never applies). The cache lives beside the build cache and is keyed on paths
# relative to the tree, so that a rebuild after a patch change recompiles only what it touches.
if [ -x /usr/lib/ccache/gcc ]; then
  export PATH="/usr/lib/ccache:$PATH"
  export CCACHE_DIR="${CCACHE_DIR:-$(dirname "$(dirname "$out")")/ccache}"
  export CCACHE_BASEDIR="$src" CCACHE_NOHASHDIR=1
fi

mkdir -p build && cd build
echo "dqemu-build: configure $*"
if ! ../configure --python="$python" "$@" > "$work/configure.log" 2>&1; then
  echo "dqemu-build: error: configure failed; last lines of $work/configure.log:" >&2
  tail -n 15 "$work/configure.log" >&2
  exit 4
fi
echo "dqemu-build: building with $jobs jobs (log: $work/build.log)"
# Only the emulator and the option ROMs (recurse-all), not the unit tests.
if ! make -j"$jobs" qemu-system-x86_64 recurse-all > "$work/build.log" 2>&1; then
  echo "dqemu-build: error: build failed; last lines of $work/build.log:" >&2
  grep -E 'error|Error' "$work/build.log" | tail -n 15 >&2 || tail -n 15 "$work/build.log" >&2
  exit 5
fi
# The series' own files build without a warning (an implicit declaration is only a warning
# here, and a pointer cut to an int by one crashed a shard).
if grep -E '(hw|include)/dqemu/[^:]*:[0-9]+:[0-9]+: warning:' "$work/build.log" >&2; then
  echo "dqemu-build: error: warnings in the series' files (above)" >&2
  exit 5
fi

stage="$out.stage"
rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/share/qemu"
cp qemu-system-x86_64 "$stage/bin/"
# Option ROMs that -kernel boot needs (linuxboot, multiboot, pvh), built from the tree.
for rom in linuxboot.bin linuxboot_dma.bin multiboot.bin multiboot_dma.bin pvh.bin kvmvapic.bin; do
  if [ ! -f "pc-bios/optionrom/$rom" ]; then
    echo "dqemu-build: error: option ROM $rom was not built" >&2
    exit 6
  fi
  cp "pc-bios/optionrom/$rom" "$stage/share/qemu/"
done
# SeaBIOS and VGA BIOSes from Debian's seabios package; iPXE NIC ROMs when installed.
if [ ! -f /usr/share/seabios/bios-256k.bin ]; then
  echo "dqemu-build: error: /usr/share/seabios/bios-256k.bin missing (apt-get install seabios)" >&2
  exit 6
fi
cp /usr/share/seabios/*.bin "$stage/share/qemu/"
if [ -d /usr/lib/ipxe/qemu ]; then
  cp /usr/lib/ipxe/qemu/*.rom "$stage/share/qemu/"
fi
# Keep the checker so that patches can be style-checked against this exact tree.
mkdir -p "$stage/scripts"
cp ../scripts/checkpatch.pl "$stage/scripts/"

rm -rf "$out" && mv "$stage" "$out"
cd / && rm -rf "$work"
echo "dqemu-build: done: $out/bin/qemu-system-x86_64"
