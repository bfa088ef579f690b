#!/usr/bin/env bash
# Build the submission image and run it exactly as the evaluator does on the demo cases, then check it.
#   bash scripts/check_image.sh        (as root; .ci/run runs it)
# 1. Engine: docker where `docker info` answers, else Debian's podman (installed with apt when missing),
#    configured for a daemon-less root sandbox (podman_config below says which setting is for what).
# 2. Base image: the Dockerfile's BASE_IMAGE when the registry answers; else a stand-in of the same name
#    made with debootstrap from Debian's packages (bookworm: python3 3.11, the minor version CI runs).
# 3. Build (timed), the image's size and what it holds.
# 4. Per-call start cost on the CPU: the evaluator's command on an empty inputs folder (container start,
#    imports, model load, exit), beside a bare container start and the same call outside the image.
# 5. The demo cases through the harness twice: the evaluator's `docker container run` (one case in
#    inputs at a time, a fresh container per call) and this checkout's predict.sh. Every answer must have
#    the image's shape, dtype uint8 and only the case's labels, and the image must not score worse.
# 6. The CPU image (--build-arg TORCH=cpu: torch's CPU build, no CUDA library): built, its size, and the demo
#    cases answered inside it exactly as outside (the same torch and OpenVINO as .venv).
# 7. The server in both images (python -m inference.server): refused without a key beyond loopback, then asked
#    by nnInteractive's client (scripts/try_server.py) for a box and a click on a demo case.
# 8. The CodaBench file: `save | gzip` as <team>.tar.gz, loaded into an empty image store and run there.
# Env: SEGFM_TEAM (segfm: the file is segfm.tar.gz, the tags segfm:latest and segfm:cpu), SEGFM_CHECK_DIR (work
# folder, default /var/tmp/segfm-image-check: debootstrap's root file system, harness outputs, the .tar.gz),
# SEGFM_GZIP_LEVEL (1), TORCH_CPU_WHEELS (/opt/wheels: where the CPU image's torch wheel lies).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
team=${SEGFM_TEAM:-segfm}
work=${SEGFM_CHECK_DIR:-/var/tmp/segfm-image-check}
image="docker.io/library/$team:latest"  # what `docker load` of <team>.tar.gz must give: <team>:latest
cpu_image="docker.io/library/$team:cpu"
python="$repo/.venv/bin/python"
mkdir -p "$work"
started=$(date +%s)

say() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

[ -x "$python" ] || sh scripts/setup.sh

# --- 1. the engine -----------------------------------------------------------------------------------
podman_config() {
    # runc: Debian's podman may pick crun, which is not installed with it here; runc is.
    # cgroupfs: no systemd runs in this sandbox, so podman cannot ask it for cgroups (`-m 32G` needs one).
    # events_logger file: the default (journald) needs systemd too.
    # default_ulimits: podman gives a root container nofile 1048576 and a high nproc, above this sandbox's
    # hard limits, and raising a hard limit needs CAP_SYS_RESOURCE, which the sandbox does not grant: runc
    # then fails with "error setting rlimits for ready process: operation not permitted". nofile is this
    # shell's hard limit; nproc 32768 (above about 40000 runc's prlimit fails here even below the hard limit).
    local nofile
    nofile=$(ulimit -Hn)
    [ "$nofile" = unlimited ] && nofile=1048576
    cat > "$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    export CONTAINERS_CONF="$work/containers.conf"
}

if command -v docker > /dev/null && docker info > /dev/null 2>&1; then
    engine=docker
else
    engine=podman
    if ! command -v podman > /dev/null || ! command -v runc > /dev/null; then
        say "installing podman and runc from Debian's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc > /dev/null
    fi
    podman_config
    # the harness calls `docker`: hand it podman
    mkdir -p "$work/bin"
    printf '#!/bin/sh\nexec podman "$@"\n' > "$work/bin/docker"
    chmod +x "$work/bin/docker"
    export PATH="$work/bin:$PATH"
fi
say "engine: $engine ($($engine --version))"

