"""A site's local data: read a CSV / TSV / JSONL file, map labels, split, partition.

Everything here runs at the site; raw text never leaves this module's callers except as
tokens fed to the local model.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import FedSiloError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# The longest line a data file may hold (not counting its line break; for CSV also the longest
# field). A text is truncated to --max-length tokens (at most 8192) anyway; a longer line is a
# broken or wrong file (no line breaks, a binary blob) and is refused after reading at most this
# much, so memory stays bounded however long the line is.
MAX_LINE_BYTES = 1 << 20  # 1 MiB
csv.field_size_limit(MAX_LINE_BYTES)
# How deeply a JSONL line may nest: a record is one flat object of columns. Deeper lines are refused
# before json.loads sees them (Python's parser recurses, and ends in a RecursionError near 1000).
MAX_JSON_DEPTH = 32
# A string (to its closing quote, or to the end of the line) or a bracket: one pass, linear time.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
# Hints for a header that is one single column: the file uses another delimiter than its suffix says.
_DELIMITER_HINTS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


class LocalDetailError(FedSiloError):
    """A site's error whose message may leave the site (the ClientApp sends it to the server as the
    reply's reason) and whose `local_detail` (values, paths, column names of the site's own data)
    is for the site's own console only."""

    def __init__(self, message: str, local_detail: str):
        super().__init__(message)
        self.local_detail = local_detail


