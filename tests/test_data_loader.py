"""Collation, packing and the Grain loaders: static shapes, exact packing, determinism, disjoint
per-process shards, exact resume from saved state, and an evaluation pass over every example."""
import collections
import json

import grain
import numpy as np
import pytest
from etils import epath

from easyalign.data.collate import collate, pack_rows
from easyalign.data.loader import make_eval_batches, make_train_loader
from easyalign.data.sources import DataError

PAD = 0


def sft_examples(n, seed=0, max_len=12, **extras):
    """Example i has tokens 100*i + 1, 100*i + 2, ...: every token names its example."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, max_len + 1))
        mask = (np.arange(length) >= rng.integers(1, length)).astype(np.float32)
        out.append({"tokens": (100 * i + 1 + np.arange(length)).astype(np.int32),
                    "loss_mask": mask, "source": f"s.jsonl:{i + 1}", **extras})
    return out


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_collate_sft_preference_prompt():
    examples = sft_examples(2, weight=0.5)
    batch = collate(examples, kind="sft", max_length=16, pad_id=PAD)
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "tokens": ((2, 16), "int32"), "loss_mask": ((2, 16), "float32"),
        "positions": ((2, 16), "int32"), "segment_ids": ((2, 16), "int32"),
        "weight": ((2,), "float32")}
    for row, ex in enumerate(examples):
        n = len(ex["tokens"])
        assert batch["tokens"][row].tolist() == ex["tokens"].tolist() + [PAD] * (16 - n)
        assert batch["loss_mask"][row].tolist() == ex["loss_mask"].tolist() + [0] * (16 - n)
        assert batch["positions"][row].tolist() == list(range(n)) + [0] * (16 - n)
        assert batch["segment_ids"][row].tolist() == [1] * n + [0] * (16 - n)
    pair = {"chosen_tokens": np.array([5, 6, 7], np.int32),
            "chosen_loss_mask": np.array([0, 1, 1.]),
            "rejected_tokens": np.array([5, 8], np.int32), "rejected_loss_mask": np.array([0, 1.])}
    batch = collate([pair], kind="preference", max_length=4, pad_id=PAD)
    assert batch["chosen_tokens"].tolist() == [[5, 6, 7, 0]]
    assert batch["rejected_segment_ids"].tolist() == [[1, 1, 0, 0]]
    assert sorted(batch) == sorted(f"{s}_{k}" for s in ("chosen", "rejected")
                                   for k in ("tokens", "loss_mask", "positions", "segment_ids"))
    prompts = [{"prompt_tokens": np.array([1, 2, 3], np.int32)},
               {"prompt_tokens": np.array([4], np.int32)}]
    batch = collate(prompts, kind="prompt", max_length=4, pad_id=9)
    assert batch["prompt_tokens"].tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    assert batch["prompt_lengths"].tolist() == [3, 1]


def test_packing_keeps_every_token_and_mask():
    examples = sft_examples(23, max_len=10)
    rows = list(pack_rows(grain.MapDataset.source(examples).to_iter_dataset(),
                          features=("tokens", "loss_mask"), rows=3, max_length=16, pad_id=PAD))
    segments = []
    for row in rows:
        seg, pos = row["segment_ids"], row["positions"]
        assert row["tokens"].shape == (16,)
        n_segments = seg.max()
        # Segments 1..k, contiguous, positions restarting at 0 in each; then padding only.
        used = int((seg > 0).sum())
        assert seg[:used].tolist() == sorted(seg[:used].tolist())
        assert set(seg[:used].tolist()) == set(range(1, n_segments + 1))
        assert (row["tokens"][used:] == PAD).all() and (row["loss_mask"][used:] == 0).all()
        assert (pos[used:] == 0).all()
        for s in range(1, n_segments + 1):
            where = seg == s
            assert pos[where].tolist() == list(range(where.sum()))
            segments.append((tuple(row["tokens"][where]), tuple(row["loss_mask"][where])))
    expected = [(tuple(ex["tokens"]), tuple(ex["loss_mask"])) for ex in examples]
    assert collections.Counter(segments) == collections.Counter(expected)
    assert len(rows) < len(examples)  # it did pack


def test_packed_loader_shapes_and_teacher_topk():
    examples = sft_examples(20)
    for ex in examples:
        n = len(ex["tokens"])
        ex["teacher_topk_ids"] = np.tile(ex["tokens"][:, None], (1, 2))
        ex["teacher_topk_logprobs"] = np.full((n, 2), -1.0, np.float32)
    loader = make_train_loader(examples, kind="teacher", global_batch=4, max_length=24, pad_id=PAD,
                               seed=0, pack=True)
    batch = next(loader)
    assert {k: v.shape for k, v in batch.items()} == {
        "tokens": (4, 24), "loss_mask": (4, 24), "positions": (4, 24), "segment_ids": (4, 24),
        "teacher_topk_ids": (4, 24, 2), "teacher_topk_logprobs": (4, 24, 2)}
    assert batch["segment_ids"].max() > 1
    np.testing.assert_array_equal(batch["teacher_topk_ids"][..., 0], batch["tokens"])
    with pytest.raises(ValueError, match="cannot pack examples with per-example fields"):
        make_train_loader(sft_examples(4, weight=1.0), kind="sft", global_batch=2, max_length=16,
                          pad_id=PAD, seed=0, pack=True)


def test_train_loader_is_deterministic_and_reshuffles_each_epoch():
    examples = sft_examples(8, weight=1.0)
    kwargs = dict(kind="sft", global_batch=4, max_length=16, pad_id=PAD)
    a = take(make_train_loader(examples, seed=3, **kwargs), 6)
    assert_batches_equal(a, take(make_train_loader(examples, seed=3, **kwargs), 6))
    other = take(make_train_loader(examples, seed=4, **kwargs), 2)
    assert [b["index"].tolist() for b in other] != [b["index"].tolist() for b in a[:2]]
    epochs = [np.concatenate([b["index"] for b in a[i:i + 2]]) for i in (0, 2, 4)]
    for order in epochs:  # two batches of 4 = one epoch: each example exactly once
        assert sorted(order.tolist()) == list(range(8))
    assert epochs[0].tolist() != epochs[1].tolist()  # a fresh permutation per epoch
    for b in a:  # index names the example the row holds
        for row, i in enumerate(b["index"]):
            assert b["tokens"][row, 0] == 100 * i + 1


def test_processes_get_disjoint_shares_of_each_global_batch():
    examples = sft_examples(10)
    kwargs = dict(kind="sft", global_batch=4, max_length=16, pad_id=PAD, seed=1)
    whole = take(make_train_loader(examples, process_index=0, process_count=1, **kwargs), 7)
    shares = [take(make_train_loader(examples, process_index=p, process_count=2, **kwargs), 7)
              for p in (0, 1)]
    for step, batch in enumerate(whole):
        first, second = (shares[p][step]["index"].tolist() for p in (0, 1))
        assert len(first) == len(second) == 2 and not set(first) & set(second)
        assert sorted(first + second) == sorted(batch["index"].tolist())
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        make_train_loader(examples, process_index=0, process_count=3, **kwargs)


@pytest.mark.parametrize("pack", [False, True])
def test_resume_from_state_yields_the_same_batches(pack, tmp_path):
    examples = sft_examples(13)
    kwargs = dict(kind="sft", global_batch=4, max_length=24, pad_id=PAD, seed=7, pack=pack)
    loader = make_train_loader(examples, **kwargs)
    take(loader, 5)
    state = loader.get_state()
    assert json.loads(state)["fingerprint"]["seed"] == 7  # JSON bytes
    expected = take(loader, 6)
    restored = make_train_loader(examples, **kwargs)
    restored.set_state(state)
    assert_batches_equal(take(restored, 6), expected)
    # Through Grain's Orbax checkpoint handler, as the training checkpoint saves it.
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), item=restored)
    after = take(restored, 3)
    fresh = handler.restore(epath.Path(tmp_path), item=make_train_loader(examples, **kwargs))
    assert_batches_equal(take(fresh, 3), after)
    with pytest.raises(ValueError, match=r"other settings .*'seed': \(7, 8\)"):
        make_train_loader(examples, **{**kwargs, "seed": 8}).set_state(state)


def test_eval_batches_cover_every_example_once():
    examples = sft_examples(11, weight=2.0)
    batches = list(make_eval_batches(examples, kind="sft", batch_size=4, max_length=16, pad_id=PAD))
    assert len(batches) == 3 and all(b["tokens"].shape == (4, 16) for b in batches)
    index = np.concatenate([b["index"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    assert index[valid].tolist() == list(range(11)) and index[~valid].tolist() == [-1]
    last = batches[-1]
    assert last["segment_ids"][3].sum() == 0 and last["weight"].tolist() == [2, 2, 2, 0]
    # Two processes: the same number of steps each, together every example once.
    examples = examples[:9]
    shares = [list(make_eval_batches(examples, kind="sft", batch_size=4, max_length=16,
                                     pad_id=PAD, process_index=p, process_count=2)) for p in (0, 1)]
    assert [len(s) for s in shares] == [3, 3]
    seen = [i for s in shares for b in s for i, ok in zip(b["index"], b["valid"]) if ok]
    assert sorted(seen) == list(range(9))
    assert shares[1][-1]["valid"].tolist() == [False, False]  # an all-padding share still steps


def test_bad_examples_name_their_source():
    examples = sft_examples(3)
    with pytest.raises(DataError, match=r"s\.jsonl:\d: field 'tokens': \d+ tokens > max_length=2"):
        make_train_loader(examples, kind="sft", global_batch=2, max_length=2, pad_id=PAD, seed=0)
    examples[2]["weight"] = 1.0
    with pytest.raises(DataError, match=r"s\.jsonl:3: fields .* differ from the first example's"):
        make_eval_batches(examples, kind="sft", batch_size=2, max_length=16, pad_id=PAD).__next__()


def test_unpacked_batches_are_as_wide_as_the_longest_sequence_rounded_up():
    """Short data under a long data.max_length (the trial: ~50-token pairs padded to 512) is
    batched at its longest sequence rounded up to 64; packed rows and prompts keep the full
    width, and no width exceeds max_length."""
    from types import SimpleNamespace

    from easyalign.algorithms.runsetup import batch_width
    from easyalign.data.loader import fitted_width

    pairs = [{"chosen_tokens": np.ones(n, np.int32), "chosen_loss_mask": np.ones(n, np.float32),
              "rejected_tokens": np.ones(m, np.int32),
              "rejected_loss_mask": np.ones(m, np.float32)} for n, m in ((42, 73), (50, 12))]
    assert fitted_width(pairs, "preference", 512) == 128       # 73 → 128
    assert fitted_width(pairs, "preference", 100) == 100       # capped at max_length
    sft = sft_examples(5, max_len=12)
    assert fitted_width(sft, "sft", 512) == 64
    run = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(max_length=512)))
    assert batch_width(run, sft, "sft") == 64
    assert batch_width(run, sft, "sft", pack=True) == 512
    assert batch_width(run, [{"prompt_tokens": np.ones(3, np.int32)}], "prompt", 448) == 448
    batch = next(iter(make_eval_batches(pairs, kind="preference", batch_size=2,
                                        max_length=fitted_width(pairs, "preference", 512),
                                        pad_id=PAD)))
    assert batch["chosen_tokens"].shape == (2, 128)
    assert int(np.count_nonzero(batch["chosen_segment_ids"])) == 42 + 50


def test_rows_drawn_are_the_indices_the_loader_yields():
    """`rows_drawn` (which DPO's reference cache scores) names exactly the examples that two
    processes' loaders hand out over the first steps, and everything from an epoch on."""
    from easyalign.data.loader import rows_drawn

    examples = sft_examples(40)
    for steps, global_batch in ((3, 4), (5, 8)):
        seen = set()
        for process in range(2):
            loader = make_train_loader(examples, kind="sft", global_batch=global_batch,
                                       max_length=16, pad_id=PAD, seed=3, process_index=process,
                                       process_count=2)
            for batch in take(loader, steps):
                seen |= set(batch["index"].tolist())
        assert rows_drawn(40, 3, steps * global_batch).tolist() == sorted(seen)
    assert rows_drawn(40, 3, 40).tolist() == list(range(40))
