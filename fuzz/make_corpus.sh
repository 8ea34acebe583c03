#!/usr/bin/env bash
# Copy the committed seed files into the (git-ignored) working corpus.
# Regenerate the seeds themselves with:
#   cargo test --release --lib dist::file::tests::write_fuzz_seeds -- --ignored
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/ddist
cp -n seeds/ddist/* corpus/ddist/
echo "corpus/ddist: $(ls corpus/ddist | wc -l) files"
