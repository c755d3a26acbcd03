"""The HellaSwag carve's grouping (data.hellaswag_groups) on constructed rows where each link matters: a shared
source_id, a shared context, and a shared WikiHow article header. On the packaged data the header link changes
no group (the other two links already join those rows), so only a constructed case can show it works."""
from __future__ import annotations

from ftcompare import data


def _row(sid: str, ctx_a: str) -> dict:
    return {"source_id": sid, "ctx_a": ctx_a}


def test_rows_of_one_wikihow_article_share_a_group_across_ids_and_contexts():
    rows = [
        _row("wikihow~1", "[header] How to bake bread [title] Preheat the oven to 200 degrees."),
        _row("wikihow~2", "[header] How to bake bread [title] Mix the flour and the water."),     # same article
        _row("wikihow~3", "[header] How to paint a wall [title] Cover the floor."),               # another article
        _row("wikihow~4", "How to bake bread [title] Not a header: no grouping by title."),
    ]
    g = data.hellaswag_groups(rows)
    assert g[0] == g[1]                         # only the header links them: other ids, other contexts
    assert len({g[0], g[2], g[3]}) == 3


def test_source_id_and_context_links_are_transitive():
    rows = [
        _row("activitynet~a", "A man is sitting on a roof."),
        _row("activitynet~a", "He is using wrap to wrap a pair of skis."),   # same video as row 0
        _row("activitynet~b", "He is using wrap to wrap a pair of skis."),   # same context as row 1, other id
        _row("activitynet~c", "A woman rides a camel."),
    ]
    g = data.hellaswag_groups(rows)
    assert g[0] == g[1] == g[2] and g[3] != g[0]
    assert g == data.hellaswag_groups(rows)     # deterministic keys (no salted hash, no set order)
    assert g[3] == "ctx:A woman rides a camel."     # the smallest key of the component names it


def test_a_header_group_goes_to_one_split():
    """The split is decided per group key: every row of an article lands on the same side."""
    rows = [_row(f"wikihow~{i}", f"[header] How to fold a shirt [title] Step {i}.") for i in range(12)]
    groups = data.hellaswag_groups(rows)
    assert len(set(groups)) == 1
    assert len({data._split_of(k) for k in groups}) == 1
    # without the header link the 12 rows would be 12 groups, spread over the splits
    singles = [data._split_of(f"sid:wikihow~{i}") for i in range(12)]
    assert len(set(singles)) > 1