def print_local_detail(err: Exception) -> None:
    """On the site's console: the part of its error that stays at the site (LocalDetailError)."""
    detail = getattr(err, "local_detail", None)
    if detail:
        print(f"fl-client: error detail (kept at this site, not sent): {detail}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Records:
    texts: list[str]
    labels: list[str]  # label names as written in the file
    groups: list[str] | None = None  # each record's group (--group-column): counted, never trained on

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> "Records":
        return Records([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                       None if self.groups is None else [self.groups[i] for i in idx])


def read_records(path: str | Path, text_column: str = "text", label_column: str = "label",
                 group_column: str = "") -> Records:
    """Read a labelled text file (with `group_column`, each record's group too); every problem is
    one FedSiloError naming the file (and line)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FedSiloError(f"{path}: unsupported data format {path.suffix!r} "
                           f"(use {', '.join(sorted(FORMATS))})")
    if text_column == label_column:
        raise FedSiloError(f"the text column and the label column are both {text_column!r}; "
                           "they must be two different columns")
    if group_column in (text_column, label_column):
        raise FedSiloError(f"the group column {group_column!r} is also the text or label column")
    columns = (text_column, label_column, *((group_column,) if group_column else ()))
    lines = _read_lines(path)
    if not any(line.strip() for line in lines):
        raise FedSiloError(f"{path}: data file is empty")
    rows = (_parse_jsonl(path, lines) if fmt == "jsonl"
            else _parse_delimited(path, lines, fmt, columns))
    texts, labels, groups = [], [], []
    for line_no, row in rows:
        for column in columns:
            if column not in row:
                raise FedSiloError(f"{path}:{line_no}: missing column {column!r} "
                                   f"(found: {', '.join(map(str, row)) or 'none'})")
        text, label = row[text_column], row[label_column]
        if not isinstance(text, str) or not text.strip():
            raise FedSiloError(f"{path}:{line_no}: empty or non-text value in column {text_column!r}")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label).strip() == "":
            raise FedSiloError(f"{path}:{line_no}: empty or invalid label in column {label_column!r}")
        texts.append(text)
        labels.append(str(label).strip())
        if group_column:
            groups.append(_group(row[group_column], path, line_no, group_column))
    if not texts:
        raise FedSiloError(f"{path}: no records (only a header?)")
    return Records(texts, labels, groups if group_column else None)


def _group(value, path: Path, line_no: int, column: str) -> str:
    """A record's group: a short plain name (it is shown in reports once enough records share it)."""
    from common.fairness import valid_group_name

    if isinstance(value, bool) or not isinstance(value, (str, int)) or not valid_group_name(str(value).strip()):
        raise FedSiloError(f"{path}:{line_no}: the group in column {column!r} is empty or not a plain name "
                           "(letters, digits, space, '_', '.', '-'; at most 64 characters)")
    return str(value).strip()


def _read_lines(path: Path) -> list[str]:
    """The file's lines, decoded, each with its line ending; at most MAX_LINE_BYTES read per line."""
    if path.is_dir():
        raise FedSiloError(f"{path}: is a directory, not a data file")
    if not path.exists():
        raise FedSiloError(f"{path}: data file not found")
    if not path.is_file():  # opening a FIFO would block until someone writes to it
        raise FedSiloError(f"{path}: not a regular file (a FIFO, socket or device?)")
    lines: list[str] = []
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
                raise FedSiloError(f"{path}: the file is UTF-16 encoded; re-encode it as UTF-8")
            fh.seek(0)
            while raw := fh.readline(MAX_LINE_BYTES + 1):
                line_no = len(lines) + 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise FedSiloError(f"{path}:{line_no}: line longer than {MAX_LINE_BYTES // 2**20} MiB; "
                                       "not a text data file (or a record with no line breaks)")
                if b"\0" in raw:
                    raise FedSiloError(f"{path}:{line_no}: NUL bytes: a binary file (or UTF-16 without "
                                       "a byte-order mark), not CSV, TSV or JSONL text")
                try:
                    lines.append(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
                except UnicodeDecodeError as err:
                    raise FedSiloError(f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[err.start]:02x}); "
                                       "re-encode the file as UTF-8") from None
    except OSError as err:
        raise FedSiloError(f"{path}: cannot read data file ({err.strerror})") from None
    return lines


def _parse_delimited(path: Path, lines: list[str], fmt: str, columns: tuple[str, ...]):
    # TSV files in the wild (and in shared/data) are unquoted: a leading '"' is text, not quoting.
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    delimiter = "\t" if fmt == "tsv" else ","
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        while header == []:  # blank lines before the header
            header = next(reader, None)
        if header is None:
            raise FedSiloError(f"{path}: data file is empty")
        header_line = reader.line_num
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise FedSiloError(f"{path}:{header_line}: duplicated column names in header {header}")
        missing = [c for c in columns if c not in header]
        if missing:
            hint = ""
            if len(header) == 1:
                found = [name for sep, name in _DELIMITER_HINTS.items() if sep != delimiter and sep in header[0]]
                if found:
                    hint = (f"; the file looks {found[0]}-separated, but a {path.suffix} file must be "
                            f"{_DELIMITER_HINTS[delimiter]}-separated")
            raise FedSiloError(f"{path}:{header_line}: missing column {missing[0]!r} "
                               f"(found: {', '.join(header) or 'none'}){hint}")
        rows = []
        for fields in reader:
            line_no = reader.line_num
            if not fields:
                continue  # blank line
            if len(fields) != len(header):
                raise FedSiloError(f"{path}:{line_no}: expected {len(header)} fields "
                                   f"({fmt.upper()}), found {len(fields)}")
            if [f.strip() for f in fields] == header:  # e.g. two files joined with `cat`
                raise FedSiloError(f"{path}:{line_no}: the header line is repeated (files concatenated?)")
            rows.append((line_no, dict(zip(header, fields))))
    except csv.Error as err:
        raise FedSiloError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({err})") from None
    return rows


def _parse_jsonl(path: Path, lines: list[str]):
    rows = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if json_depth(line) > MAX_JSON_DEPTH:
            raise FedSiloError(f"{path}:{line_no}: JSON nested deeper than {MAX_JSON_DEPTH} levels; "
                               "a record is one object of columns")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise FedSiloError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
        except (ValueError, RecursionError) as err:  # e.g. an integer of more than 4300 digits
            raise FedSiloError(f"{path}:{line_no}: invalid JSON ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:80]})") from None
        if not isinstance(obj, dict):
            raise FedSiloError(f"{path}:{line_no}: expected a JSON object per line")
        rows.append((line_no, obj))
    return rows


def json_depth(line: str) -> int:
    """The deepest nesting of brackets in a JSON text, outside its strings (bounded work: no parsing)."""
    if line.count("[") + line.count("{") <= MAX_JSON_DEPTH:  # the common case: it cannot be deeper
        return 0
    depth = deepest = 0
    for token in _JSON_TOKEN.findall(line):
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth -= 1
    return deepest


def encode_labels(records: Records, label_set: tuple[str, ...], source: str = "data",
                  quote_values: bool = True) -> np.ndarray:
    """Class ids in the order of the run's label set; a label outside it is an error.

    quote_values=False (a site answering the server): the error's message gives the number of
    records only, and the labels themselves are its `local_detail`, for the site's console: the
    server picks the label set, and would otherwise learn a site's labels by offering wrong ones."""
    index = {name: i for i, name in enumerate(label_set)}
    refuse_unknown({lab for lab in records.labels if lab not in index}, "label", label_set, source, quote_values,
                   "records have labels")
    return np.array([index[lab] for lab in records.labels], dtype=np.int64)


def refuse_unknown(unknown: set[str], kind: str, known: tuple[str, ...], source: str, quote_values: bool,
                   holders: str) -> None:
    """One error for values outside the run's set (labels; task ner: tags), if there are any.
    quote_values=False: a site answering the server, so the values stay in `local_detail`."""
    if not unknown:
        return
    unknown = sorted(unknown)
    shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
    detail = f"{source}: {kind}(s) {shown} not in the run's {kind} set ({', '.join(known)})"
    if quote_values:
        raise FedSiloError(detail)
    # No values and no count leave the site: with a count, a server that adds a guessed label to
    # the set would learn from the count's drop that the site holds it, and how often.
    raise LocalDetailError(f"{source}: some {holders} outside the run's {kind} set", detail)


def label_set_of(records: Records) -> tuple[str, ...]:
    """The sorted distinct labels of a file (fl-sim derives the label set this way)."""
    return tuple(sorted(set(records.labels)))


def split_train_eval(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of record indices; the eval split is empty only if eval_fraction is 0."""
    order = np.random.default_rng(seed).permutation(n)
    n_eval = int(round(n * eval_fraction))
    if eval_fraction > 0:
        n_eval = min(max(n_eval, 1), n - 1)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def partition(labels: np.ndarray, num_parts: int, scheme: str, alpha: float, seed: int) -> list[np.ndarray]:
    """Split indices over virtual sites: 'iid' (shuffled equal shares), 'dirichlet' label skew or
    'contiguous' (equal blocks in file order: whole documents, where the file keeps them together).

    Dirichlet follows the usual recipe (each class's records are divided over the sites in
    proportions drawn from Dir(alpha)); resampled until every site holds at least 2 records.
    """
    n = len(labels)
    if num_parts < 1 or num_parts > n:
        raise FedSiloError(f"cannot split {n} records over {num_parts} sites")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), num_parts)]
    if scheme == "contiguous":
        return np.array_split(np.arange(n), num_parts)
    if scheme != "dirichlet":
        raise FedSiloError(f"partition: unknown scheme {scheme!r}")
    min_size = min(2, n // num_parts)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_parts)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_parts, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise FedSiloError(f"dirichlet-alpha={alpha}: could not give each of {num_parts} sites "
                       f"{min_size} records; use fewer sites or a larger alpha")
