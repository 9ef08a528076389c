"""Tests of the inverted index."""

import index

DOCS = {"1": "red fox", "2": "Red hen", "3": "blue sky"}


def test_build() -> None:
    assert index.build(DOCS)["red"] == {"1", "2"}


def test_search_is_case_insensitive() -> None:
    assert index.search(index.build(DOCS), "RED") == {"1", "2"}


def test_search_missing() -> None:
    assert index.search(index.build(DOCS), "green") == set()


def test_build_empty() -> None:
    assert index.build({}) == {}


def test_push_to_cluster() -> None:
    import pyelasticsearch

    assert pyelasticsearch.ElasticSearch("http://localhost:9200")