# --- 2. the base image -------------------------------------------------------------------------------
base_ref=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
base_name=${base_ref%@*}
build_args=()
if [ "$engine" = podman ] && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    # networks that re-sign TLS: pip in the build trusts the host's CA bundle (mounted, not copied in)
    build_args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/pip-ca.pem:ro --build-arg PIP_CERT=/etc/pip-ca.pem)
fi
if $engine image inspect "$base_ref" > /dev/null 2>&1 || timeout 120 $engine pull -q "$base_ref" > /dev/null 2>&1; then
    say "base image: $base_ref"
else
    say "base image: $base_ref cannot be pulled; a stand-in named $base_name from Debian's packages"
    if ! $engine image inspect "$base_name" > /dev/null 2>&1; then
        command -v debootstrap > /dev/null || {
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap > /dev/null
        }
        rootfs="$work/rootfs"
        rm -rf "$rootfs"
        t0=$(now)
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
            "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" > "$work/debootstrap.log" 2>&1 \
            || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
            "$rootfs"/usr/share/man "$rootfs"/usr/share/info
        tar -C "$rootfs" -c . | $engine import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "docker.io/library/$base_name" > /dev/null
        rm -rf "$rootfs"
        echo "stand-in made in $(seconds "$t0" "$(now)") s"
    fi
    build_args+=(--build-arg "BASE_IMAGE=$base_name")
    [ "$engine" = podman ] && build_args+=(--pull=never)
fi

# --- 3. build ----------------------------------------------------------------------------------------
say "building $image"
version=$(git describe --always --dirty 2>/dev/null || echo unknown)
t0=$(now)
$engine build "${build_args[@]}" --build-arg "VERSION=$version" -t "$image" . > "$work/build.log" 2>&1 \
    || { tail -n 30 "$work/build.log" >&2; exit 1; }
build_s=$(seconds "$t0" "$(now)")
echo "built in $build_s s (log: $work/build.log)"

echo "image's Python: $($engine run --rm "$image" python3 --version)"
site=/opt/venv/lib/python3.11/site-packages
report_size() {  # report_size IMAGE TARGET_GB: the image's size and its parts, a warning over the target
    local size
    size=$($engine image inspect "$1" --format '{{.Size}}')
    say "$1: $(awk -v s="$size" 'BEGIN { printf "%.2f GB", s / 1e9 }') uncompressed (target <= $2 GB)"
    # du counts a file once per call: /opt/venv's line is what the paths before it left over
    $engine run --rm "$1" /bin/bash -c "cd $site && du -sb torch nvidia openvino numpy numpy.libs scipy scipy.libs \
        sympy networkx cuda /opt/venv /workspace 2>/dev/null || true" | awk -v total="$size" '
        { mb[$2] = $1 / 1e6 }
        function row(name, value) { printf "  %-46s %8.0f MB\n", name, value }
        END {
            np = mb["numpy"] + mb["numpy.libs"] + mb["scipy"] + mb["scipy.libs"]
            row(mb["nvidia"] > 0 ? "torch (without CUDA libraries)" : "torch (CPU build)", mb["torch"])
            if (mb["nvidia"] > 0) row("CUDA libraries (nvidia-*-cu12)", mb["nvidia"])
            if (mb["cuda"] > 0) row("cuda-bindings (torch 2.10 dependency)", mb["cuda"])
            row("OpenVINO", mb["openvino"])
            row("numpy + scipy", np)
            row("sympy + networkx (torch dependencies)", mb["sympy"] + mb["networkx"])
            row("rest of the venv (Python, small packages)", mb["/opt/venv"])
            row("ours: code, weights, OpenVINO IR and cache", mb["/workspace"])
            venv = mb["torch"] + mb["nvidia"] + mb["cuda"] + mb["openvino"] + np + mb["sympy"] + mb["networkx"] + mb["/opt/venv"]
            row("base image (Debian + CPython)", total / 1e6 - venv - mb["/workspace"])
        }'
    awk -v s="$size" -v t="$2" 'BEGIN { exit !(s > t * 1e9) }' && echo "WARNING: over the $2 GB target" >&2
    echo "$size" > "$work/size-${1##*:}"
}
report_size "$image" 4.0

