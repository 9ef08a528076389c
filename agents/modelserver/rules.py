"""Steering rules: keyword rules that make the offline model's answers fit a demo's story.

This module owns the rule format and its matching. A rule is
`{"when": {"contains": ["refund", "charge"]}, "set": {"category": "billing", "confidence": 0.92}}`:
when the last user message contains any keyword (case-insensitive substring), the `set` values
are used for fields of those names, wherever they exist in the requested schema and the value is
valid there. Earlier rules win field by field; a rule without `when` (or with an empty
`contains`) always matches, so it serves as a fallback at the end of the list.

**Tool calls.** A rule may also (or instead) name tools to call when a request offers tools
and an answer tool named `final_result` (see `agents.modelserver.tools`):

    {"when": {"contains": ["order"]},
     "call": [{"tool": "lookup_order",
               "arguments": {"order_id": {"regex": "order #?(\\\\d+)"}, "verbose": false}}]}

Each argument is a literal JSON value, or `{"regex": "<pattern>"}`: the pattern is searched
(case-insensitively) in the user's text and the tool results so far, and the argument is its
first group (the whole match when the pattern has no group; `"group": n` picks another). When a
regex finds nothing, that call is skipped. To pass a literal object that has a `regex` key, wrap
it as `{"literal": {...}}`. Arguments are fitted to the tool's parameter schema (a captured
`"42"` becomes `42` for an integer parameter; a required parameter no rule gives is generated
from the schema). A rule with `call` and no `set` never steers an answer's fields.

A rules file is JSON: either a list of rules or an object with a `rules` list. The bundled
`default_rules.json` suits the support-ticket triage demo.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import ConfigurationError

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.json")
EXTRA_RULES_DIR = Path(__file__).with_name("rules.d")


@dataclass(frozen=True)
class Capture:
    r"""An argument taken from the text: group `group` of the first match of `pattern`.

    Example:
        >>> Capture(r"order #?(\d+)").find("About ORDER #123, please")
        '123'
    """

    pattern: str
    group: int | None = None

    def find(self, text: str) -> str | None:
        r"""The captured string, or None when the pattern does not occur in `text`.

        Example:
            >>> Capture(r"cust-\d+").find("no customer here") is None
            True
        """
        found = re.search(self.pattern, text, flags=re.IGNORECASE)
        if found is None:
            return None
        group = self.group if self.group is not None else (1 if found.re.groups else 0)
        value = found.group(group)
        return value if value is not None else None


@dataclass(frozen=True)
class ToolCallRule:
    """A tool call a rule asks for: the tool's name and its arguments (literals or captures).

    Example:
        >>> call = ToolCallRule.from_dict({"tool": "lookup_order",
        ...     "arguments": {"order_id": {"regex": "order (\\d+)"}, "full": True}})
        >>> call.arguments_for("my order 55102 is late")
        {'order_id': '55102', 'full': True}
    """

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def arguments_for(self, text: str) -> dict[str, Any] | None:
        """The arguments with every capture resolved in `text`; None if a capture finds nothing.

        Example:
            >>> ToolCallRule("t", {"a": Capture("x(\\d)")}).arguments_for("no digits") is None
            True
        """
        resolved: dict[str, Any] = {}
        for name, value in self.arguments.items():
            if isinstance(value, Capture):
                found = value.find(text)
                if found is None:
                    return None
                resolved[name] = found
            else:
                resolved[name] = value
        return resolved

    @classmethod
    def from_dict(cls, data: Any) -> ToolCallRule:
        """Parse one entry of a rule's `call` list; raise `ConfigurationError` when malformed.

        Example:
            >>> ToolCallRule.from_dict({"tool": "t", "arguments": {"x": {"literal": {"regex": 1}}}})
            ToolCallRule(tool='t', arguments={'x': {'regex': 1}})
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"A rule's 'call' entry must be an object, got {data!r}.")
        tool = data.get("tool")
        if not isinstance(tool, str) or not tool:
            raise ConfigurationError(f"A rule's 'call' entry needs a 'tool' name, got {data!r}.")
        raw = data.get("arguments") or {}
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"Call of {tool!r}: 'arguments' must be an object: {raw!r}.")
        arguments: dict[str, Any] = {}
        for name, value in raw.items():
            arguments[str(name)] = _argument(tool, str(name), value)
        return cls(tool=tool, arguments=arguments)


