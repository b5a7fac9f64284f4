#!/usr/bin/env bash
# Installs clipseg with everything its features and tests need. Safe to re-run (it skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# WordNet for class removal in training (Debian's database; read by nltk). Optional elsewhere.
if [ ! -e /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null) \
    || echo "note: could not install wordnet-base (WordNet class removal will be unavailable)" >&2
fi

# torch first, pinned to the CPU build available here: a looser spec can pull a multi-GB CUDA build.
# On other machines any torch >= 2.1 for your platform works: install it before running this script.
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install -q "torch==2.13.0"
"$PYTHON" -m pip install -q -e ".[all,test]"
