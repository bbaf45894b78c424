#!/usr/bin/env bash
# Build images/Dockerfile.cuda as far as this machine allows and check the one thing that differs from the CPU image:
# which Python the training processes run. No registry and no GPU here, so the pytorch/pytorch base is replaced by a
# stand-in with the same layout: the stand-in Debian base of images/check.sh with torch (CPU) in the *system* Python
# and a `torchrun` script for it on the PATH, as conda's Python and its torchrun are in the real base. The Dockerfile
# is unchanged except for the REQUIRE_CUDA_TORCH=0 build argument (the stand-in torch is not a CUDA build).
# Inside the image, as uid 1000:
#   - the TrainJob's command (`python -m torch.distributed.run ...`) starts workers in the venv, with repeatlab;
#   - the old command (a bare `torchrun`) starts them in the base's Python, without repeatlab: the bug this prevents.
# Run images/check.sh first (it makes the stand-in base and the wheelhouse). Exit 0: checked.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
log() { echo "image-check-cuda: $*" >&2; }
STANDIN="localhost/repeatlab-base:bookworm"
TORCH_BASE="localhost/repeatlab-base:bookworm-torch"
IMAGE="localhost/repeatlab-cuda:check"
started=$(date +%s)

if ! buildah inspect --type image "$TORCH_BASE" > /dev/null 2>&1; then
  buildah inspect --type image "$STANDIN" > /dev/null 2>&1 || { log "run images/check.sh first"; exit 3; }
  log "stand-in for the CUDA base: torch in the system Python, its torchrun on the PATH"
  ctr="$(buildah from --quiet "$STANDIN")"
  buildah run --isolation chroot -v "$root/images/build/wheelhouse:/wheelhouse:ro" "$ctr" -- sh -c '
    set -e
    python3 -m venv /tmp/pip && /tmp/pip/bin/pip install --quiet --no-index --find-links /wheelhouse \
      --target /usr/local/lib/python3.11/dist-packages torch==2.13.0+cpu
    rm -rf /tmp/pip /usr/local/lib/python3.11/dist-packages/bin
    printf "#!/usr/bin/python3\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n" \
      > /usr/local/bin/torchrun && chmod 755 /usr/local/bin/torchrun'
  buildah commit --quiet --rm "$ctr" "$TORCH_BASE" > /dev/null
fi

BASE_IMAGE="$TORCH_BASE" BUILD_ARGS="REQUIRE_CUDA_TORCH=0" ENGINE=buildah REGISTRY=localhost TAG=check \
  "$here/build.sh" cuda
built=$(date +%s)
log "built $IMAGE in $((built - started)) s"

ctr="$(buildah from --quiet --add-host repeatlab-check:127.0.0.1 "$IMAGE")"
trap 'buildah rm "$ctr" > /dev/null 2>&1 || true' EXIT
in_image() { buildah run --isolation chroot --hostname repeatlab-check --user 1000:1000 "$ctr" -- "$@"; }
buildah copy --quiet --chown 1000:1000 "$ctr" "$here/check_workers.py" /workspace/check_workers.py > /dev/null
in_image sh -c 'test "$(command -v python)" = /opt/venv/bin/python && test "$(command -v torchrun)" = /usr/local/bin/torchrun'
log "the TrainJob's command: workers are the venv's interpreter"
in_image python /workspace/check_workers.py
log "the old command (bare torchrun): workers are the base's Python, without repeatlab"
in_image sh -c 'cat > /tmp/probe.py <<PY
import sys
try:
    import repeatlab  # noqa: F401
    print("WORKER-HAS-REPEATLAB", sys.executable)
except ImportError:
    print("WORKER-WITHOUT-REPEATLAB", sys.executable)
PY
OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node=1 /tmp/probe.py' | tee /tmp/repeatlab-check-cuda-old.txt
grep -q "WORKER-WITHOUT-REPEATLAB /usr/bin/python3" /tmp/repeatlab-check-cuda-old.txt
log "OK in $(( $(date +%s) - started )) s"
