#!/usr/bin/env bash
# Copy the committed seed files into the (git-ignored) working corpus.
# Regenerate the seeds themselves with:
#   DDIST_WRITE_SEEDS=1 cargo test --release --lib dist::file::tests::fuzz_seeds_are_current
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/ddist
cp -n seeds/ddist/* corpus/ddist/
echo "corpus/ddist: $(ls corpus/ddist | wc -l) files"
