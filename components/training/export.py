"""Back to the user's server: adapters fused into the base model (mlx-lm's fuse), and for Ollama
a Modelfile beside the fused safetensors with the chat template and the system prompt trained on.

No GGUF: mlx-lm's GGUF writer emits a SentencePiece vocabulary, which is wrong for the byte-level
BPE tokenizers of SmolLM2, Llama 3 and Qwen3; Ollama imports the safetensors directory itself.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from components.files import build_dir, write_json, write_text
from components.settings import Settings

log = logging.getLogger(__name__)


class ExportConfig(Settings):
    """``finetune`` group: what the finetune stage leaves for the user's server."""

    export: Literal["none", "fused", "ollama"] = "none"
    ollama_name: str | None = Field(None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._:/-]*$")  # null: telecom-<model>


# Ollama's Go templates for the chat formats our models use, keyed by a marker of their Jinja
# template; another format is left to Ollama's own detection from tokenizer_config.json.
_TEMPLATES = {
    "<|im_start|>": ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
                     '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}'
                     '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n', ["<|im_end|>"]),
    "<|start_header_id|>": ('{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n'
                            '{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user'
                            '<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>'
                            'assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>', ["<|eot_id|>"]),
    "<start_of_turn>": ('<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}'
                        '<end_of_turn>\n<start_of_turn>model\n{{ .Response }}<end_of_turn>\n',
                        ["<end_of_turn>"]),
}


def modelfile(chat_template: str | None, system_prompt: str | None) -> str:
    lines = ["# Made by telecom-finetune: the base model with its LoRA adapters fused in.",
             "FROM ."]
    for marker, (template, stops) in _TEMPLATES.items():
        if chat_template and marker in chat_template:
            lines.append(f'TEMPLATE """{template}"""')
            lines += [f'PARAMETER stop "{s}"' for s in stops]
            break
    else:
        lines.append("# chat template: detected by Ollama from tokenizer_config.json")
    if system_prompt:
        lines.append('SYSTEM """' + system_prompt.replace('"""', "'''") + '"""')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def fuse(model_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Fuse LoRA adapters into the base weights and save an mlx-lm / Hugging Face model dir."""
    from components.training.lora import import_mlx

    import_mlx()
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import load, save

    model, tokenizer, config = load(str(model_dir), adapter_path=str(adapter_dir), return_config=True)
    fused = [(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    save(out, str(model_dir), model, tokenizer, config, donate_model=False)


def default_name(model_name: str) -> str:
    return "telecom-" + re.sub(r"[^a-zA-Z0-9._-]+", "-", model_name).strip("-").lower()


def export(model_dir: Path, adapter_dir: Path, out_dir: Path, cfg: ExportConfig, model_name: str,
           system_prompt: str | None = None) -> dict[str, float]:
    """Write ``out_dir`` (always, atomically): ``export.json`` and, unless ``none``, ``fused/``
    (+ ``Modelfile`` for ``ollama``). Returns metrics; logs the ``ollama create`` command."""
    record: dict = {"export": cfg.export}
    with build_dir(out_dir) as tmp:
        if cfg.export != "none":
            fuse(model_dir, adapter_dir, tmp / "fused")
            record["fused"] = "fused"
        if cfg.export == "ollama":
            tok_cfg = tmp / "fused" / "tokenizer_config.json"
            template = json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template") if tok_cfg.is_file() else None
            jinja = tmp / "fused" / "chat_template.jinja"
            if not template and jinja.is_file():
                template = jinja.read_text(encoding="utf-8")
            write_text(tmp / "fused" / "Modelfile", modelfile(template, system_prompt))
            name = cfg.ollama_name or default_name(model_name)
            record.update(ollama_name=name,
                          command=f"ollama create {name} -f {out_dir.resolve() / 'fused' / 'Modelfile'}")
        write_json(tmp / "export.json", record)
    if "command" in record:
        log.info("finetune: the tuned model is ready for Ollama:\n    %s\n    ollama run %s",
                 record["command"], record["ollama_name"])
        print(f"\nServe the tuned model with Ollama:\n    {record['command']}\n    ollama run {record['ollama_name']}")
    elif cfg.export == "fused":
        log.info("finetune: fused model written to %s", out_dir / "fused")
    return {"finetune/exported": float(cfg.export != "none")}
