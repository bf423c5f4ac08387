#!/usr/bin/env bash
# Unpack Mesa 25's lavapipe Vulkan driver (CPU Vulkan) into a project folder, without touching the system.
#
#   tools/fetch_mesa.sh [DEST]        DEST defaults to .venv/vulkan
#
# Why: ManiSkill3 (sapien 3) needs a Vulkan device even on the CPU. Debian bookworm's own lavapipe (Mesa 22)
# is rejected by sapien; Mesa 25 from bookworm-backports works. Installing it with apt would upgrade the
# system's GL stack, so the three packages it needs (mesa-vulkan-drivers, libdrm2, libdrm-amdgpu1) are
# downloaded with a private apt configuration (its own sources list with bookworm-backports, its own
# lists and cache under DEST/apt) and unpacked with `dpkg -x` into DEST/root. DEST/lvp_icd.json is an ICD
# manifest whose library_path is absolute, so pointing VK_ICD_FILENAMES at it is all a process needs
# (difftop.envs.maniskill does that itself, and preloads the unpacked libdrm).
#
# Idempotent: it does nothing when DEST/.stamp exists. Exits 1 with a one-line reason when apt cannot reach
# the archive (`make` goes on; the ManiSkill tests then skip naming this script).
set -euo pipefail

DEST=${1:-.venv/vulkan}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
STAMP="$DEST/.stamp"
[ -f "$STAMP" ] && exit 0

PACKAGES=(mesa-vulkan-drivers libdrm2 libdrm-amdgpu1)
SUITE=bookworm-backports
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
ARCH=$(dpkg --print-architecture)

fail() { echo "tools/fetch_mesa.sh: $*" >&2; exit 1; }
command -v apt-get >/dev/null && command -v dpkg >/dev/null || fail "needs apt-get and dpkg (Debian/Ubuntu)"
[ -f "$KEYRING" ] || fail "no Debian archive keyring at $KEYRING (apt-get install debian-archive-keyring)"

APT="$DEST/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/parts" "$APT/prefs" "$APT/debs"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" > "$APT/sources.list"
cat > "$APT/apt.conf" <<EOF
Dir::Etc::SourceList "$APT/sources.list";
Dir::Etc::SourceParts "$APT/parts";
Dir::Etc::Preferences "$APT/prefs/none";
Dir::Etc::PreferencesParts "$APT/prefs";
Dir::State::Lists "$APT/lists";
Dir::Cache "$APT/cache";
APT::Architecture "$ARCH";
APT::Get::List-Cleanup "false";
Acquire::Languages "none";
Acquire::Retries "1";
Acquire::http::Timeout "15";
EOF
# without root, apt cannot switch to its _apt sandbox user: run as the current one
[ "$(id -u)" = 0 ] || echo 'APT::Sandbox::User "'"$(id -un)"'";' >> "$APT/apt.conf"
export APT_CONFIG="$APT/apt.conf"

echo "fetch_mesa: apt-get update ($SUITE, private state in $APT)"
# apt-get update exits 0 when an index cannot be fetched (a warning): that counts as a failure here
apt-get -q update >"$APT/update.log" 2>&1 && ! grep -qE '^(E: |W: Failed to fetch)' "$APT/update.log" \
  || fail "apt-get update of $MIRROR $SUITE failed: $(grep -m1 -E '^(E|W): ' "$APT/update.log" | cut -c4-200)"
(cd "$APT/debs" && rm -f ./*.deb && apt-get -q download "${PACKAGES[@]/%//$SUITE}" >"$APT/download.log" 2>&1) \
  || fail "apt-get download ${PACKAGES[*]} from $SUITE failed (see $APT/download.log)"

rm -rf "$DEST/root"
for deb in "$APT"/debs/*.deb; do
  dpkg -x "$deb" "$DEST/root"
done
LIB=$(find "$DEST/root" -name libvulkan_lvp.so -print -quit)
[ -n "$LIB" ] || fail "libvulkan_lvp.so not found in the unpacked packages"
VERSION=$(dpkg-deb -f "$APT"/debs/mesa-vulkan-drivers_*.deb Version)
MISSING=$(LD_LIBRARY_PATH="$(dirname "$LIB")" ldd "$LIB" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
[ -z "$MISSING" ] || fail "lavapipe needs system libraries that are missing: $MISSING(apt-get install them)"
# the package's own manifest, with the library's absolute path: no LD_LIBRARY_PATH needed to find it
sed "s|\"library_path\": *\"[^\"]*\"|\"library_path\": \"$LIB\"|" \
  "$DEST/root/usr/share/vulkan/icd.d/lvp_icd.json" > "$DEST/lvp_icd.json"
grep -q "\"$LIB\"" "$DEST/lvp_icd.json" || fail "could not write $DEST/lvp_icd.json"
echo "$(dirname "$LIB")" > "$DEST/libdir"
echo "mesa-vulkan-drivers $VERSION" > "$STAMP"
echo "fetch_mesa: lavapipe (mesa-vulkan-drivers $VERSION) in $DEST; ICD $DEST/lvp_icd.json"