def _argument(tool: str, name: str, value: Any) -> Any:
    """One argument of a call rule: a `Capture` for `{"regex": ...}`, else the literal value."""
    if not isinstance(value, Mapping):
        return value
    if set(value) == {"literal"}:
        return value["literal"]
    if "regex" not in value:
        return dict(value)
    pattern, group = value["regex"], value.get("group")
    where = f"Call of {tool!r}, argument {name!r}"
    if not isinstance(pattern, str) or set(value) - {"regex", "group"}:
        raise ConfigurationError(
            f"{where}: a capture is {{'regex': <string>, 'group': <int>}}, got {value!r}."
        )
    if group is not None and (not isinstance(group, int) or isinstance(group, bool)):
        raise ConfigurationError(f"{where}: 'group' must be an integer, got {group!r}.")
    try:
        compiled = re.compile(pattern, flags=re.IGNORECASE)
    except re.error as exc:
        raise ConfigurationError(f"{where}: invalid regex {pattern!r}: {exc}.") from exc
    if group is not None and not 0 <= group <= compiled.groups:
        raise ConfigurationError(f"{where}: regex {pattern!r} has no group {group}.")
    return Capture(pattern=pattern, group=group)


@dataclass(frozen=True)
class Rule:
    """One steering rule: keywords to look for, the field values and the tool calls they imply.

    Attributes:
        contains: Keywords; any one found (case-insensitive) in the user's text matches.
            Empty means the rule always matches.
        values: Field name to value, used where the schema has that field.
        schemas: Schema names the rule is scoped to (`when.schema`); empty for any schema.
        calls: Tools to call when the request offers them (`call`; see the module docstring).

    Example:
        >>> Rule(contains=("refund",), values={"category": "billing"}).matches("A REFUND please")
        True
    """

    contains: tuple[str, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)
    schemas: tuple[str, ...] = ()
    calls: tuple[ToolCallRule, ...] = ()

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
            Rule(contains=('refund',), values={'category': 'billing'}, schemas=(), calls=())
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"A steering rule must be a JSON object, got {data!r}.")
        when = data.get("when") or {}
        raw_calls = data.get("call", [])
        if not isinstance(when, Mapping):
            raise ConfigurationError(f"Rule 'when' must be an object, got {when!r}.")
        if isinstance(raw_calls, Mapping):
            raw_calls = [raw_calls]
        if not isinstance(raw_calls, list):
            raise ConfigurationError(f"Rule 'call' must be a list of calls, got {raw_calls!r}.")
        calls = tuple(ToolCallRule.from_dict(item) for item in raw_calls)
        values = data.get("set", {} if calls else None)
        if not isinstance(values, Mapping) or not (values or calls):
            raise ConfigurationError(
                f"Rule 'set' must be a non-empty object (or the rule needs a 'call'), "
                f"got {values!r}."
            )
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
            contains=tuple(k for k in contains if k),
            values=dict(values),
            schemas=tuple(schemas),
            calls=calls,
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

    def calls(self, text: str, schema: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The tool calls of every rule matching `text`, in rule order (scoped rules first),
        with captures resolved in `text`; calls whose capture finds nothing are left out.

        Example:
            >>> rules = Rules.from_list([{"when": {"contains": ["order"]}, "call": [
            ...     {"tool": "lookup_order", "arguments": {"order_id": {"regex": "#(\\d+)"}}}]}])
            >>> rules.calls("Where is order #7?")
            [('lookup_order', {'order_id': '7'})]
        """
        found: list[tuple[str, dict[str, Any]]] = []
        scoped = [rule for rule in self.rules if rule.schemas and rule.applies_to(schema)]
        unscoped = [rule for rule in self.rules if not rule.schemas]
        for rule in scoped + unscoped:
            if not rule.calls or not rule.matches(text):
                continue
            for call in rule.calls:
                arguments = call.arguments_for(text)
                if arguments is not None:
                    found.append((call.tool, arguments))
        return found

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
