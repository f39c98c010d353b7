"""GSM8K and SVAMP loaders: every dataset becomes a list of `Problem` (pure Python, no torch).

Where the data comes from, for each dataset in turn:

1. an explicit `path=` argument (a folder or the file itself); a given path that is missing raises
   `DataNotFoundError` at once;
2. the folder named by the environment variable `RLREASON_DATA_DIR`, laid out as
   `gsm8k/{train,test}.jsonl` and `svamp/SVAMP.json`;
3. the Hugging Face hub (`openai/gsm8k`, config `main`; `ChilleD/SVAMP`), through
   `datasets.load_dataset`, imported only here. If that fails too, `DataNotFoundError` says which
   local places were tried and how to point at local data.

`load_dataset_by_name("gsm8k", "test")` dispatches through `LOADERS`, a plain dict: a new dataset is
one more entry there.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from rlreason.io import iter_jsonl
from rlreason.problems import Problem
from rlreason.steps import split_steps

DATA_DIR_ENV = "RLREASON_DATA_DIR"
GSM8K_SPLITS = ("train", "test")
SVAMP_SPLITS = ("train", "test", "all")
_LAYOUT = "gsm8k/{train,test}.jsonl and svamp/SVAMP.json"


class DataNotFoundError(FileNotFoundError):
    """No copy of a dataset could be found or downloaded; the message (one line) says where we looked."""


def _one_line(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_split(dataset: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ValueError(f"unknown {dataset} split {split!r}; valid splits: {', '.join(valid)}")


def _local_file(path, file_name: str, env_relpath: str, expected: str) -> tuple[Path | None, str]:
    """The local file to read, or `(None, where we looked)` when the hub is next in line."""
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / file_name
        if not p.is_file():
            raise DataNotFoundError(f"{p} does not exist (expected {expected})")
        return p, ""
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        return None, f"no path= given and {DATA_DIR_ENV} is unset"
    p = Path(root) / env_relpath
    if p.is_file():
        return p, ""
    return None, f"no path= given and {p} (from {DATA_DIR_ENV}) does not exist"


def _hub_rows(repo: str, config: str | None, splits: Iterable[str], tried: str) -> list[dict]:
    """All rows of `splits` of a hub dataset; any failure becomes a one-line `DataNotFoundError`."""
    try:
        import datasets  # lazy: only the hub fallback needs it

        return [dict(row) for s in splits for row in datasets.load_dataset(repo, config, split=s)]
    except Exception as e:
        raise DataNotFoundError(
            f"no local copy ({tried}) and the Hugging Face hub copy {repo} could not be loaded "
            f"({type(e).__name__}: {_one_line(e)}); set {DATA_DIR_ENV} to a folder with {_LAYOUT}, "
            f"or pass path="
        ) from e


# ----------------------------------------------------------------------------------------- GSM8K


def _gsm8k_problem(row: dict, where: str, pid: str) -> Problem:
    """One GSM8K record ({"question", "answer"}); `where` ("file:line") names it in errors."""
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"{where}: record has no {key!r} text field")
    solution = row["answer"].strip()
    if "####" not in solution:
        raise ValueError(f"{where}: answer has no '#### <number>' final line")
    final = solution.rsplit("####", 1)[1].strip()
    try:
        answer = float(final.replace(",", ""))
    except ValueError:
        raise ValueError(f"{where}: final answer {final!r} after '####' is not a number") from None
    return Problem(
        id=pid,
        question=row["question"].strip(),
        solution=solution,
        answer=answer,
        steps=tuple(split_steps(solution)),
        source="gsm8k",
    )


def load_gsm8k(split: str = "train", path=None) -> list[Problem]:
    """GSM8K (7,473 train / 1,319 test) as `Problem`s with ids `gsm8k-<split>-<index:05d>`.

    `path` is a folder holding `train.jsonl`/`test.jsonl`, or one `.jsonl` file (then `split` only
    names the ids). The solution is the record's `answer` text, the answer the number after `####`.

    The references are used as they are. Their 27,998 calculator annotations `<<expr=value>>` all
    evaluate to the value written after them (tests/test_data.py checks it). Arithmetic written as
    plain text, outside annotations, is not always right (`192*100=$1920` in gsm8k-train-00167,
    algebra such as `11x+15=301`); we keep the original text rather than correct it.
    """
    _check_split("gsm8k", split, GSM8K_SPLITS)
    file, tried = _local_file(
        path,
        f"{split}.jsonl",
        f"gsm8k/{split}.jsonl",
        "a folder with train.jsonl/test.jsonl or a .jsonl file",
    )
    if file is None:
        rows = _hub_rows("openai/gsm8k", "main", [split], tried)
        located = [(f"openai/gsm8k[{split}]:{i}", row) for i, row in enumerate(rows)]
    else:
        # iter_jsonl skips blank lines, so count the line numbers the same way for the error messages.
        with open(file, encoding="utf-8") as f:
            linenos = [n for n, line in enumerate(f, 1) if line.strip()]
        located = [(f"{file}:{n}", row) for n, row in zip(linenos, iter_jsonl(file))]
    return [
        _gsm8k_problem(row, where, f"gsm8k-{split}-{i:05d}")
        for i, (where, row) in enumerate(located)
    ]


# ----------------------------------------------------------------------------------------- SVAMP

_OPS = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
}


def _fmt(x: float) -> str:
    """Canonical number text: 76.0 -> `76`, 55/15 -> `3.666666667`."""
    x = float(x) + 0.0  # turns -0.0 into 0.0
    return str(int(x)) if x.is_integer() else f"{x:.10g}"


def equation_to_solution(equation: str) -> tuple[str, float]:
    """A GSM8K-format reference solution for an SVAMP equation, and its value.

    One line per operation, inner operations first (left before right):
    `( ( 4.0 + 13.0 ) * 15.0 )` -> `4 + 13 = <<4+13=17>>17`, `17 * 15 = <<17*15=255>>255`, `#### 255`.
    A negative right operand is written in parentheses (`19 - (-15)`). An equation that is a bare
    number (SVAMP has one, chal-555) gives the single step `The answer is 8.`
    """
    lines: list[str] = []

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = walk(node.left), walk(node.right)
            op, fn = _OPS[type(node.op)]
            if op == "/" and b == 0:
                raise ValueError(f"SVAMP equation {equation!r} divides by zero")
            value = fn(a, b)
            sa, sb = _fmt(a), (f"({_fmt(b)})" if b < 0 else _fmt(b))
            lines.append(f"{sa} {op} {sb} = <<{sa}{op}{sb}={_fmt(value)}>>{_fmt(value)}")
            return value
        raise ValueError(f"SVAMP equation {equation!r} is not numbers joined by + - * /")

    try:
        tree = ast.parse(equation.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"SVAMP equation {equation!r} does not parse") from None
    value = walk(tree)
    if not lines:
        lines.append(f"The answer is {_fmt(value)}.")
    return "\n".join(lines + [f"#### {_fmt(value)}"]), value


def _svamp_problem(rec: dict, where: str) -> Problem:
    """One SVAMP record (ID, Body, Question, Equation, Answer, Type)."""
    missing = [k for k in ("ID", "Body", "Question", "Equation", "Answer") if k not in rec]
    if missing:
        raise ValueError(f"{where}: SVAMP record lacks {', '.join(missing)}")
    solution, _ = equation_to_solution(str(rec["Equation"]))
    return Problem(
        id=f"svamp-{rec['ID']}",
        question=" ".join(f"{rec['Body']} {rec['Question']}".split()),
        solution=solution,
        answer=float(rec["Answer"]),
        steps=tuple(split_steps(solution)),
        source="svamp",
    )


def svamp_test_ids(ids: Iterable[str], seed: int = 0, test_size: int = 300) -> set[str]:
    """Our fixed SVAMP test split: the sorted IDs shuffled by `random.Random(seed)`, first `test_size`."""
    order = sorted(ids)
    if not 0 <= test_size <= len(order):
        raise ValueError(f"SVAMP test_size must be in 0..{len(order)}, got {test_size}")
    random.Random(seed).shuffle(order)
    return set(order[:test_size])


def load_svamp(
    split: str = "train", path=None, seed: int = 0, test_size: int = 300
) -> list[Problem]:
    """SVAMP (1,000 one- or two-operation problems) as `Problem`s with ids `svamp-<ID>`, in source order.

    SVAMP ships no train/test split and the paper does not say which one it used, so this split is
    ours: the 1,000 IDs, sorted, shuffled with `random.Random(seed)`; the first `test_size` are test,
    the rest train (default seed 0: 700 train / 300 test). `split="all"` returns all of them. The
    hub's own 700/300 split is not used: its rows are pooled and split the same way.

    question = Body + " " + Question; the reference solution is built from `Equation` by
    `equation_to_solution`. The answer is the record's `Answer` as given, even where it is wrong:
    chal-680's equation `( ( 4 - 2 ) + 3 )` gives 5 (the right answer) but its Answer reads 1.
    `path` is the `SVAMP.json` file or a folder holding it.
    """
    _check_split("svamp", split, SVAMP_SPLITS)
    file, tried = _local_file(
        path, "SVAMP.json", "svamp/SVAMP.json", "SVAMP.json or a folder holding it"
    )
    if file is None:
        records, name = _hub_rows("ChilleD/SVAMP", None, ["train", "test"], tried), "ChilleD/SVAMP"
    else:
        try:
            records, name = json.loads(file.read_text(encoding="utf-8")), str(file)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(records, list):
            raise ValueError(f"{file}: expected a JSON list of SVAMP records")
    problems = [_svamp_problem(rec, f"{name}[{i}]") for i, rec in enumerate(records)]
    if split == "all":
        return problems
    test = svamp_test_ids([p.id for p in problems], seed, test_size)
    return [p for p in problems if (p.id in test) == (split == "test")]


# -------------------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., list[Problem]]] = {
    "gsm8k": load_gsm8k,
    "svamp": load_svamp,
}
"""Dataset name -> loader `(split, path=None) -> list[Problem]`; a new dataset is one line here."""


def load_dataset_by_name(name: str, split: str, path=None) -> list[Problem]:
    """`LOADERS[name](split, path=path)`, with a clear error for an unknown name."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](split, path=path)
