"""The tiny world: a seeded generator of GSM8K-style word problems with several valid solutions.

Four problem families, each with 2 to 4 arithmetic steps (+, - and x2/x3 multiplications):

- ``change``:  a start amount changed by 2-4 events (buys, finds, gives away, loses ...);
  any order of applying the events is a valid solution.
- ``totals``:  3-4 quantities of one kind, optionally minus a give-away; the quantities can be
  summed in any order and grouping.
- ``boxes``:   (a + b) boxes of c things each, solvable as (a+b)*c or as a*c + b*c.
- ``compare``: "k more" / "k fewer" / "f times as many" chains between three people, then a total.

Each generated problem keeps *all* its valid solution paths; the reference solution is drawn
uniformly among them, so the SFT data is not canonical and solution diversity is measurable with
operation signatures (`rlreason.steps.operation_signature`). Solutions are written in GSM8K format:
one step per line with a calculator annotation, then ``#### <answer>``.

Splits (`build_world`): a fixed SFT set (RL trains on the same questions), a dev set, a test set,
a "variations" challenge set in the spirit of SVAMP (shuffled sentences, extra irrelevant numbers,
changed question targets), and a pretraining corpus disjoint from all of them: arithmetic statements
plus problems whose solutions carry arithmetic errors, drawn from a subset of the families only, so
that the pretrained base is weak by design (as Llama-2 is weak on GSM8K before SFT).
"""
from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field

from .config import check_at_least
from .problems import Problem, format_completion, format_prompt
from .steps import operation_signature

FAMILIES = ("change", "totals", "boxes", "compare")

NAMES = ["Tom", "Mia", "Sam", "Ana", "Leo", "Zoe", "Max", "Ivy", "Ben", "Eva", "Noah", "Lily",
         "Omar", "Ruth", "Jack", "Nina", "Paul", "Rosa", "Eli", "Kim"]
OBJECTS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "cards", "shells",
           "coins", "toys", "eggs", "stamps", "beads", "rocks", "flowers", "candies"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "pink", "brown"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
CONTAINERS = ["boxes", "bags", "jars", "packs", "baskets", "crates"]

GAIN_TEMPLATES = ["{n} buys {x} more {obj}.", "{n} finds {x} {obj}.", "{n} gets {x} {obj} from a friend.",
                  "Then {n} receives {x} {obj}.", "Later {n} picks up {x} more {obj}."]
LOSS_TEMPLATES = ["{n} gives {x} {obj} to {m}.", "{n} loses {x} {obj}.", "Then {n} sells {x} {obj}.",
                  "{n} eats {x} of the {obj}.", "Later {n} gives away {x} {obj}."]
DISTRACTOR_TEMPLATES = ["{m} has {x} {obj2}.", "{n} is {x} years old.", "{m} lives {x} miles away.",
                        "There are {x} {obj2} on the table.", "{n} also owns {x} {obj2}."]

# A step is (left, op, right, result); a path is the list of steps of one valid solution.
Step = tuple[int, str, int, int]


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the tiny world; the defaults are the `tiny` profile's."""

    seed: int = 0
    """Seed of the whole world: the same seed gives the same problems in every split."""
    n_sft: int = 2000
    """Problems with reference solutions for SFT; RL trains on these same questions."""
    n_dev: int = 300
    """Held-out problems for checkpoint selection and validation (never the test set)."""
    n_test: int = 500
    """Test problems, the distribution of the SFT set."""
    n_variations: int = 300
    """SVAMP-like challenge problems: reordered sentences, extra distractors, other targets."""
    n_pretrain: int = 20000
    """Documents in the pretraining corpus (arithmetic statements and noisy problems)."""
    max_value: int = 60
    """Largest number that appears in a question."""
    p_distractor: float = 0.5
    """Probability that a question carries one irrelevant sentence with a number."""
    pretrain_families: tuple[str, ...] = ("change", "totals")
    """Families that appear in the pretraining corpus; the others are met first in SFT."""
    pretrain_arith_fraction: float = 0.25
    """Fraction of pretraining documents that are bare arithmetic statements."""
    pretrain_error_rate: float = 0.4
    """Fraction of pretraining problems whose solution carries one arithmetic error."""
    value_scale: float = 1.0
    """Multiplies the upper bound of every family's numbers (longer digit strings, harder carries);
    1 keeps the original ranges (change events up to 30, totals up to 40, boxes up to 12)."""

    def __post_init__(self):
        check_at_least("WorldConfig", "value_scale", self.value_scale, 1)


@dataclass
class WorldProblem:
    """A generated problem with every valid solution path."""

    family: str
    question: str
    answer: int
    paths: list[list[Step]] = field(default_factory=list)


