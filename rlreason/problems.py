"""The problem record every loader, the tiny world and every algorithm share (pure Python)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Problem:
    """One math word problem with its reference solution."""

    id: str
    """Stable identifier, unique within a dataset split (e.g. `gsm8k-train-00012`)."""
    question: str
    """The problem text shown to the model."""
    solution: str
    """Reference solution text in GSM8K format: steps, `<<a+b=c>>` annotations, `#### answer`."""
    answer: float
    """The numeric final answer."""
    steps: tuple[str, ...] = field(default_factory=tuple)
    """The reference solution split into steps (one per line, without the `####` line)."""
    source: str = ""
    """Where it came from: `gsm8k`, `svamp`, `tiny`, ... ."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Problem:
        return cls(
            id=str(d["id"]),
            question=d["question"],
            solution=d["solution"],
            answer=float(d["answer"]),
            steps=tuple(d.get("steps", ())),
            source=d.get("source", ""),
        )


# The prompt format is shared by SFT, sampling, every RL loop and the ORM, so it lives in one place.
# "Question: ...\nAnswer:" is the common GSM8K fine-tuning format; the completion starts with a space
# and ends with the `#### answer` line (the tokenizer's EOS is appended by the trainer).
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def format_prompt(question: str) -> str:
    """The text a policy is conditioned on for one question."""
    return PROMPT_TEMPLATE.format(question=question.strip())


def format_completion(solution: str) -> str:
    """The target text a policy is trained to produce after `format_prompt`."""
    return " " + solution.strip()
