"""The in-process model exported to ONNX with int8 weights (``embedding.local.runtime``).

On a CPU most of a transformer's time goes to float32 matrix products. Here every weight
matrix is quantized to 8 bits in blocks of 128 values (ONNX Runtime's ``MatMulNBits``), and
with ``accuracy_level`` 4 the products run in int8 with the activations quantized per block
too. Per-block scales keep the vectors close to float32 ones where ONNX Runtime's classic
dynamic quantization (one scale per activation tensor) does not: on all-MiniLM-L6-v2 its
top-10 neighbour lists kept 78 % of their members, against 92 % here. Speeds are in
``benchmarks/RESULTS.md`` (``local-cpu``); the test suite asserts the agreement.

The transformer is exported once with ``torch.onnx`` and quantized, and the result is kept
under ``embedding.local.exported_models``, named by what it was made from, so the export is
paid once per model. Tokenising and pooling stay sentence-transformers' own: only the
transformer's forward pass moves to ONNX Runtime.

sentence-transformers' own ONNX backend would do the same through ``optimum``, whose current
release pins transformers below the version this project runs; ``torch.onnx`` and ONNX
Runtime are what it uses underneath.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwen_assets.pipeline.embedding.core import EmbeddingConfigError, announce, duration
from qwen_assets.settings import fingerprint

# Part of every export's name: a change of the recipe below makes a new export.
EXPORT_RECIPE = {"format": 1, "bits": 8, "block_size": 128, "accuracy_level": 4}
MODEL_FILE = "model.int8.onnx"
OUTPUT = "last_hidden_state"


def require_onnx_runtime() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise EmbeddingConfigError(
            'embedding.local.runtime = "onnx-int8" needs the `onnx` extra: '
            "pip install 'qwen_assets[local,onnx]' (or set runtime = \"torch\")"
        ) from None


def export_name(model_name: str, model: Any) -> str:
    """Names an export by the model and what would change its file: the transformer's
    configuration, a sample of every weight tensor, the exporting libraries, the recipe."""
    import onnxruntime

    weights = hashlib.sha256()
    for name, tensor in model[0].auto_model.state_dict().items():
        weights.update(name.encode())
        weights.update(str(tuple(tensor.shape)).encode())
        weights.update(tensor.detach().flatten()[:64].float().cpu().numpy().tobytes())
    identity = {
        "config": model[0].auto_model.config.to_dict(),
        "weights": weights.hexdigest(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "recipe": EXPORT_RECIPE,
    }
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name).name or model_name).strip("-.")
    return f"{slug or 'model'}-{fingerprint(identity)}"


def exported_model(model_name: str, model: Any, folder: Path, log: logging.Logger) -> Path:
    """The int8 ONNX file of ``model``, exported on first use.

    Builds in a hidden staging folder and renames it into place when complete, under a file
    lock: a killed export leaves no half model (the next one clears its staging folder), and
    two builds at once export once."""
    from filelock import FileLock

    if not hasattr(model[0], "auto_model"):
        raise EmbeddingConfigError(
            f'runtime "onnx-int8" exports a transformer; {model_name} starts with a '
            f'{type(model[0]).__name__}: set embedding.local.runtime = "torch"'
        )
    target = folder / export_name(model_name, model)
    if (target / MODEL_FILE).exists():
        return target / MODEL_FILE
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f".{target.name}.lock")):
        if (target / MODEL_FILE).exists():
            return target / MODEL_FILE
        for leftover in folder.glob(f".{target.name}.staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        announce(log, f"exporting {model_name} to ONNX with 8-bit weights, once (into {target})")
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=folder))
        staging.chmod(0o755)  # mkdtemp's 0700 would keep a shared model folder private
        try:
            export_int8(model, staging)
            os.replace(staging, target)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if not isinstance(error, Exception):  # an interrupt stays one
                raise
            raise EmbeddingConfigError(
                f"cannot export {model_name} to ONNX ({first_line(error)}); "
                'set embedding.local.runtime = "torch"'
            ) from error
        announce(log, f"exported in {duration(time.monotonic() - started)}")
    return target / MODEL_FILE


def quantized_encoder(
    model_name: str, model: Any, folder: Path, log: logging.Logger
) -> QuantizedEncoder:
    """The encoder over the kept export, which is made again once if it cannot be loaded
    (a damaged or truncated file), so a bad file costs an export, never a stuck build."""
    onnx_file = exported_model(model_name, model, folder, log)
    try:
        return QuantizedEncoder(model, onnx_file)
    except Exception as error:  # ONNX Runtime raises its own types
        announce(
            log,
            f"the export in {onnx_file.parent} cannot be loaded ({first_line(error)}); "
            "exporting again",
        )
        shutil.rmtree(onnx_file.parent, ignore_errors=True)
        return QuantizedEncoder(model, exported_model(model_name, model, folder, log))


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


class LastHiddenState(torch.nn.Module):
    """The transformer as a function of token ids and mask: what gets exported."""

    def __init__(self, transformer: Any) -> None:
        super().__init__()
        self.transformer = transformer
        # A decoder (Qwen3) would otherwise build a key/value cache nobody reads.
        config = transformer.config.to_dict()
        self.options = {"use_cache": False} if "use_cache" in config else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, **self.options
        )
        return output.last_hidden_state


def export_int8(model: Any, folder: Path) -> None:
    """Export ``model``'s transformer to ONNX, then quantize its weights to int8, in ``folder``."""
    example = model.preprocess(["an example", "a slightly longer example text"])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    float_file = folder / "float32" / "model.onnx"
    float_file.parent.mkdir()
    # The exporter prints its steps, logs what it skips and warns about dynamic shapes: not
    # the user's business.
    with (
        torch.no_grad(),
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        quiet_logger("torch.onnx"),
        interrupts_kept(),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            LastHiddenState(model[0].auto_model).eval(),
            (example["input_ids"], example["attention_mask"]),
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=[OUTPUT],
            dynamic_shapes={
                "input_ids": {0: batch, 1: sequence},
                "attention_mask": {0: batch, 1: sequence},
            },
        )
    program.save(str(float_file), external_data=True)
    del program
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer

    config = matmul_nbits_quantizer.DefaultWeightOnlyQuantConfig(
        block_size=EXPORT_RECIPE["block_size"],
        is_symmetric=True,
        accuracy_level=EXPORT_RECIPE["accuracy_level"],
        bits=EXPORT_RECIPE["bits"],
    )
    with quiet_logger(matmul_nbits_quantizer.__name__):  # a line per matrix otherwise
        quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(
            onnx.load(str(float_file)), algo_config=config
        )
        quantizer.process()
    quantizer.model.save_model_to_file(str(folder / MODEL_FILE), True)
    shutil.rmtree(float_file.parent)
    (folder / "export.json").write_text(json.dumps(EXPORT_RECIPE) + "\n")


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """An interrupt (Ctrl-C, SIGTERM) during the block stays one. torch.onnx's exporter can
    catch the exception an interrupt raises inside the code it traces and go on with its next
    strategy (seen once in a dozen runs: the export finished as if nothing had happened); a
    signal seen here is delivered again once the block is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def remember(number: int, frame: Any) -> None:
        received.append(number)
        previous[number](number, frame)  # the usual handler, which raises

    for number, handler in previous.items():
        if callable(handler):  # a default or ignored signal has nothing to swallow
            signal.signal(number, remember)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:  # reached only when the interrupt's exception went missing
        signal.raise_signal(received[0])


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Only errors from logger ``name`` while in the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@lru_cache(maxsize=2)
def inference_session(onnx_file: str) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])


class QuantizedEncoder:
    """Encodes like ``SentenceTransformer.encode``, with the transformer run by ONNX Runtime."""

    def __init__(self, model: Any, onnx_file: Path) -> None:
        self.model = model
        self.session = inference_session(str(onnx_file))
        self.inputs = [node.name for node in self.session.get_inputs()]

    def encode(self, texts: list[str], prefix: str) -> np.ndarray:
        """One forward pass over ``texts`` (the local backend sizes the batch)."""
        with torch.inference_mode():
            features = self.model.preprocess(texts, prompt=prefix or None)
            (hidden,) = self.session.run(
                [OUTPUT], {name: features[name].cpu().numpy() for name in self.inputs}
            )
            features["token_embeddings"] = torch.from_numpy(hidden)
            for module in list(self.model)[1:]:  # pooling, normalisation
                features = module(features)
            return features["sentence_embedding"].float().numpy()