# --- 4. per-call start cost --------------------------------------------------------------------------
empty="$work/start/inputs"
mkdir -p "$empty" "$work/start/outputs"
rm -f "$empty"/* "$work/start/outputs"/*
evaluator() {  # evaluator INPUTS OUTPUTS [IMAGE]: the evaluator's command, without --gpus (no GPU here)
    $engine container run -m 32G --rm -v "$1/":/workspace/inputs/ -v "$2/":/workspace/outputs/ "${3:-$image}" \
        /bin/bash -c "sh predict.sh"
}
time_runs() {  # time_runs COMMAND...: median wall seconds of 3 runs
    local times="" t0
    for _ in 1 2 3; do
        t0=$(now)
        "$@" > /dev/null 2>&1 || { echo "failed: $*" >&2; "$@" >&2; exit 1; }
        times="$times $(seconds "$t0" "$(now)")"
    done
    echo "$times" | median
}
bare_s=$(time_runs $engine container run -m 32G --rm "$image" /bin/bash -c true)
inside_s=$(time_runs evaluator "$empty" "$work/start/outputs")
outside_s=$(time_runs sh predict.sh "$empty" "$work/start/outputs")
say "per-call start cost on the CPU (median of 3; empty inputs: start, imports, model load, exit)"
printf '  %-46s %6s s\n' "bare container start (/bin/bash -c true)" "$bare_s" \
    "evaluator's command, inside the image" "$inside_s" "sh predict.sh outside the image (.venv)" "$outside_s"
awk -v s="$inside_s" 'BEGIN { exit !(s > 2.0) }' && echo "WARNING: over the 2 s target inside the image" >&2

# --- 5. the demo cases, inside and outside -----------------------------------------------------------
say "demo cases through the harness: inside the image, then outside"
for where in inside outside; do
    rm -rf "$work/$where"
    mkdir -p "$work/$where/work"
done
t0=$(now)
"$python" -m inference.harness run demo/inputs "$work/inside" --docker "$image" --cpu --workdir "$work/inside/work" \
    > "$work/inside/harness.log" 2>&1 || { tail -n 20 "$work/inside/harness.log" >&2; exit 1; }
echo "inside: $(seconds "$t0" "$(now)") s"
t0=$(now)
"$python" -m inference.harness run demo/inputs "$work/outside" --workdir "$work/outside/work" \
    > "$work/outside/harness.log" 2>&1 || { tail -n 20 "$work/outside/harness.log" >&2; exit 1; }
echo "outside: $(seconds "$t0" "$(now)") s"
"$python" -m scripts.compare_image_scores demo/inputs "$work/inside" "$work/outside"

# The image's torch (2.10.0, CUDA 12.8 build) is not CI's (2.13.0, CPU). The calls above ran the network
# through OpenVINO; this one runs it through torch inside and outside on the same case, answers compared
# (without the time budget, which would make the answer depend on how loaded the machine is).
say "torch backend, one call of CT_demo_round2 inside and outside"
parity="$work/torch-parity"
rm -rf "$parity"
mkdir -p "$parity/inputs" "$parity/inside" "$parity/outside"
cp demo/inputs/CT_demo_round2.npz "$parity/inputs/"
$engine container run -e SEGFM_BACKEND=torch -m 32G --rm -v "$parity/inputs/":/workspace/inputs/ \
    -v "$parity/inside/":/workspace/outputs/ "$image" /bin/bash -c "sh predict.sh /workspace/inputs /workspace/outputs --no-budget" > "$parity/inside.log" 2>&1 \
    || { cat "$parity/inside.log" >&2; exit 1; }
SEGFM_BACKEND=torch sh predict.sh "$parity/inputs" "$parity/outside" --no-budget > "$parity/outside.log" 2>&1 \
    || { cat "$parity/outside.log" >&2; exit 1; }
"$python" - "$parity/inside/CT_demo_round2.npz" "$parity/outside/CT_demo_round2.npz" <<'EOF'
import sys

import numpy as np

with np.load(sys.argv[1]) as inside, np.load(sys.argv[2]) as outside:
    a, b = inside["segs"], outside["segs"]
differ = int((a != b).sum())
print(f"torch backend: {differ} of {a.size} voxels differ between the image's torch and .venv's")
sys.exit(1 if differ > a.size // 1000 else 0)
EOF

# --- 6. the CPU image ---------------------------------------------------------------------------------
say "building $cpu_image (TORCH=cpu)"
cpu_args=("${build_args[@]}" --build-arg TORCH=cpu)
wheels=${TORCH_CPU_WHEELS:-/opt/wheels}
if [ "$engine" = podman ] && [ -d "$wheels" ]; then
    # the lock's torch 2.13.0+cpu is not on PyPI: pip finds the locked file in this folder, mounted for the build only
    cpu_args+=(-v "$wheels:/opt/wheels:ro" --build-arg PIP_FIND_LINKS=/opt/wheels)
else
    cpu_args+=(--build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
fi
t0=$(now)
$engine build "${cpu_args[@]}" --build-arg "VERSION=$version" -t "$cpu_image" . > "$work/build-cpu.log" 2>&1 \
    || { tail -n 30 "$work/build-cpu.log" >&2; exit 1; }
cpu_build_s=$(seconds "$t0" "$(now)")
echo "built in $cpu_build_s s (log: $work/build-cpu.log)"
report_size "$cpu_image" 1.5
$engine run --rm "$cpu_image" python -c "import pathlib, site, sys, torch
cuda = sorted(p.name for p in pathlib.Path(site.getsitepackages()[0]).glob('nvidia*'))
print(f'torch {torch.__version__}, CUDA build: {torch.version.cuda}, CUDA packages: {cuda or None}')
sys.exit(1 if torch.version.cuda or cuda else 0)"
say "the demo cases in the CPU image and outside (no budget: the answers must be the same)"
same="$work/cpu-same"
rm -rf "$same"
mkdir -p "$same/inside" "$same/outside"
$engine container run -m 32G --rm -v "$repo/demo/inputs/":/workspace/inputs/:ro -v "$same/inside/":/workspace/outputs/ \
    "$cpu_image" /bin/bash -c "sh predict.sh /workspace/inputs /workspace/outputs --no-budget" > "$same/inside.log" 2>&1 \
    || { cat "$same/inside.log" >&2; exit 1; }
sh predict.sh demo/inputs "$same/outside" --no-budget > "$same/outside.log" 2>&1 || { cat "$same/outside.log" >&2; exit 1; }
"$python" - "$same/inside" "$same/outside" <<'EOF'
import sys
from pathlib import Path

import numpy as np

inside, outside = Path(sys.argv[1]), Path(sys.argv[2])
names = sorted(p.name for p in outside.glob("*.npz"))
differ = {}
for name in names:
    with np.load(inside / name) as a, np.load(outside / name) as b:
        differ[name] = int((a["segs"] != b["segs"]).sum())
print("voxels that differ between the CPU image and .venv: " + ", ".join(f"{n} {d}" for n, d in differ.items()))
sys.exit(1 if len(names) != 3 or any(differ.values()) else 0)
EOF

# --- 7. the server, in both images -------------------------------------------------------------------
serve_check() {  # serve_check IMAGE: refused beyond loopback without a key; with one, a viewer's box and click answered
    local name="segfm-server-check-$$" key="check-$$" port refused
    if refused=$($engine run --rm "$1" python -m inference.server --host 0.0.0.0 2>&1); then
        echo "FAIL: the server in $1 started on 0.0.0.0 without a key" >&2
        exit 1
    fi
    echo "without a key: $refused"
    port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # the host's network: no port mapping to set up in a sandbox (users publish the port: -p 1527:1527)
    $engine run -d --rm --name "$name" --network host "$1" \
        python -m inference.server --host 0.0.0.0 --port "$port" --api-key "$key" > /dev/null
    if ! "$python" -m scripts.try_server "http://127.0.0.1:$port" --api-key "$key" --wait 180; then
        $engine logs "$name" >&2 || true
        $engine stop "$name" > /dev/null 2>&1 || true
        exit 1
    fi
    $engine stop "$name" > /dev/null
}
for served in "$image" "$cpu_image"; do
    say "the server in $served"
    serve_check "$served"
done

# --- 8. the CodaBench file ---------------------------------------------------------------------------
say "CodaBench file: $team.tar.gz"
archive="$work/$team.tar.gz"
t0=$(now)
# gzip -1 here (SEGFM_GZIP_LEVEL): -6, the default, took 3x as long on 2 busy cores for a file ~10 % smaller
level=${SEGFM_GZIP_LEVEL:-1}
if [ "$engine" = podman ]; then
    podman save --format docker-archive "$image" | gzip "-$level" -c > "$archive"
else
    docker save "$team:latest" | gzip "-$level" -c > "$archive"
fi
echo "saved in $(seconds "$t0" "$(now)") s: $(du -m "$archive" | cut -f1) MB gzipped"
if [ "$engine" = podman ]; then
    # load into an empty image store, as the evaluator's machine would, and answer one demo case from it
    store="$work/load-store"
    drop_store() { umount "$store/root/overlay" 2> /dev/null || true; rm -rf "$store"; }  # podman leaves it mounted
    drop_store
    loaded=(podman --root "$store/root" --runroot "$store/run")
    t0=$(now)
    # decompressed first, as `docker load` does itself: podman 4.3 reads a gzipped docker-archive file as a
    # plain tar ("archive/tar: invalid tar header")
    tags=$(gzip -dc "$archive" | "${loaded[@]}" load 2>/dev/null | sed -En 's/^Loaded image(\(s\))?: //p')
    echo "loaded in $(seconds "$t0" "$(now)") s"
    case "$tags" in
        "$team:latest" | "docker.io/library/$team:latest") echo "tag in the file: $tags (docker load gives $team:latest)" ;;
        *) echo "FAIL: the file's tag is '$tags', the evaluator runs $team:latest" >&2; exit 1 ;;
    esac
    rm -rf "$work/load/inputs" "$work/load/outputs"
    mkdir -p "$work/load/inputs" "$work/load/outputs"
    cp demo/inputs/CT_demo_box.npz "$work/load/inputs/"
    "${loaded[@]}" container run -m 32G --rm -v "$work/load/inputs/":/workspace/inputs/ \
        -v "$work/load/outputs/":/workspace/outputs/ "$team:latest" /bin/bash -c "sh predict.sh" > "$work/load/log" 2>&1 \
        || { cat "$work/load/log" >&2; exit 1; }
    "$python" - "$work/load/inputs/CT_demo_box.npz" "$work/load/outputs/CT_demo_box.npz" <<'EOF'
import sys

import numpy as np

with np.load(sys.argv[1], allow_pickle=True) as case, np.load(sys.argv[2]) as answer:
    segs = answer["segs"]
    assert segs.shape == case["imgs"].shape and segs.dtype == np.uint8, (segs.shape, segs.dtype)
    assert segs.max() > 0, "empty answer"
print(f"loaded file answers {sys.argv[1].rsplit('/', 1)[-1]}: shape {segs.shape}, labels {sorted(np.unique(segs))}")
EOF
    "${loaded[@]}" rmi -a -f > /dev/null 2>&1 || true
    drop_store
fi

say "image check passed in $(( $(date +%s) - started )) s (builds: $build_s s, CPU image $cpu_build_s s)"
echo "sizes: $image $(awk '{ printf "%.2f GB", $1 / 1e9 }' "$work/size-latest"), $cpu_image" \
    "$(awk '{ printf "%.2f GB", $1 / 1e9 }' "$work/size-cpu") uncompressed"
