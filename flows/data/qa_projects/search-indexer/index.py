"""A tiny inverted index."""


def build(docs: dict[str, str]) -> dict[str, set[str]]:
    """Word to the ids of the documents containing it."""
    index: dict[str, set[str]] = {}
    for doc_id, text in docs.items():
        for word in text.lower().split():
            index.setdefault(word, set()).add(doc_id)
    return index


def search(index: dict[str, set[str]], word: str) -> set[str]:
    return index.get(word.lower(), set())
