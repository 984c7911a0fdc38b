#!/usr/bin/env bash
# Collect the pure-Python wheels the GPU machine lacks into the ignored folder .whl/ and print the line
# that installs them there.
#
# The GPU machine (an H200 lent through the device tool) has Python 3.12 with torch, torchvision,
# transformers, huggingface_hub, tokenizers, timm, safetensors, numpy, pillow, opencv, scikit-image,
# regex, requests, httpx, tqdm, zipp, ... but no diffusers, open_clip_torch, segment-anything, DeepCache
# (the PyPI peer of bench/deepcache.py) or ftfy, and it reaches no package registry. This script
# downloads those and their pure-Python needs that it lacks too (ftfy -> wcwidth; diffusers ->
# importlib_metadata -> lazy-importer), each at the version installed in this repository's venv (the
# versions the tests ran with), as py3-none-any wheels only (--platform any: one wheel serves any
# Python 3 there). Every other need of theirs is already on the GPU machine.
#
#   bash bench/gpu-wheels.sh                 # PYTHON=... to read versions from another interpreter
#
# Then give the device tool `carry: [".whl"]` and begin its command with the printed install line.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
dest=.whl
names=(diffusers open_clip_torch segment-anything DeepCache ftfy wcwidth importlib_metadata lazy-importer)

specs=()
for name in "${names[@]}"; do
    version=$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) || {
        echo "error: $name is not installed in $python; install it there first (its version is the one carried)" >&2
        exit 2
    }
    specs+=("$name==$version")
done

mkdir -p "$dest"
rm -f "$dest"/*.whl  # one version of each: two of one package stop the whole install there
"$python" -m pip download --quiet --no-deps --only-binary=:all: --implementation py --abi none --platform any \
    --python-version 3.12 -d "$dest" "${specs[@]}"

for wheel in "$dest"/*.whl; do
    case "$wheel" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
        *) echo "error: $wheel is not a pure-Python wheel" >&2; exit 1 ;;
    esac
done
echo "wheels in $dest/ ($(du -ch "$dest"/*.whl | tail -1 | cut -f1) in all):"
ls -l "$dest"/*.whl | awk '{printf "  %9d  %s\n", $5, $NF}'
echo "install line for the GPU machine (carry: [\"$dest\"]):"
echo "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $dest/*.whl && export PYTHONPATH=/tmp/site || exit;"
