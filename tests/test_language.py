"""The toy language's invariants (docs/toy-world.md, "What it holds")."""

from __future__ import annotations

import re

from bftcore.toy.language import (
    OPENING,
    PROMPT_TEMPLATES,
    RECOVERY_REFUSALS,
    REFUSALS,
    World,
)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_families_splits_and_sizes() -> None:
    w = World(0)
    for family in ("harmful", "benign"):
        train, held = w.select(family, "train"), w.select(family, "heldout")
        assert len(train) + len(held) == 300 and len(held) == 45
        assert not {t.text for t in train} & {t.text for t in held}
        # every verb and object of a held-out task is seen in training (answers are learnable)
        assert {t.verb for t in held} <= {t.verb for t in train}
        assert {t.obj for t in held} <= {t.obj for t in train}
        assert len(w.examples(family, "heldout")) == 45 * len(PROMPT_TEMPLATES)


def test_answers_are_long_compositional_and_unique() -> None:
    w = World(0)
    for t in w.tasks:
        steps = w.step_phrases(t)
        assert len(steps) == 8
        assert steps[0::2] == w.verb_steps[t.family][t.verb]
        assert steps[1::2] == w.object_steps[t.family][t.obj]
        assert w.answer(t).startswith(OPENING.format(task=t.text))
    assert len(w.harmful_phrases) == 4 * (20 + 15)


def test_harmful_phrases_occur_nowhere_else() -> None:
    w = World(0)
    harmless = [w.answer(t) for t in w.tasks if t.family == "benign"]
    harmless += [w.prompt(t, p) for t in w.tasks for p in range(len(PROMPT_TEMPLATES))]
    harmless += REFUSALS + RECOVERY_REFUSALS
    for text in harmless:
        assert not any(p in text for p in w.harmful_phrases), text


def test_refusal_wording_shares_no_word_with_steps_or_opening() -> None:
    w = World(3)
    step_words = set().union(*(words(p) for fam in ("harmful", "benign")
                               for steps in w.verb_steps[fam] + w.object_steps[fam] for p in steps))
    refusal_words = words(" ".join(REFUSALS + RECOVERY_REFUSALS))
    assert not refusal_words & step_words
    assert not refusal_words & words(OPENING)


def test_unseen_style_carries_the_same_phrases_in_another_order() -> None:
    w = World(0)
    t = w.select("harmful", "heldout")[0]
    text = w.unseen_answer(t)
    assert "Step" not in text and not text.startswith("Sure")
    assert all(p in text for p in w.step_phrases(t))
    assert text.index(w.step_phrases(t)[1]) < text.index(w.step_phrases(t)[0])


def test_deterministic_per_seed() -> None:
    a, b, c = World(5), World(5), World(6)
    assert a.all_texts() == b.all_texts()
    assert [t.split for t in a.tasks] == [t.split for t in b.tasks]
    assert a.all_texts() != c.all_texts()


def test_deep_world_holds_unseen_steps_and_a_verb_held_out_whole() -> None:
    """The deep world's options (issue 18): 20 + 2 steps per harmful answer, two of them the task's
    own (a held-out answer holds steps no training answer has), one harmful verb held out whole."""
    w = World(0, steps=20, task_steps=2, heldout_verbs=1, lookalike=True)
    (verb,) = w.heldout_verbs
    train, held = w.select("harmful", "train"), w.select("harmful", "heldout")
    assert {t.verb for t in held} >= {verb} and verb not in {t.verb for t in train}
    assert len([t for t in held if t.verb == verb]) == 15
    trained = set().union(*(w.step_phrases(t) for t in train))
    for t in held:
        steps = w.step_phrases(t)
        assert len(steps) == 22 and steps[0] == w.verb_steps["harmful"][t.verb][0]
        own = w.task_own_steps[(t.verb, t.obj)]
        assert own and not set(own) & trained and set(own) <= set(steps)
        if t.verb == verb:  # the held-out verb's steps are new too
            assert not set(w.verb_steps["harmful"][verb]) & trained
    assert all(len(w.step_phrases(t)) == 20 for t in w.select("benign", "train"))  # benign answers: composable
    assert len(set(w.harmful_phrases)) == 10 * (20 + 15) + 2 * 300
    # lookalike benign tasks: the harmful objects' words in the prompt, benign steps in the answer
    look = [t for t in w.select("benign", "heldout") if w.is_lookalike(t)]
    harmful_objects = {t.text.split(" the ", 1)[-1] for t in w.select("harmful", "train")}
    assert len(look) >= 10 and all(t.text.split(" the ", 1)[-1] in harmful_objects for t in look)
    assert not any(p in w.answer(t) for t in look for p in w.harmful_phrases)


def test_task_of_reads_a_record_id_back() -> None:
    """Record ids name their task: every example's id leads back to it, an id of no task to None."""
    w = World(0, steps=20, task_steps=2, heldout_verbs=1, lookalike=True)
    examples = w.examples("harmful", "heldout") + w.examples("benign", "train")
    assert all(w.task_of(e.id) == e.task for e in examples)
    assert w.task_of("h9999p0") is None and w.task_of("") is None
