#!/usr/bin/env bash
# Make what run_rl_pixels_gpu.sh carries to the GPU machine, on this (networked) machine: .whl/ (wheels
# for the device's Python 3.12 of what its image lacks, plus dm_control trimmed to fit the device
# tool's 64 MiB working-tree limit) and .gl/ (the EGL/GL loader .debs). Both are git-ignored
# (.gitignore, .git/info/exclude). Needs .venv (`make venv`) to build the antlr4 wheel, which PyPI
# only has as an sdist. Takes ~1 min; the result is ~33 MiB.
#   bash tools/prepare_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
rm -rf .whl .gl
mkdir -p .whl/py .gl /tmp/amd64/partial
plat=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# The versions of our .venv; the rest of dm-control's and MuJoCo's needs (absl-py, lxml, protobuf,
# scipy, pyparsing, requests, numpy, typing-extensions, cloudpickle, ...) are in the device's image.
for p in mujoco==3.17.0 dm-env==1.6 dm-tree==0.1.10 glfw==2.11.0 pyopengl==3.1.10 etils==1.15.0 \
         gymnasium==1.4.0 farama-notifications==0.0.6 hydra-core==1.3.8 omegaconf==2.3.1; do
  python3 -m pip download -q "${plat[@]}" -d .whl "$p"
done
.venv/bin/pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
# dm_control is pure Python but 56 MB, mostly assets of domains we never load (locomotion, dog)
python3 -m pip download -q "${plat[@]}" -d /tmp/dmc_whl dm-control==1.0.50
rm -rf /tmp/dmc_unpacked && mkdir -p /tmp/dmc_unpacked
(cd /tmp/dmc_unpacked && python3 -m zipfile -e /tmp/dmc_whl/dm_control-1.0.50-py3-none-any.whl .)
rm -rf /tmp/dmc_unpacked/dm_control/{locomotion,suite/dog_assets,mujoco/testing,blender,suite/all_domains.png}
find /tmp/dmc_unpacked/dm_control -name '*_test.py' -delete
mv /tmp/dmc_unpacked/dm_control .whl/py/
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${o[@]}" update > /dev/null
(cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh .whl .gl