def render_step(step: Step) -> str:
    a, op, b, c = step
    return f"<<{a}{op}{b}={c}>>{c}"


def render_solution(path: list[Step], answer: int) -> str:
    """GSM8K format: one annotated step per line, then the `####` line."""
    return "\n".join(render_step(s) for s in path) + f"\n#### {answer}"


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _sum_paths(values: list[int], start_steps: list[Step] | None = None) -> list[list[Step]]:
    """All ways of adding `values` left to right in some order, plus pairwise grouping for four.

    The first two operands of a left fold are unordered (3+4 and 4+3 are one operation), so
    orderings that differ only there are kept once.
    """
    paths, seen = [], set()
    for perm in itertools.permutations(range(len(values))):
        if perm[0] > perm[1]:
            continue
        acc, steps = values[perm[0]], []
        for i in perm[1:]:
            steps.append((acc, "+", values[i], acc + values[i]))
            acc += values[i]
        key = tuple(steps)
        if key not in seen:
            seen.add(key)
            paths.append((start_steps or []) + steps)
    if len(values) == 4:
        for (i, j), (k, m) in [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]:
            s1, s2 = values[i] + values[j], values[k] + values[m]
            paths.append((start_steps or []) + [(values[i], "+", values[j], s1),
                                                (values[k], "+", values[m], s2),
                                                (s1, "+", s2, s1 + s2)])
    return paths


