"""Export a run for llama.cpp and Ollama: the merged model as a GGUF (+ an Ollama Modelfile), or the
adapter alone in llama.cpp's LoRA GGUF layout.

The flow reads top to bottom: check (cheap, no writes), merge (`lora.merge_adapter` into a temporary
directory), convert (tensors renamed through gguf-py's name tables, tokenizer and chat template into
the metadata; q4_0 and the k-quants by llama.cpp's own quantizer, `export/quantize.py`), record (the
Modelfile, and the commands that run the file). Conventions follow llama.cpp's `convert_hf_to_gguf.py` and
`convert_lora_to_gguf.py`, so the files load in llama.cpp and in transformers' GGUF reader alike.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np

from loratune.errors import ExportError
from loratune.export.gguf_arch import ArchSpec, TensorNames, arch_spec, permute_qk
from loratune.export.gguf_vocab import write_vocab
from loratune.export.llama_runtime import require_runtime
from loratune.export.modelfile import generation_settings, modelfile_text
from loratune.export.quantize import QUANTIZED_OUTTYPES, quantize_gguf
from loratune.models.load import resolve_source
from loratune.models.lora import adapter_and_base, merge_adapter

FORMATS = ("gguf", "gguf-lora")
WRITTEN_OUTTYPES = ("f32", "f16", "q8_0")  # written here; the others by llama.cpp's quantizer from an f32 GGUF
OUTTYPES = WRITTEN_OUTTYPES + tuple(QUANTIZED_OUTTYPES)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the GGUF, the Modelfile beside it (None for an adapter), the tensor count."""

    path: Path
    modelfile: Path | None
    tensors: int
    commands: tuple[str, ...] = ()  # shell lines that run the file in llama.cpp and Ollama


@contextlib.contextmanager
def _gguf_file(output: Path, arch: Any) -> Iterator[Any]:
    """A GGUFWriter whose file appears at `output` only once complete: a failed export leaves nothing."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[arch])
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(output)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)


def check_options(fmt: str, outtype: str, output: Path) -> None:
    """Reject bad options before any model is loaded; messages name the flag at fault."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if outtype not in OUTTYPES:
        raise ExportError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    if outtype in QUANTIZED_OUTTYPES and fmt == "gguf-lora":
        raise ExportError(f"--outtype {outtype} applies to --format gguf; an adapter is written as "
                          f"{', '.join(WRITTEN_OUTTYPES)}")
    if output.suffix.lower() != ".gguf":
        raise ExportError(f"--output {output}: the file name must end in .gguf")
    if output.exists():
        raise ExportError(f"--output {output}: already exists; choose another name or delete it")
    if fmt == "gguf" and (output.parent / "Modelfile").exists():
        raise ExportError(f"{output.parent / 'Modelfile'}: already exists; export into another folder")
    if outtype in QUANTIZED_OUTTYPES:
        require_runtime()  # llama.cpp's quantizer: missing, it fails now rather than after the merge


def export_run(
    run: str | Path, output: str | Path, *, fmt: str = "gguf", outtype: str = "f16", base: str | None = None
) -> ExportResult:
    """Export a run's adapter: merged into its base as a GGUF with a Modelfile (`gguf`), or alone (`gguf-lora`)."""
    from transformers import AutoConfig, AutoTokenizer

    output = Path(output)
    check_options(fmt, outtype, output)
    adapter_dir, meta, base_source = adapter_and_base(run, base)
    resolved = resolve_source(base_source)
    config = AutoConfig.from_pretrained(
        resolved.path, gguf_file=resolved.gguf_file, local_files_only=resolved.local_files_only)
    spec = arch_spec(config.model_type)
    name = meta.get("name") or Path(run).resolve().name

    if fmt == "gguf-lora":
        count = write_lora_gguf(adapter_dir, config, spec, output, outtype, name=name)
        return ExportResult(output, None, count, run_commands(output, None, chat=False, base=str(base_source)))
    # The merged safetensors model (and, for llama.cpp's quantizer, an f32 GGUF) is written next to
    # the output so a full disk fails early, and removed afterwards: the GGUF is the product.
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".loratune-export-") as tmp:
        merged = merge_adapter(run, Path(tmp) / "merged", base=base)
        if outtype in QUANTIZED_OUTTYPES:
            full = Path(tmp) / "model-f32.gguf"
            count = write_gguf(merged, full, "f32", name=name)
            quantize_gguf(full, Path(tmp) / "quantized.gguf", outtype)
            (Path(tmp) / "quantized.gguf").replace(output)
        else:
            count = write_gguf(merged, output, outtype, name=name)
        tokenizer = AutoTokenizer.from_pretrained(merged)
        text = modelfile_text(tokenizer, output.name, meta, generation_settings(adapter_dir))
    modelfile = output.parent / "Modelfile"
    modelfile.write_text(text, encoding="utf-8")
    chat = meta.get("use_chat_template") is not False and bool(getattr(tokenizer, "chat_template", None))
    return ExportResult(output, modelfile, count, run_commands(output, modelfile, chat=chat))


