#!/usr/bin/env bash
# Here (no GPU, network): pack everything the GPU check needs on the device machine into
# git-ignored pieces under .gpu/, each call of the device tool carrying < 64 MiB:
#   a.tar.xz  vLLM 0.25.0's kernel library           (fetch-wheels.sh)
#   b.tar.xz  the rest of vLLM, pruned                (fetch-wheels.sh)
#   c.tar.xz  the ~90 wheels the image lacks + the daemon's dependencies (fetch-wheels.sh)
#   r1.tar.xz Ray 2.60.0's raylet binary
#   r2.tar.xz the rest of Ray 2.60.0 (no Java jars, no dashboard source maps)
#   tools.tar.xz iproute2 (+ libbpf, libmnl) and git from Debian 12: the image has neither
# Run from the project's root:  scripts/gpu-check/pack.sh      (~8 min on 2 cores)
# Pieces already there are kept (delete one to make it again).
set -euo pipefail
ROOT=$(pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-$(ls ${PYENV_ROOT:-$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}
PY=${PY:-$(command -v python3.12)}
export PY
W=/tmp/gpuwork; mkdir -p $W $ROOT/.gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
if [ ! -s .gpu/a.tar.xz ] || [ ! -s .gpu/b.tar.xz ] || [ ! -s .gpu/c.tar.xz ]; then
  "$HERE/fetch-wheels.sh"
fi
if [ ! -s .gpu/r1.tar.xz ] || [ ! -s .gpu/r2.tar.xz ]; then
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d $W ray==2.60.0
  rm -rf $W/ray-tree && mkdir -p $W/ray-tree && (cd $W/ray-tree && unzip -q $W/ray-2.60.0-cp312-*.whl)
  cd $W/ray-tree
  rm -rf ray/jars ray/dashboard/client/build/static/js/*.map
  tar -cf - ray/core/src/ray/raylet/raylet | xz -6 -T0 > $ROOT/.gpu/r1.tar.xz
  tar -cf - --exclude=ray/core/src/ray/raylet/raylet ray ray-2.60.0.dist-info | xz -6 -T0 > $ROOT/.gpu/r2.tar.xz
  cd $ROOT
fi
if [ ! -s .gpu/tools.tar.xz ]; then
  rm -rf $W/debs $W/tools && mkdir -p $W/debs $W/tools
  (cd $W/debs && apt-get download iproute2 libbpf1 libmnl0 git >/dev/null 2>&1)
  for d in $W/debs/*.deb; do dpkg -x "$d" $W/x; done
  mkdir -p $W/tools/bin $W/tools/lib $W/tools/git-core $W/tools/templates
  cp $W/x/bin/ip $W/tools/bin/ip.real 2>/dev/null || cp $W/x/sbin/ip $W/tools/bin/ip.real
  cp -L $W/x/usr/lib/x86_64-linux-gnu/libbpf.so.1 $W/x/usr/lib/x86_64-linux-gnu/libmnl.so.0 $W/tools/lib/
  cp $W/x/usr/bin/git $W/tools/bin/git.real
  cp "$HERE/git-wrapper.sh" $W/tools/bin/git
  # only the git commands the daemon's git source runs locally (no http/ssh helpers)
  cp -a $W/x/usr/lib/git-core/. $W/tools/git-core/
  rm -f $W/tools/git-core/git-remote-http* $W/tools/git-core/git-remote-ftp* \
        $W/tools/git-core/git-http-* $W/tools/git-core/git-imap-send $W/tools/git-core/scalar
  cp -a $W/x/usr/share/git-core/templates/. $W/tools/templates/
  cp "$HERE/ip-wrapper.sh" $W/tools/bin/ip
  cp "$HERE/netns-restore-env.sh" $W/tools/bin/netns-restore-env
  chmod +x $W/tools/bin/*
  tar -C $W -cf - tools | xz -6 -T0 > .gpu/tools.tar.xz
fi
# the committed tree the device runs (a clean copy of HEAD, with its commit id)
# GPUCHECK_EXTRA="path ..." adds those paths from the working tree (say, a package HEAD
# imports that its author has not committed yet); the commit record names them.
# (what the check runs: reconciler/, schemas/, testrigs/; tests and docs stay here, to keep
# the second call under the tool's 64 MiB)
git archive --format=tar --prefix=./ HEAD reconciler schemas testrigs pyproject.toml > $W/src.tar
mkdir -p $W/srcmeta && git rev-parse HEAD > $W/srcmeta/.gpu-commit
if [ -n "${GPUCHECK_EXTRA:-}" ]; then
  tar -rf $W/src.tar --exclude=__pycache__ $GPUCHECK_EXTRA
  echo "+ working tree: $GPUCHECK_EXTRA" >> $W/srcmeta/.gpu-commit
fi
tar -C $W/srcmeta -rf $W/src.tar ./.gpu-commit
xz -6 -T0 < $W/src.tar > .gpu/src.tar.xz
echo "src.tar.xz: $(git rev-parse --short HEAD)"
ls -la .gpu
