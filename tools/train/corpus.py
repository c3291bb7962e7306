"""Seeded multi-task corpus whose answers follow exactly from the prompt.

Each example is {"task", "prompt", "answer"}; its training text is
prompt + answer + "\n". Every prompt starts with a task tag, so the task is
readable from the prompt itself. Sizes are kept small enough that a few-million
parameter model learns every task in about an hour on one CPU thread.

    python corpus.py --seed 7 --n 1000 > eval.jsonl
"""

import argparse
import json
import random

DIGITS = "0123456789"
LETTERS = "abcdefghij"

# A tiny grammar: S -> DET ADJ* NOUN VERB DET ADJ* NOUN ; the answer is the
# tag sequence (D, A, N, V per word). Words are unambiguous.
LEXICON = {
    "D": ["the", "a", "my"],
    "A": ["big", "red", "old", "shy"],
    "N": ["cat", "dog", "fox", "owl", "ant"],
    "V": ["saw", "hit", "fed", "met"],
}


def t_add(r):
    a, b = r.randrange(100), r.randrange(100)
    return f"add {a}+{b}=", str(a + b)


def t_rev(r):
    # Distinct letters: each output letter is determined by where the previous one sits.
    s = "".join(r.sample(LETTERS, r.randint(2, 6)))
    return f"rev {s}=", s[::-1]


def t_sort(r):
    s = "".join(r.choice(DIGITS) for _ in range(r.randint(2, 6)))
    return f"sort {s}=", "".join(sorted(s))


def t_kv(r):
    keys = r.sample(LETTERS, r.randint(2, 4))
    vals = [r.choice(DIGITS) for _ in keys]
    q = r.randrange(len(keys))
    pairs = " ".join(k + v for k, v in zip(keys, vals))
    return f"kv {pairs} ?{keys[q]}=", vals[q]


def t_count(r):
    target = r.choice("ab")
    s = "".join(r.choice("abc") for _ in range(r.randint(1, 6)))
    return f"cnt {target} {s}=", str(s.count(target))


def _balanced(r, pairs):
    """A random balanced string of `pairs` bracket pairs."""
    out, depth, opened = [], 0, 0
    while opened < pairs or depth:
        if opened < pairs and (depth == 0 or r.random() < 0.5):
            out.append("(")
            depth, opened = depth + 1, opened + 1
        else:
            out.append(")")
            depth -= 1
    return "".join(out)


def _is_balanced(s):
    depth = 0
    for c in s:
        depth += 1 if c == "(" else -1
        if depth < 0:
            return False
    return depth == 0


def t_brackets(r):
    s = _balanced(r, r.randint(1, 4))
    u = r.random()
    if u < 0.25:  # one flipped bracket: the counts differ
        i = r.randrange(len(s))
        s = s[:i] + ("(" if s[i] == ")" else ")") + s[i + 1 :]
    elif u < 0.5:  # shuffled: same counts, order usually broken
        s = "".join(r.sample(s, len(s)))
    # The answer is computed from the final string, so it is exact either way.
    return f"bal {s}=", "yes" if _is_balanced(s) else "no"


def t_grammar(r):
    tags = ["D"] + ["A"] * r.randint(0, 1) + ["N", "V", "D"] + ["A"] * r.randint(0, 1) + ["N"]
    words = [r.choice(LEXICON[t]) for t in tags]
    return f"tag {' '.join(words)}=", "".join(tags)


TASKS = {
    "add": t_add,
    "rev": t_rev,
    "sort": t_sort,
    "kv": t_kv,
    "count": t_count,
    "brackets": t_brackets,
    "grammar": t_grammar,
}


# Training weights: more of the tasks that learn slowly. Eval sets are uniform.
TRAIN_MIX = {"add": 1.5, "rev": 1.0, "sort": 1.0, "kv": 1.0, "count": 1.5, "brackets": 1.5, "grammar": 0.5}


def examples(seed, n, mix=None):
    """`n` examples from a seeded stream; `mix` maps task -> relative weight."""
    r = random.Random(seed)
    mix = mix or {t: 1.0 for t in TASKS}
    names = list(mix)
    weights = [mix[t] for t in names]
    for _ in range(n):
        task = r.choices(names, weights)[0]
        prompt, answer = TASKS[task](r)
        yield {"task": task, "prompt": prompt, "answer": answer}


def charset():
    """Every character the corpus can produce, plus the newline separator."""
    chars = set("\n ")
    for seed in range(3):
        for ex in examples(seed, 20000):
            chars.update(ex["prompt"] + ex["answer"])
    return sorted(chars)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    for ex in examples(args.seed, args.n):
        print(json.dumps(ex))


if __name__ == "__main__":
    main()
