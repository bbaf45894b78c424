#!/usr/bin/env bash
# Build the repeatlab images (CPU and CUDA) from the repository root with docker, buildah or podman.
#
#   images/build.sh                 build both images
#   images/build.sh cpu             build one (cpu | cuda)
#   images/build.sh --print [..]    print the build commands and exit (no engine needed)
#   images/build.sh --push  [..]    build, then push
#   images/build.sh --stage         only stage images/build/ (wheelhouse + default corpus) and exit
#
# Before building it stages, on the host, what the Dockerfiles install (the build itself needs no network):
#   images/build/wheelhouse/  `pip wheel` of CPU torch and every pinned dependency (images/constraints.txt)
#   images/build/corpus/      the embedded default corpus (repeatlab.default_corpus), so no pod downloads it
# Both are reused while constraints.txt and pyproject.toml are unchanged.
#
# Environment:
#   REGISTRY    image prefix              (default ghcr.io/repeatlab; the names match ClusterConfig's defaults)
#   TAG         image tag                 (default: the version in pyproject.toml)
#   ENGINE      force an engine           (docker | buildah | podman)
#   ENGINES     engines to try, in order  (default "docker buildah podman")
#   BASE_IMAGE  another base image for both stages (default: the Dockerfile's digest-pinned ARG); no --pull then
#   BUILD_ARGS  more "NAME=VALUE ..." build arguments
#   PYTHON      the python that runs `pip wheel` and builds the corpus (default .venv/bin/python, else python3)
#   PIP_WHEEL_ARGS  extra `pip wheel` options, e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
#                   where no torch 2.13.0+cpu wheel is on the configured index
#
# Exit codes: 0 built, 2 usage error, 3 no usable container engine on this machine, 4 staging failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
REGISTRY="${REGISTRY:-ghcr.io/repeatlab}"
TAG="${TAG:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/pyproject.toml" | head -n 1)}"

print_only=0
push=0
stage_only=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --print) print_only=1 ;;
    --push) push=1 ;;
    --stage) stage_only=1 ;;
    cpu | cuda) targets+=("$arg") ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$arg' (allowed: cpu, cuda, --print, --push, --stage)" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(cpu cuda)

image_name() {
  case "$1" in
    cpu) echo "$REGISTRY/repeatlab:$TAG" ;;
    cuda) echo "$REGISTRY/repeatlab-cuda:$TAG" ;;
  esac
}

usable() {  # an engine counts only if it can actually build here (a docker CLI without a daemon does not)
  case "$1" in
    docker) command -v docker > /dev/null 2>&1 && docker info > /dev/null 2>&1 ;;
    buildah) command -v buildah > /dev/null 2>&1 && buildah version > /dev/null 2>&1 ;;
    podman) command -v podman > /dev/null 2>&1 && podman info > /dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

stage() {  # images/build/{wheelhouse,corpus}: what the Dockerfiles COPY; made here because the build has no network
  local python="${PYTHON:-}" build="$root/images/build" stamp key
  if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
  fi
  key="$(cat "$root/images/constraints.txt" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
  stamp="$build/wheelhouse/.staged-$key"
  if [ ! -e "$stamp" ]; then
    echo "+ staging images/build/wheelhouse (pip wheel)"
    rm -rf "$build/wheelhouse"
    mkdir -p "$build/wheelhouse"
    # shellcheck disable=SC2086  # PIP_WHEEL_ARGS is a list of options
    "$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$build/wheelhouse" \
        -c "$root/images/constraints.txt" ${PIP_WHEEL_ARGS:-} \
        "torch==$(sed -n 's/^torch==//p' "$root/images/constraints.txt")+cpu" "setuptools>=77" wheel \
        "$root[gcs,s3,k8s,torchx]" \
      || { echo "build.sh: pip wheel failed: nothing was built (see above; PIP_WHEEL_ARGS adds an index)" >&2; exit 4; }
    rm -f "$build"/wheelhouse/repeatlab-*.whl  # the image builds repeatlab from the copied sources
    touch "$stamp"
  fi
  if [ ! -s "$build/corpus/$("$python" -c 'from repeatlab.default_corpus import CORPUS_FILE; print(CORPUS_FILE)')" ]; then
    echo "+ staging images/build/corpus (the embedded default corpus)"
    mkdir -p "$build/corpus"
    REPEATLAB_CACHE="$build/cache" "$python" -c 'import shutil, sys
from repeatlab.default_corpus import default_corpus_path
shutil.copy(default_corpus_path(), sys.argv[1])' "$build/corpus/" \
      || { echo "build.sh: could not build the default corpus: nothing was built" >&2; exit 4; }
  fi
}

if [ "$stage_only" = 1 ]; then
  cd "$root"
  stage
  exit 0
fi

engine="${ENGINE:-}"
if [ -z "$engine" ]; then
  if [ "$print_only" = 1 ]; then
    engine=docker
  else
    for candidate in ${ENGINES:-docker buildah podman}; do
      if usable "$candidate"; then engine="$candidate"; break; fi
    done
  fi
fi
if [ -z "$engine" ]; then
  echo "build.sh: no container engine on this machine (tried: ${ENGINES:-docker buildah podman};" \
       "a docker CLI without a running daemon does not count). Build on a machine with Docker, Buildah or" \
       "Podman, or in CI; nothing was built." >&2
  exit 3
fi

build_cmd() {  # $1 = target
  local dockerfile="images/Dockerfile.$1" image args="" pull="--pull " kv
  image="$(image_name "$1")"
  if [ -n "${BASE_IMAGE:-}" ]; then
    args="--build-arg BASE_IMAGE=$BASE_IMAGE "
    pull=""  # a local stand-in or mirror: do not ask a registry for it
  fi
  for kv in ${BUILD_ARGS:-}; do args="$args--build-arg $kv "; done
  case "$engine" in
    docker) echo "DOCKER_BUILDKIT=1 docker build ${pull}${args}-f $dockerfile -t $image ." ;;
    buildah) echo "buildah bud ${pull}--layers ${args}-f $dockerfile --ignorefile $dockerfile.dockerignore -t $image ." ;;
    podman) echo "podman build ${pull}${args}-f $dockerfile --ignorefile $dockerfile.dockerignore -t $image ." ;;
    *) echo "build.sh: ENGINE must be docker, buildah or podman, not '$engine'" >&2; exit 2 ;;
  esac
}

cd "$root"
[ "$print_only" = 1 ] || stage
for target in "${targets[@]}"; do
  cmd="$(build_cmd "$target")"
  if [ "$print_only" = 1 ]; then
    echo "$cmd"
    [ "$push" = 0 ] || echo "$engine push $(image_name "$target")"
    continue
  fi
  echo "+ $cmd"
  eval "$cmd"
  if [ "$push" = 1 ]; then
    echo "+ $engine push $(image_name "$target")"
    "$engine" push "$(image_name "$target")"
  fi
done
