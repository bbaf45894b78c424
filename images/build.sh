#!/usr/bin/env bash
# Build the repeatlab images (CPU and CUDA) from the repository root with docker, buildah or podman.
#
#   images/build.sh                 build both images
#   images/build.sh cpu             build one (cpu | cuda)
#   images/build.sh --print [..]    print the build commands and exit (no engine needed)
#   images/build.sh --push  [..]    build, then push
#
# Environment:
#   REGISTRY   image prefix              (default ghcr.io/repeatlab; the names match ClusterConfig's defaults)
#   TAG        image tag                 (default: the version in pyproject.toml)
#   ENGINE     force an engine           (docker | buildah | podman)
#   ENGINES    engines to try, in order  (default "docker buildah podman")
#
# Exit codes: 0 built, 2 usage error, 3 no usable container engine on this machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
REGISTRY="${REGISTRY:-ghcr.io/repeatlab}"
TAG="${TAG:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/pyproject.toml" | head -n 1)}"

print_only=0
push=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --print) print_only=1 ;;
    --push) push=1 ;;
    cpu | cuda) targets+=("$arg") ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$arg' (allowed: cpu, cuda, --print, --push)" >&2; exit 2 ;;
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
  local dockerfile="images/Dockerfile.$1" image
  image="$(image_name "$1")"
  case "$engine" in
    docker) echo "DOCKER_BUILDKIT=1 docker build --pull -f $dockerfile -t $image ." ;;
    buildah) echo "buildah bud --pull --layers -f $dockerfile --ignorefile $dockerfile.dockerignore -t $image ." ;;
    podman) echo "podman build --pull -f $dockerfile --ignorefile $dockerfile.dockerignore -t $image ." ;;
    *) echo "build.sh: ENGINE must be docker, buildah or podman, not '$engine'" >&2; exit 2 ;;
  esac
}

cd "$root"
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