class _Gen:
    """Draws problems of each family from one `random.Random`."""

    def __init__(self, rng: random.Random, cfg: WorldConfig):
        self.rng, self.cfg = rng, cfg

    def num(self, lo: int = 2, hi: int | None = None) -> int:
        return self.rng.randint(lo, hi or self.cfg.max_value)

    def up_to(self, hi: int) -> int:
        """A family's upper bound `hi`, scaled by `value_scale` (>= 1: never below `hi`)."""
        return round(hi * self.cfg.value_scale)

    def people(self, k: int) -> list[str]:
        return self.rng.sample(NAMES, k)

    def distractors(self, n: str, obj: str, count: int) -> list[str]:
        out = []
        for _ in range(count):
            m = self.rng.choice([x for x in NAMES if x != n])
            obj2 = self.rng.choice([o for o in OBJECTS if o != obj])
            out.append(self.rng.choice(DISTRACTOR_TEMPLATES).format(n=n, m=m, x=self.num(), obj2=obj2))
        return out

    def assemble(self, facts: list[str], question: str, n: str, obj: str, variation: bool,
                 shuffle_from: int) -> str:
        n_distr = self.rng.randint(1, 2) if variation else int(self.rng.random() < self.cfg.p_distractor)
        sentences = list(facts)
        for d in self.distractors(n, obj, n_distr):
            sentences.insert(self.rng.randint(1, len(sentences)), d)
        if variation:  # reorder the sentences whose order does not matter
            head, tail = sentences[:shuffle_from], sentences[shuffle_from:]
            self.rng.shuffle(tail)
            sentences = head + tail
        return " ".join(sentences + [question])

    # -- families -----------------------------------------------------------------------------
    def change(self, variation: bool) -> WorldProblem:
        n, m = self.people(2)
        obj = self.rng.choice(OBJECTS)
        while True:  # the narrative order must be valid: nobody gives away what they lack
            start = self.num(10)
            events = [(self.rng.choice("+-"), self.num(2, self.up_to(30))) for _ in range(self.rng.randint(2, 4))]
            orders: list[list[Step]] = []
            for perm in itertools.permutations(events):
                acc, steps = start, []
                for op, x in perm:
                    steps.append((acc, op, x, _apply(acc, op, x)))
                    acc = _apply(acc, op, x)
                if all(s[3] >= 0 for s in steps) and steps not in orders:
                    orders.append(steps)
            narrative = [(op, x) for _, op, x, _ in orders[0]] if orders else None
            if narrative == events:  # permutations() yields the narrative order first
                break
        facts = [f"{n} has {start} {obj}."]
        for op, x in events:
            t = self.rng.choice(GAIN_TEMPLATES if op == "+" else LOSS_TEMPLATES)
            facts.append(t.format(n=n, m=m, x=x, obj=obj))
        question = f"How many {obj} does {n} have now?"
        answer = orders[0][-1][3]
        if variation and self.rng.random() < 0.5:
            question = f"How many {obj} does {n} end up with?"
        return WorldProblem("change", self.assemble(facts, question, n, obj, variation, 99), answer, orders)

    def totals(self, variation: bool) -> WorldProblem:
        n, m = self.people(2)
        obj = self.rng.choice(OBJECTS)
        k = self.rng.randint(3, 4) if not variation else self.rng.randint(3, 4)
        colors = self.rng.sample(COLORS, k)
        values = [self.num(2, self.up_to(40)) for _ in range(k)]
        facts = [f"{n} has {v} {c} {obj}." for v, c in zip(values, colors)]
        target = list(range(k))
        if variation and self.rng.random() < 0.5 and k == 4:  # changed target: a subset of colors
            target = sorted(self.rng.sample(range(k), 3))
        total = sum(values[i] for i in target)
        give = self.num(2, total - 1) if (len(target) == 3 and k == 3) or self.rng.random() < 0.5 else 0
        if len(target) < k:
            give = 0
        paths = _sum_paths([values[i] for i in target])
        if give:
            facts.append(f"{n} gives {give} {obj} to {m}.")
            paths = [p + [(total, "-", give, total - give)] for p in paths]
        if len(target) < k:
            names = ", ".join(colors[i] for i in target[:-1]) + f" and {colors[target[-1]]}"
            question = f"How many {names} {obj} does {n} have?"
        else:
            question = f"How many {obj} does {n} have {'left' if give else 'in total'}?"
        answer = total - give
        return WorldProblem("totals", self.assemble(facts, question, n, obj, variation, 0), answer, paths)

    def boxes(self, variation: bool) -> WorldProblem:
        (n,) = self.people(1)
        obj, box = self.rng.choice(OBJECTS), self.rng.choice(CONTAINERS)
        d1, d2 = self.rng.sample(DAYS, 2)
        a, b, c = self.num(2, self.up_to(12)), self.num(2, self.up_to(12)), self.rng.choice([2, 3])
        facts = [f"{n} buys {a} {box} on {d1}.", f"{n} buys {b} {box} on {d2}.",
                 f"Each of the {box} holds {c} {obj}."]
        if variation and self.rng.random() < 0.5:
            facts = [f"Each of the {box} holds {c} {obj}."] + facts[:2]
        paths = [[(a, "+", b, a + b), (a + b, "*", c, (a + b) * c)],
                 [(a, "*", c, a * c), (b, "*", c, b * c), (a * c, "+", b * c, (a + b) * c)],
                 [(b, "*", c, b * c), (a, "*", c, a * c), (b * c, "+", a * c, (a + b) * c)]]
        question = f"How many {obj} does {n} have in all?"
        return WorldProblem("boxes", self.assemble(facts, question, n, obj, variation, 0), (a + b) * c, paths)

    def compare(self, variation: bool) -> WorldProblem:
        p, q, r = self.people(3)
        obj = self.rng.choice(OBJECTS)
        a = self.num(2, self.up_to(20))

        def relation(base: int, name: str, other: str) -> tuple[str, Step]:
            kind = self.rng.choice(["more", "fewer", "times"])
            if kind == "times":
                f = self.rng.choice([2, 3])
                return f"{name} has {f} times as many {obj} as {other}.", (base, "*", f, base * f)
            if kind == "fewer" and base > 3:
                k = self.num(1, base - 1)
                return f"{name} has {k} fewer {obj} than {other}.", (base, "-", k, base - k)
            k = self.num(2, self.up_to(20))
            return f"{name} has {k} more {obj} than {other}.", (base, "+", k, base + k)

        s1, st1 = relation(a, q, p)
        s2, st2 = relation(st1[3], r, q)
        facts = [f"{p} has {a} {obj}.", s1, s2]
        vals = [a, st1[3], st2[3]]
        if variation and self.rng.random() < 0.5:  # changed target: two of the three people
            paths = [[st1, st2, (st1[3], "+", st2[3], st1[3] + st2[3])],
                     [st1, st2, (st2[3], "+", st1[3], st1[3] + st2[3])]]
            return WorldProblem("compare", self.assemble(
                facts, f"How many {obj} do {q} and {r} have together?", p, obj, variation, 99),
                st1[3] + st2[3], paths[:1])
        paths = _sum_paths(vals, start_steps=[st1, st2])
        question = f"How many {obj} do {p}, {q} and {r} have in total?"
        return WorldProblem("compare", self.assemble(facts, question, p, obj, variation, 99), sum(vals), paths)

    def problem(self, family: str, variation: bool = False) -> WorldProblem:
        return getattr(self, family)(variation)


def to_problem(wp: WorldProblem, pid: str, rng: random.Random) -> Problem:
    """A `Problem` whose reference solution is drawn uniformly among the valid paths."""
    path = rng.choice(wp.paths)
    solution = render_solution(path, wp.answer)
    return Problem(id=pid, question=wp.question, solution=solution, answer=float(wp.answer),
                   steps=tuple(solution.split("\n")[:-1]), source=f"tiny/{wp.family}")