def run_commands(path: Path, modelfile: Path | None, *, chat: bool, base: str = "") -> tuple[str, ...]:
    """The shell lines that run an exported file: llama.cpp's llama-cli (greedy, as evaluation decodes)
    and Ollama with the Modelfile; for an adapter, both on top of a GGUF of its base model."""
    if modelfile is None:
        return (f"llama.cpp: llama-cli -m BASE.gguf --lora {path} --temp 0   (BASE.gguf: a GGUF of {base})",
                f"Ollama: a Modelfile with the lines `FROM BASE.gguf` and `ADAPTER {path.resolve()}`, "
                "then ollama create NAME -f Modelfile")
    # llama-cli chats when the GGUF has a chat template; a run trained on plain prompts completes text.
    cli = f"llama-cli -m {path} --temp 0" + ("" if chat else ' -no-cnv -p "PROMPT"')
    return (f"llama.cpp: {cli}",
            f"Ollama: ollama create NAME -f {modelfile} && ollama run NAME")


# --- tensors ------------------------------------------------------------------------------------


def _encode(data: np.ndarray, outtype: str) -> tuple[np.ndarray, Any]:
    """(array, ggml type) for one tensor. Vectors stay f32 as llama.cpp keeps them; a matrix whose
    rows are not a multiple of Q8_0's 32-value block falls back to f16, as llama.cpp's converter does."""
    types = gguf.GGMLQuantizationType
    data = np.ascontiguousarray(data, dtype=np.float32)
    if outtype == "f32" or data.ndim < 2:
        return data, types.F32
    if outtype == "q8_0":
        try:
            return gguf.quants.quantize(data, types.Q8_0), types.Q8_0
        except gguf.quants.QuantError:
            pass
    return data.astype(np.float16), types.F16


def write_gguf(model_dir: str | Path, output: str | Path, outtype: str = "f16", *, name: str | None = None) -> int:
    """Convert a transformers model directory (a merged run, or any supported model) into one GGUF file
    of type f32, f16 or q8_0 (`export_run` quantizes further with llama.cpp).

    Written to `<output>.partial` and renamed at the end, so a failed export leaves no half file.
    Returns the number of tensors written.
    """
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    model_dir, output = Path(model_dir), Path(output)
    config = AutoConfig.from_pretrained(model_dir)
    spec = arch_spec(config.model_type)
    names = TensorNames(spec, config)
    tensors = {k: v for file in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(file)).items()}
    file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[outtype]
    count = 0
    with _gguf_file(output, names.arch) as writer:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or model_dir.name)
        writer.add_file_type(gguf.LlamaFileType[file_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        spec.write_hparams(writer, config)
        write_vocab(writer, model_dir, config.vocab_size)
        for hf_name, data in tensors.items():
            # Tied models share the embedding; llama.cpp (and transformers' reader) tie when output.weight is absent.
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            gguf_name, converted = names.convert(hf_name, data)
            encoded, ggml_type = _encode(converted, outtype)
            writer.add_tensor(gguf_name, encoded, raw_dtype=ggml_type)
            count += 1
    return count


# --- adapter alone ------------------------------------------------------------------------------


def write_lora_gguf(
    adapter_dir: Path, config: Any, spec: ArchSpec, output: Path, outtype: str = "f32", *, name: str = "adapter"
) -> int:
    """The adapter in llama.cpp's LoRA layout: `<tensor>.lora_a` (r x in), `<tensor>.lora_b` (out x r),
    `adapter.lora.alpha`; llama.cpp scales by alpha / r as peft does. q/k's B rows are permuted like
    the base weights, since W + B A permuted row-wise is W' + (P B) A."""
    from safetensors.numpy import load_file

    lora = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    unsupported = [key for key in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "modules_to_save")
                   if lora.get(key)]
    if lora.get("bias", "none") != "none":
        unsupported.append(f"bias={lora['bias']}")
    if unsupported:
        raise ExportError(
            f"{adapter_dir}: llama.cpp's LoRA format cannot express {', '.join(unsupported)}; "
            "use --format gguf to export the merged model instead"
        )
    names = TensorNames(spec, config)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        part = next((p for p in ("lora_A", "lora_B") if f".{p}." in key), None)
        if part is None:
            raise ExportError(f"{adapter_dir}: tensor {key!r} is not a LoRA A/B matrix; use --format gguf")
        pairs.setdefault(key.replace("base_model.model.", "", 1).replace(f".{part}", ""), {})[part] = value

    with _gguf_file(output, names.arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora["lora_alpha"]))
        writer.add_name(name)
        for base_name, pair in sorted(pairs.items()):
            gguf_name, heads = names.lookup(base_name)
            lora_b = pair["lora_B"] if heads is None else permute_qk(pair["lora_B"], heads)
            for suffix, data in ((".lora_a", pair["lora_A"]), (".lora_b", lora_b)):
                encoded, ggml_type = _encode(data, outtype)
                writer.add_tensor(gguf_name + suffix, encoded, raw_dtype=ggml_type)
    return 2 * len(pairs)
