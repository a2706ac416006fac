"""The README's "Coming from MiniMind" commands, run as written: a MiniMind-3 checkpoint (a `.pth`
in MiniMind's layout, at a tiny size), MiniMind's own tokenizer and chat template
(../shared/minimind), and SFT data in MiniMind's formats (plain, reasoning, inline <think>,
tool calls) stand in for a clone of MiniMind. Only the variables the block sets are given
other values, and the training line gets `--max-steps 2`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import ROOT, TINY

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
MINIMIND = ROOT.parent / "shared" / "minimind"
pytestmark = pytest.mark.skipif(not (MINIMIND / "tokenizer.json").is_file(), reason="../shared/minimind is not here")

SHAPE = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "qk_norm": True, "mlp_hidden": 160, "norm_eps": 1e-6,
         "rope_theta": 1e6, "vocab": 6400, "seq_len": 128, "dtype": "float32"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
RECORDS = [
    {"conversations": [{"role": "user", "content": "What is the capital of France?"},
                       {"role": "assistant", "content": "Paris."}]},
    {"conversations": [{"role": "system", "content": "You are minimind."}, {"role": "user", "content": "2 + 3?"},
                       {"role": "assistant", "content": "5.", "reasoning_content": "2 + 3 = 5"}]},
    {"conversations": [{"role": "user", "content": "4 + 4?"},
                       {"role": "assistant", "content": "<think>\nfour and four\n</think>\n\n8."}]},
    {"conversations": [{"role": "system", "content": "You may call tools.", "tools": json.dumps(TOOLS)},
                       {"role": "user", "content": "Weather in Paris?"},
                       {"role": "assistant", "content": "", "tool_calls": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}])},
                       {"role": "tool", "content": json.dumps({"temperature": 21})},
                       {"role": "assistant", "content": "It is 21 degrees in Paris."}]},
]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- coming-from-minimind:[^>]*-->\n```bash\n(.*?)```", text, re.DOTALL)
    assert block, "the README's Coming from MiniMind block is gone"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_s_minimind_commands_run(tmp_path):
    clone = tmp_path / "minimind"
    (clone / "out").mkdir(parents=True)
    shutil.copytree(MINIMIND, clone / "model")
    (clone / "dataset").mkdir()
    (clone / "dataset" / "sft_t2t_mini.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS * 4),
                                                        encoding="utf-8")
    config = transformers.Qwen3Config(vocab_size=6400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=16, intermediate_size=160, rms_norm_eps=1e-6,
                                      max_position_embeddings=128, tie_word_embeddings=True,
                                      rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(0)
    teacher = transformers.Qwen3ForCausalLM(config)
    torch.save({k: v.half() for k, v in teacher.state_dict().items()}, clone / "out" / "full_sft_768.pth")  # as MiniMind saves
    spec = {**TINY, "model_name": "MiniMind-3-tiny", "hyperparams": {**{k: v for k, v in TINY["hyperparams"].items() if k != "mlp_ratio"}, **SHAPE},
            "techniques": {"sft": {"enabled": True, "datasets": ["sft_t2t_mini"], "lr": 1e-4, "batch_size": 4}}}
    (tmp_path / "m3.json").write_text(json.dumps(spec))
    env = {**os.environ, "MINIMIND": str(clone), "SPEC": str(tmp_path / "m3.json"), "COLUMNS": "200",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in readme_commands():
        if re.match(r"^(MINIMIND|SPEC)=", command):
            continue  # the stand-ins above
        if command.startswith("minimind-spec train"):
            command += " --max-steps 2 --no-progress"
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "m3")
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf" / "m3")
    assert tokenizer.chat_template == json.loads((MINIMIND / "tokenizer_config.json").read_text())["chat_template"]
    import gguf

    reader = gguf.GGUFReader(str(tmp_path / "m3-q8_0.gguf"))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "qwen3"
