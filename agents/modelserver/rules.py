"""Steering rules: keyword rules that make the offline model's answers fit a demo's story.

This module owns the rule format and its matching. A rule is
`{"when": {"contains": ["refund", "charge"]}, "set": {"category": "billing", "confidence": 0.92}}`:
when the last user message contains any keyword (case-insensitive substring), the `set` values
are used for fields of those names, wherever they exist in the requested schema and the value is
valid there. Earlier rules win field by field; a rule without `when` (or with an empty
`contains`) always matches, so it serves as a fallback at the end of the list.

A rules file is JSON: either a list of rules or an object with a `rules` list. The bundled
`default_rules.json` suits the support-ticket triage demo.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import ConfigurationError

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.json")
EXTRA_RULES_DIR = Path(__file__).with_name("rules.d")


@dataclass(frozen=True)
class Rule:
    """One steering rule: keywords to look for and the field values they imply.

    Attributes:
        contains: Keywords; any one found (case-insensitive) in the user's text matches.
            Empty means the rule always matches.
        values: Field name to value, used where the schema has that field.

    Example:
        >>> Rule(contains=("refund",), values={"category": "billing"}).matches("A REFUND please")
        True
    """

    contains: tuple[str, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)
    schemas: tuple[str, ...] = ()

    def applies_to(self, schema: str | None) -> bool:
        """Whether the rule may steer answers of `schema` (unscoped rules steer any schema).

        Example:
            >>> Rule(schemas=("Verdict",)).applies_to("Routing")
            False
        """
        return not self.schemas or schema in self.schemas

    def matches(self, text: str) -> bool:
        """Whether any keyword occurs in `text` (always true without keywords).

        Example:
            >>> Rule(contains=("charge",)).matches("I was charged twice")
            True
        """
        if not self.contains:
            return True
        folded = text.casefold()
        return any(keyword.casefold() in folded for keyword in self.contains)

    def matched_keywords(self, text: str) -> tuple[str, ...]:
        """The keywords of this rule found in `text`, in the rule's order.

        Example:
            >>> Rule(contains=("refund", "charge")).matched_keywords("charge me")
            ('charge',)
        """
        folded = text.casefold()
        return tuple(keyword for keyword in self.contains if keyword.casefold() in folded)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Parse one rule from its JSON form; raise `ConfigurationError` when malformed.

        Example:
            >>> Rule.from_dict({"when": {"contains": "refund"}, "set": {"category": "billing"}})
            Rule(contains=('refund',), values={'category': 'billing'}, schemas=())
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"A steering rule must be a JSON object, got {data!r}.")
        when = data.get("when") or {}
        values = data.get("set")
        if not isinstance(when, Mapping):
            raise ConfigurationError(f"Rule 'when' must be an object, got {when!r}.")
        if not isinstance(values, Mapping) or not values:
            raise ConfigurationError(f"Rule 'set' must be a non-empty object, got {values!r}.")
        contains = when.get("contains", [])
        if isinstance(contains, str):
            contains = [contains]
        if not isinstance(contains, list) or not all(isinstance(k, str) for k in contains):
            raise ConfigurationError(
                f"Rule 'when.contains' must be a list of strings, got {contains!r}."
            )
        schemas = when.get("schema", [])
        if isinstance(schemas, str):
            schemas = [schemas]
        if not isinstance(schemas, list) or not all(isinstance(k, str) for k in schemas):
            raise ConfigurationError(f"Rule 'when.schema' must be a string or list: {schemas!r}.")
        return cls(
            contains=tuple(k for k in contains if k), values=dict(values), schemas=tuple(schemas)
        )


@dataclass(frozen=True)
class RuleMatch:
    """The outcome of matching rules against a text: merged values and why.

    Attributes:
        values: Field values, earlier rules winning field by field.
        keywords: The keywords that matched, in rule order.

    Example:
        >>> RuleMatch(values={"category": "billing"}, keywords=("refund",)).rationale()
        "The request mentions 'refund', so the answer uses category=billing."
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    keywords: tuple[str, ...] = ()

    def rationale(self, fields: Collection[str] | None = None) -> str | None:
        """A one-sentence explanation of the steering, or None when nothing matched.

        Args:
            fields: The requested schema's fields; values for other fields (another demo's
                rules matching the same words) are left out of the explanation.

        Example:
            >>> RuleMatch().rationale() is None
            True
        """
        values = {
            name: value
            for name, value in self.values.items()
            if name != "rationale" and (fields is None or name in fields)
        }
        if not values:
            return None
        shown = ", ".join(f"{name}={value}" for name, value in values.items())
        if not self.keywords:
            return f"No specific signal in the request; the default answer uses {shown}."
        mentioned = ", ".join(repr(keyword) for keyword in self.keywords[:3])
        return f"The request mentions {mentioned}, so the answer uses {shown}."


@dataclass(frozen=True)
class Rules:
    """An ordered list of steering rules.

    Example:
        >>> rules = Rules.from_list([{"when": {"contains": ["refund"]},
        ...                           "set": {"category": "billing"}}])
        >>> dict(rules.match("Where is my refund?").values)
        {'category': 'billing'}
    """

    rules: tuple[Rule, ...] = ()

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, text: str, schema: str | None = None) -> RuleMatch:
        """Merge the values of every rule matching `text`; earlier rules win per field.

        Rules scoped to `schema` (`"when": {"schema": "Verdict"}`) come before unscoped ones,
        so an agent's own rules file is never overridden by another demo's keywords.

        Example:
            >>> Rules().match("anything").values
            {}
        """
        values: dict[str, Any] = {}
        keywords: list[str] = []
        scoped = [rule for rule in self.rules if rule.schemas and rule.applies_to(schema)]
        unscoped = [rule for rule in self.rules if not rule.schemas]
        for rule in scoped + unscoped:
            if not rule.matches(text):
                continue
            fresh = {name: value for name, value in rule.values.items() if name not in values}
            if not fresh:
                continue
            values.update(fresh)
            keywords.extend(k for k in rule.matched_keywords(text) if k not in keywords)
        return RuleMatch(values=values, keywords=tuple(keywords))

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> Rules:
        """Rules from their JSON form: a list of rules or `{"rules": [...]}`.

        Example:
            >>> len(Rules.from_list({"rules": []}))
            0
        """
        if isinstance(items, Mapping):
            listed = items.get("rules")
            if not isinstance(listed, list):
                raise ConfigurationError("A rules object needs a 'rules' list.")
            items = listed
        return cls(rules=tuple(Rule.from_dict(item) for item in items))

    @classmethod
    def from_file(cls, path: str | Path) -> Rules:
        """Load rules from a JSON file; raise `ConfigurationError` if unreadable or malformed.

        Example:
            >>> len(Rules.from_file(DEFAULT_RULES_PATH)) > 0
            True
        """
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"Cannot read steering rules from {file}: {exc}") from exc
        return cls.from_list(data)

    @classmethod
    def default(cls) -> Rules:
        """The bundled rules: `default_rules.json` (ticket triage), then every file in
        `rules.d/` in name order (each reference agent scopes its rules to its schemas).

        Example:
            >>> Rules.default().match("I want a refund").values["category"]
            'billing'
        """
        rules = list(cls.from_file(DEFAULT_RULES_PATH).rules)
        for path in sorted(EXTRA_RULES_DIR.glob("*.json")):
            rules.extend(cls.from_file(path).rules)
        return cls(rules=tuple(rules))

    @classmethod
    def none(cls) -> Rules:
        """No rules: every answer comes from the schema and the request digest alone.

        Example:
            >>> len(Rules.none())
            0
        """
        return cls()