def _corrupt(path: list[Step], rng: random.Random) -> tuple[list[Step], int]:
    """One arithmetic error in one step, carried forward: a plausible wrong solution."""
    i = rng.randrange(len(path))
    wrong = {}
    out = []
    for j, (a, op, b, c) in enumerate(path):
        if j > i:  # later steps use the wrong value where they used the right one
            a, b = wrong.get(a, a), wrong.get(b, b)
            new_c = _apply(a, op, b)
            wrong[c] = new_c
            c = new_c
        if j == i:
            c_wrong = max(0, c + rng.choice([-10, -2, -1, 1, 2, 10]))
            wrong[c] = c_wrong
            c = c_wrong
        out.append((a, op, b, c))
    return out, out[-1][3]


def arithmetic_statement(rng: random.Random, max_value: int) -> str:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, max_value * 2), rng.choice([2, 3])
    else:
        a, b = rng.randint(2, max_value * 2), rng.randint(2, max_value)
        if op == "-" and b > a:
            a, b = b, a
    return render_step((a, op, b, _apply(a, op, b)))


@dataclass
class World:
    """All splits of one tiny world."""

    config: WorldConfig
    sft: list[Problem]
    dev: list[Problem]
    test: list[Problem]
    variations: list[Problem]
    pretrain: list[str]
    """Pretraining documents: full texts (prompt and solution), trained on as plain LM text."""
    paths: dict[str, list[list[Step]]]
    """Every valid solution path per problem id (for diversity analyses and tests)."""

    def split(self, name: str) -> list[Problem]:
        if name not in ("sft", "train", "dev", "test", "variations"):
            raise ValueError(f"unknown tiny-world split {name!r}; expected sft/train, dev, test or variations")
        return self.sft if name == "train" else getattr(self, name)


def build_world(cfg: WorldConfig | None = None) -> World:
    """Generate every split of the world from `cfg.seed`; questions never repeat across splits."""
    cfg = cfg or WorldConfig()
    rng = random.Random(cfg.seed)
    gen = _Gen(rng, cfg)
    seen: set[str] = set()
    paths: dict[str, list[list[Step]]] = {}

    def draw(split: str, count: int, variation: bool = False) -> list[Problem]:
        out = []
        while len(out) < count:
            wp = gen.problem(FAMILIES[len(out) % len(FAMILIES)], variation)
            if wp.question in seen:
                continue
            seen.add(wp.question)
            pid = f"tiny-{split}-{len(out):05d}"
            paths[pid] = wp.paths
            out.append(to_problem(wp, pid, rng))
        return out

    sft, dev, test = draw("sft", cfg.n_sft), draw("dev", cfg.n_dev), draw("test", cfg.n_test)
    variations = draw("variations", cfg.n_variations, variation=True)
    pretrain: list[str] = []
    while len(pretrain) < cfg.n_pretrain:
        if rng.random() < cfg.pretrain_arith_fraction:
            pretrain.append(arithmetic_statement(rng, cfg.max_value))
            continue
        wp = gen.problem(rng.choice(cfg.pretrain_families))
        if wp.question in seen:
            continue
        seen.add(wp.question)
        path, answer = rng.choice(wp.paths), wp.answer
        if rng.random() < cfg.pretrain_error_rate:
            path, answer = _corrupt(path, rng)
        pretrain.append(format_prompt(wp.question) + format_completion(render_solution(path, answer)))
    return World(cfg, sft, dev, test, variations, pretrain, paths)


def world_statistics(w: World) -> list[dict]:
    """Per split: size, family mix, steps per reference, and how many problems admit 2+ distinct
    operation signatures (the room for solution diversity)."""
    rows = []
    for split in ("sft", "dev", "test", "variations"):
        items = w.split(split)
        families = Counter(p.source.split("/")[-1] for p in items)
        n_sigs = [len({operation_signature(render_solution(path, int(p.answer))) for path in w.paths[p.id]})
                  for p in items]
        rows.append({
            "split": split, "problems": len(items),
            **{f"{f}": families.get(f, 0) for f in FAMILIES},
            "mean_steps": sum(len(p.steps) for p in items) / len(items),
            "mean_question_words": sum(len(p.question.split()) for p in items) / len(items),
            "mean_solution_paths": sum(n_sigs) / len(items),
            "frac_2plus_signatures": sum(n >= 2 for n in n_sigs) / len(items),
        })
    return rows
