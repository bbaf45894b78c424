#!/usr/bin/env bash
# Build the CPU image for real and run it as its non-root user (what `make image-check` and .ci/run do):
#   1. a base: BASE_IMAGE if given (e.g. the Dockerfile's digest-pinned python image, on a machine with a registry),
#      else a stand-in built from Debian's packages, since no registry is reachable in CI:
#        mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm  ->  buildah from scratch,
#        add, commit  ->  localhost/repeatlab-base:bookworm   (Debian 12's python3 is 3.11, as in the real base)
#   2. images/build.sh cpu with buildah (vfs storage, chroot isolation), that base passed as the BASE_IMAGE build arg;
#      the Dockerfile is otherwise the one that builds the published image
#   3. inside the image, as uid 1000: `repeatlab --help`; `import repeatlab.pipelines, repeatlab.components`; the
#      default corpus is in the image; the TrainJob's torchrun command starts the venv's interpreter; and a one-point
#      study (images/check-study.yaml) end to end through the KFP local runner, trained by torchrun with two ranks,
#      with every package index and proxy pointed at a closed port so that any download at run time fails.
# Needs buildah and, for the stand-in base, mmdebstrap (Debian: apt-get install buildah mmdebstrap).
# Exit codes: 0 checked, 3 buildah/mmdebstrap missing, anything else: a failed step (its output is above).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"        # read by buildah (containers/storage): no overlay mounts here
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"  # RUN steps and `buildah run` without user namespaces
IMAGE="localhost/repeatlab:check"
STANDIN="localhost/repeatlab-base:bookworm"
log() { echo "image-check: $*" >&2; }
need() { command -v "$1" > /dev/null 2>&1 || { log "$1 is not installed (Debian: apt-get install buildah mmdebstrap)"; exit 3; }; }
need buildah

started=$(date +%s)
if [ -z "${BASE_IMAGE:-}" ]; then
  if ! buildah inspect --type image "$STANDIN" > /dev/null 2>&1; then
    tarball="$root/images/build/base-bookworm.tar"
    if [ ! -s "$tarball" ]; then
      need mmdebstrap
      log "building the stand-in base from Debian bookworm packages (mmdebstrap, a few minutes)"
      mkdir -p "$(dirname "$tarball")"
      mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tarball.tmp"
      mv "$tarball.tmp" "$tarball"
    fi
    ctr="$(buildah from scratch)"
    buildah add --quiet "$ctr" "$tarball" / > /dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
      --cmd python3 "$ctr"
    buildah commit --quiet --rm "$ctr" "$STANDIN" > /dev/null
  fi
  BASE_IMAGE="$STANDIN"
fi
base_ready=$(date +%s)
log "base: $BASE_IMAGE ($((base_ready - started)) s)"

BASE_IMAGE="$BASE_IMAGE" ENGINE=buildah REGISTRY=localhost TAG=check "$here/build.sh" cpu
built=$(date +%s)
log "built $IMAGE in $((built - base_ready)) s (staging included)"

# A pod's hostname resolves (the kubelet writes /etc/hosts); torchrun's rendezvous needs that, so give the container
# one that does.
ctr="$(buildah from --quiet --add-host repeatlab-check:127.0.0.1 "$IMAGE")"
trap 'buildah rm "$ctr" > /dev/null 2>&1 || true' EXIT
# Every index and proxy points at a closed port: a step that tried to download something would fail.
offline=(--env PIP_INDEX_URL=http://127.0.0.1:9/simple --env PIP_FIND_LINKS= --env PIP_EXTRA_INDEX_URL=
         --env HTTP_PROXY=http://127.0.0.1:9 --env HTTPS_PROXY=http://127.0.0.1:9
         --env http_proxy=http://127.0.0.1:9 --env https_proxy=http://127.0.0.1:9
         --env NO_PROXY=127.0.0.1,localhost,repeatlab-check --env no_proxy=127.0.0.1,localhost,repeatlab-check)
in_image() {
  buildah run --isolation "$BUILDAH_ISOLATION" --hostname repeatlab-check --user 1000:1000 "${offline[@]}" "$ctr" -- "$@"
}

log "repeatlab --help, as uid 1000"
in_image sh -c 'test "$(id -u):$(id -g)" = 1000:1000 && test "$HOME" = /home/repeatlab && test -w "$HOME"'
in_image repeatlab --help > /dev/null
in_image python -c "import repeatlab.pipelines, repeatlab.components, repeatlab.pipelines.repetition_grid"
log "the default corpus ships in the image (sha256-checked, read-only)"
in_image python -c "
from repeatlab import default_corpus as d
import os
path = d.default_corpus_path()
assert path == os.path.join(os.environ['REPEATLAB_CACHE'], 'default-corpus', d.CORPUS_FILE), path
assert not os.access(os.path.dirname(path), os.W_OK), 'the image corpus folder must not be writable by the user'
print(path)"
log "the TrainJob's torchrun command starts the venv's interpreter in every worker"
buildah copy --quiet --chown 1000:1000 "$ctr" "$here/check_workers.py" /workspace/check_workers.py > /dev/null
in_image python /workspace/check_workers.py
log "a one-point study, two torchrun ranks, end to end"
buildah copy --quiet --chown 1000:1000 "$ctr" "$here/check-study.yaml" /workspace/check-study.yaml > /dev/null
in_image repeatlab run --local --config /workspace/check-study.yaml
in_image python -c "
import json, glob
done = [json.load(open(p)) for p in glob.glob('/workspace/study/runs/*/done.json')]
assert len(done) == 1 and done[0]['world_size'] == 2, done
assert glob.glob('/workspace/study/runs/*/eval.json'), 'no eval.json'
report = glob.glob('/workspace/study/studies/image-check/report/index.html')
assert report, 'no report'
print('study ok:', done[0]['point_id'], 'world size', done[0]['world_size'], 'test loss', done[0]['test_loss'])"
finished=$(date +%s)
log "OK: image built in $((built - base_ready)) s, checks ran in $((finished - built)) s, total $((finished - started)) s"
