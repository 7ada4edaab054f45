"""Where prompts come from: a local file, a saved dataset folder or a Hub dataset name,
read with Hugging Face `datasets` (Lhoest et al., EMNLP 2021 demos) into `PromptRows`.

    .jsonl / .ndjson    remax's own line reader (file:line in every error), as before
    .json               datasets' "json" builder (a JSON array, or JSON lines)
    .parquet / .pq      datasets' "parquet" builder (also any file that starts with PAR1)
    .csv / .tsv         datasets' "csv" builder
    .arrow              datasets' "arrow" builder
    a folder            datasets.load_from_disk (written by save_to_disk); a DatasetDict
                        gives the split named by `split`
    anything else       a Hub dataset name: datasets.load_dataset(name, subset, split=split)

Every row is checked at load time (`check_row`): the first bad one is reported as
'file, row i' (i as in `dataset[i]`), or 'file:line' for JSONL. Departure from a plain
`load_dataset` call: JSONL keeps remax's strict reader, because `datasets` merges the
schema of all lines (a missing key becomes None) and loses the line of a bad row.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from remax.data.prompts import DataError, PromptRows, check_row, load_jsonl

# suffix -> datasets builder (and its extra arguments)
_BUILDERS = {
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
    ".pq": ("parquet", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".arrow": ("arrow", {}),
}
_JSONL = (".jsonl", ".ndjson")
_SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what save_to_disk writes
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FORMATS = ".jsonl, .json, .parquet, .csv, .tsv, .arrow, a save_to_disk folder or a Hub dataset name"


def load_prompts(
    source: str | Path,
    prompt_column: str = "prompt",
    *,
    split: str = "train",
    subset: Optional[str] = None,
    flag: str = "--data.train_file",
) -> PromptRows:
    """Rows of `source` (see the module docstring for the formats), every one checked to
    hold a prompt in `prompt_column`; a one-line DataError names the file, the row and the fix."""
    path = Path(source)
    if path.is_file():
        builder = _builder_for(path)
        if builder is None:
            return load_jsonl(path, prompt_column)
        name, kwargs = builder
        with _quiet_datasets():
            return _checked(_read_file(path, name, kwargs), str(path), prompt_column)
    if path.is_dir():
        return _checked(_read_saved(path, split), str(path), prompt_column)
    if path.suffix.lower() in (*_JSONL, *_BUILDERS) or not _HUB_NAME.match(str(source)):
        raise DataError(f"prompt file {str(source)!r} not found; pass {flag} with one of: {FORMATS}")
    return _checked(_read_hub(str(source), subset, split, flag), str(source), prompt_column)


def _builder_for(path: Path) -> Optional[tuple[str, dict[str, Any]]]:
    """The datasets builder for a file, or None for remax's JSONL reader."""
    with open(path, "rb") as f:
        if f.read(4) == b"PAR1":  # Parquet, whatever its name says
            return "parquet", {}
    return _BUILDERS.get(path.suffix.lower())


def _read_file(path: Path, builder: str, kwargs: dict[str, Any]) -> Any:
    import datasets

    try:
        # keep_in_memory: the rows are held in memory, not memory-mapped from a cache file
        return datasets.load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True, **kwargs)
    except Exception as err:  # pyarrow / pandas / datasets errors: one line with the reader's reason
        raise DataError(
            f"{path}: cannot be read as {builder} ({type(err).__name__}: {_first_line(err)}); "
            f"check the file, or convert it to JSONL (one {{\"prompt\": ...}} object per line)"
        ) from None


def _read_saved(path: Path, split: str) -> Any:
    import datasets

    if not any((path / m).is_file() for m in _SAVED_MARKERS):
        raise DataError(
            f"prompt path {str(path)!r} is a directory but not a dataset written by save_to_disk "
            f"(no {' or '.join(_SAVED_MARKERS)}); pass a file or a saved dataset folder"
        )
    try:
        with _quiet_datasets():
            data = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as err:
        raise DataError(f"{path}: cannot load the saved dataset ({type(err).__name__}: {_first_line(err)})") from None
    return _pick_split(data, split, str(path))


def _read_hub(name: str, subset: Optional[str], split: str, flag: str) -> Any:
    import datasets

    try:
        with _quiet_datasets():
            data = datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # offline, a typo, a gated dataset, a missing split
        raise DataError(
            f"{name!r} is not a local file or folder, and loading it as a Hugging Face Hub dataset failed "
            f"({type(err).__name__}: {_first_line(err)}); check the path given to {flag}, the name, "
            "--data.subset / --data.split, or your connection"
        ) from None
    return _pick_split(data, split, name)


def _pick_split(data: Any, split: str, where: str) -> Any:
    """A Dataset as it is; the `split` of a DatasetDict, or a one-line error listing the splits."""
    if isinstance(data, dict):  # DatasetDict is a dict of splits
        if split not in data:
            raise DataError(f"{where}: no split {split!r} (splits: {', '.join(data.keys())}); pass --data.split NAME")
        return data[split]
    return data


def _checked(dataset: Any, where: str, prompt_column: str) -> PromptRows:
    """Dataset -> PromptRows with every row checked and located as 'where, row i'."""
    columns = list(getattr(dataset, "column_names", []) or [])
    if prompt_column not in columns:
        raise DataError(
            f"{where}: no {prompt_column!r} column (columns: {', '.join(columns) or 'none'}); "
            "rename it or pass --data.prompt_column"
        )
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"{where}: no prompts found (0 rows)")
    locations = [f"{where}, row {i}" for i in range(len(rows))]
    for row, loc in zip(rows, locations):
        check_row(row, prompt_column, loc)
    return PromptRows(rows, locations)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars and no logged warnings from datasets: a failure is our one line."""
    import datasets

    bars = datasets.utils.are_progress_bars_disabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its readers log errors we report ourselves
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not bars:
            datasets.enable_progress_bars()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]
