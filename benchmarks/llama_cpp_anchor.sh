#!/usr/bin/env bash
# Build llama.cpp's llama-quantize (with --target-size / --target-bpw, PR #15550), llama-imatrix and
# llama-perplexity from the branch `quantize` of EAddario/llama.cpp into a cache folder: the anchor that
# benchmarks/beat_target_size.py compares quantsense against. A benchmark tool, never part of CI.
#
#   benchmarks/llama_cpp_anchor.sh [GIT_DIR]
#
# GIT_DIR: a clone (or bare mirror) of github.com/EAddario/llama.cpp that has the pinned commit; without it the
# script clones the repository (needs internet). Blobs missing from a partial mirror (some vocab files under
# models/, which nothing built here reads) are left out of the exported tree.
# Output: $QS_LLAMA_CPP_CACHE (default ~/.cache/quantsense/llama-cpp-anchor)/<commit>/bin/{llama-quantize,...}.
# Point the benchmark at it with --llama-bin that folder (or export QS_LLAMA_BIN=that folder).
set -euo pipefail
COMMIT=a50ddb660834b626befdb5b9aeda9bd6a2dd5666  # upstream b10572 plus PR #15550 (branch quantize)
CACHE="${QS_LLAMA_CPP_CACHE:-$HOME/.cache/quantsense/llama-cpp-anchor}/$COMMIT"
BIN="$CACHE/bin"
if [ -x "$BIN/llama-quantize" ] && [ -x "$BIN/llama-imatrix" ] && [ -x "$BIN/llama-perplexity" ]; then
  echo "already built: $BIN"; echo "use: --llama-bin $BIN"; exit 0
fi
GIT_DIR_IN="${1:-}"
WORK="$CACHE/work"
rm -rf "$WORK" && mkdir -p "$WORK/src"
if [ -z "$GIT_DIR_IN" ]; then
  git clone --filter=blob:none --no-checkout https://github.com/EAddario/llama.cpp "$WORK/clone"
  GIT_DIR_IN="$WORK/clone/.git"
  git --git-dir="$GIT_DIR_IN" fetch -q origin "$COMMIT"
fi
export GIT_DIR="$GIT_DIR_IN"
git cat-file -e "$COMMIT^{commit}" || { echo "commit $COMMIT not in $GIT_DIR_IN" >&2; exit 2; }
# an index of the commit's tree without the paths whose blobs are missing (a partial mirror lacks a few vocab
# files under models/), checked out into the source folder
export GIT_INDEX_FILE="$WORK/index" GIT_WORK_TREE="$WORK/src"
git read-tree "$COMMIT"
git ls-tree -r "$COMMIT" | while read -r mode kind hash path; do
  if ! git cat-file -e "$hash" 2>/dev/null; then echo "left out (blob missing): $path" >&2; git update-index --force-remove "$path"; fi
done
git checkout-index -a -f --prefix="$WORK/src/"
unset GIT_INDEX_FILE GIT_WORK_TREE
unset GIT_DIR
cmake -S "$WORK/src" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$WORK/build" --target llama-quantize llama-imatrix llama-perplexity -j "$(nproc)"
mkdir -p "$BIN"
cp "$WORK/build/bin/llama-quantize" "$WORK/build/bin/llama-imatrix" "$WORK/build/bin/llama-perplexity" "$BIN/"
help="$("$BIN/llama-quantize" --help 2>&1 || true)"  # it exits 1 after printing its usage
grep -q -- "--target-size" <<< "$help" || { echo "built llama-quantize has no --target-size" >&2; exit 1; }
rm -rf "$WORK"
echo "built: $BIN"; echo "use: --llama-bin $BIN"
