"""Tensor and state_dict files: written atomically, read with ``weights_only=True``.

Every stage's tensors go through here (prepared data, weights); only plain
tensors and Python values are ever loaded, so no pickled code runs. Errors
name the file and the stage that makes it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from dlpipe.errors import PipelineError, size_text
from dlpipe.io import atomic_path


def save_tensors(path: str | Path, obj: dict, immediate: bool = False) -> None:
    """``immediate``: on disk at once, even inside ``io.outputs_together`` (a checkpoint)."""
    # Through a file handle: torch.save names the zip's inner folder after a
    # *path* (here a random temp name), which would make equal tensors give
    # different bytes and different DVC hashes.
    with atomic_path(path, immediate) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Best weights as a plain state_dict of CPU tensors: loads on any machine
    with ``torch.load(path, weights_only=True)``, no map_location needed."""
    save_tensors(path, {key: value.detach().cpu() for key, value in state_dict.items()})


# A torch file is a zip archive, and its members may be deflated: a file of a few MB can
# declare gigabytes, which torch.load would inflate into memory before any check. The
# declared sizes are read from the zip's directory (no data) and refused past a cap: for a
# state dict, what the model it is loaded into holds (x2, plus 1 MiB of pickle and names);
# for other tensor files, a fixed cap (the largest, CIFAR-10's prepared images, is 150 MiB).
MAX_TENSOR_FILE_BYTES = 8 << 30


def model_bytes(model: torch.nn.Module) -> int:
    """The bytes of ``model``'s state dict: the size its weights file holds, near enough."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def weights_cap(model: torch.nn.Module) -> int:
    return 2 * model_bytes(model) + (1 << 20)


def check_inflated_size(path: Path, cap: int) -> None:
    """Refuse a torch file whose members declare more than ``cap`` bytes once inflated."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # not a zip: torch.load says so (a legacy file is no bigger than it looks)
    if declared > cap:
        raise PipelineError(f"{path}: {size_text(declared)} once inflated (the file is "
                            f"{size_text(path.stat().st_size)}), over the cap of {size_text(cap)}; "
                            "refusing to load it")


def load_tensors(path: str | Path, producer: str) -> dict[str, torch.Tensor]:
    """A dict of tensors written by stage ``producer``, loaded on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run {producer} first")
    check_inflated_size(path, MAX_TENSOR_FILE_BYTES)
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"{path}: unreadable ({type(exc).__name__}); rerun {producer}") from None
    if not isinstance(tensors, dict):
        raise PipelineError(f"{path}: expected a dict of tensors; rerun {producer}")
    return tensors


def load_state_dict_file(path: str | Path, map_location="cpu", max_bytes: int = MAX_TENSOR_FILE_BYTES
                         ) -> dict[str, torch.Tensor]:
    """Load a weights file as a plain state_dict, refusing anything else, and a file that
    inflates past ``max_bytes`` before loading it (``weights_cap`` of the model it is for)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: weights file not found")
    check_inflated_size(path, max_bytes)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's text is long; the part that says what was refused is its "Unsupported global" line.
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"pickled code ({refused.group(1)})" if refused else "objects other than tensors"
        raise PipelineError(f"{path}: not a loadable weights file (UnpicklingError): it holds {what}, refused by "
                            "weights_only=True; expected a state_dict of tensors") from None
    except Exception as exc:  # RuntimeError (not a zip/pickle), EOFError (truncated)...
        raise PipelineError(f"{path}: not a loadable weights file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    return state


def load_into(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state_dict file into ``model``; mismatched keys or shapes name the file."""
    state = load_state_dict_file(path, map_location=next(model.parameters()).device, max_bytes=weights_cap(model))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        # torch's first line only names the class; the next ones name the tensors and shapes.
        details = " ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        raise PipelineError(f"{path}: weights do not fit the model: {details[:400]}") from None
