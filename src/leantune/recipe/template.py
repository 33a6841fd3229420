"""A small template language for cloze prompts.

A template is text with placeholders in braces::

    "{text} All in all, it was {mask}."
    "{text_a}? {mask}, {text_b}"              # pairs: text_a → text, text_b → text_pair
    "{soft:3} {text} It was {mask}."          # 3 learned prompt embeddings (P-tuning style)
    "{text} {trigger:4} {mask}."              # 4 trigger tokens found by AutoPrompt search
    "\"{text}\" ? {mask}, this is about {label}."   # NLI-style zero-shot (one prompt per label)

Placeholders: ``text`` (alias ``text_a``), ``text_pair`` (alias ``text_b``), ``mask``
(exactly one), ``soft`` / ``soft:N``, ``trigger`` / ``trigger:N``, ``label``. ``{{`` and
``}}`` are literal braces. Parse errors name the column (1-based) and the problem.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

from ..errors import RecipeError

FIELDS = {"text": "text", "text_a": "text", "text_pair": "text_pair", "text_b": "text_pair", "label": "label"}
COUNTED = ("soft", "trigger")
KNOWN = "text, text_a, text_pair, text_b, label, mask, soft, soft:N, trigger, trigger:N"

SOFT = -2  # sentinel ids inside an encoding, replaced before the model sees them
TRIGGER = -3
MASK = -1


class TemplateError(RecipeError):
    """A template that does not parse: the message names the column and the problem."""

    def __init__(self, template: str, column: int, problem: str):
        self.template, self.column, self.problem = template, column, problem
        pointer = " " * (column - 1) + "^"
        super().__init__(f"template column {column}: {problem}\n  {template}\n  {pointer}")


@dataclass(frozen=True)
class Segment:
    kind: str  # "lit" | "field" | "mask" | "soft" | "trigger"
    value: str = ""  # literal text or field name
    count: int = 1
    column: int = 1


@dataclass
class Encoded:
    """Token ids of one rendered prompt with the positions the scorer needs."""

    input_ids: list[int]
    mask_positions: list[int]          # [MASK] positions (masked LM) or [last prompt position] (causal)
    soft_index: list[int]              # per position: -1, or the soft-prompt row it takes
    trigger_slots: list[int] = field(default_factory=list)  # positions of trigger tokens, in order
    prefix_space: bool = False         # the text before {mask} ended in whitespace (stripped, causal)


def parse(template: str, *, require_mask: bool = True) -> list[Segment]:
    """Template text → segments; raises :class:`TemplateError` naming the column."""
    if not isinstance(template, str):
        raise RecipeError(f"a template is a string, got {type(template).__name__}")
    segs: list[Segment] = []
    buf: list[str] = []
    buf_col = 1
    i, n = 0, len(template)

    def flush():
        if buf:
            segs.append(Segment("lit", "".join(buf), column=buf_col))
            buf.clear()

    while i < n:
        ch = template[i]
        if ch == "{" and template.startswith("{{", i):
            if not buf:
                buf_col = i + 1
            buf.append("{")
            i += 2
            continue
        if ch == "}":
            if template.startswith("}}", i):
                if not buf:
                    buf_col = i + 1
                buf.append("}")
                i += 2
                continue
            raise TemplateError(template, i + 1, "stray '}' with no opening '{' (write '}}' for a literal brace)")
        if ch == "{":
            end = template.find("}", i + 1)
            nested = template.find("{", i + 1)
            if end < 0 or (0 <= nested < end):
                raise TemplateError(template, i + 1, "unclosed brace: '{' has no matching '}'")
            flush()
            segs.append(_placeholder(template, template[i + 1:end].strip(), i + 1))
            i = end + 1
            buf_col = i + 1
            continue
        if not buf:
            buf_col = i + 1
        buf.append(ch)
        i += 1
    flush()
    masks = [s for s in segs if s.kind == "mask"]
    if require_mask and not masks:
        raise TemplateError(template, max(1, n), "no {mask} placeholder: a cloze template needs exactly one")
    if len(masks) > 1:
        raise TemplateError(template, masks[1].column, "multiple {mask} placeholders: a template has exactly one")
    return segs


def _placeholder(template: str, body: str, column: int) -> Segment:
    if not body:
        raise TemplateError(template, column, "empty placeholder {}; known placeholders: " + KNOWN)
    name, _, arg = body.partition(":")
    name = name.strip()
    if name in FIELDS and not arg:
        return Segment("field", FIELDS[name], column=column)
    if name == "mask" and not arg:
        return Segment("mask", column=column)
    if name in COUNTED:
        count = 1
        if arg:
            if not arg.strip().isdigit() or int(arg) < 1:
                raise TemplateError(template, column, f"{{{body}}}: the count after ':' must be a positive integer")
            count = int(arg)
        return Segment(name, count=count, column=column)
    if arg:
        raise TemplateError(template, column, f"unknown placeholder {{{body}}}: only soft and trigger take ':N'")

    close = difflib.get_close_matches(name, list(FIELDS) + ["mask", *COUNTED], n=1, cutoff=0.6)
    hint = f" Did you mean {{{close[0]}}}?" if close else ""
    raise TemplateError(template, column, f"unknown placeholder {{{name}}}.{hint} Known: {KNOWN}")


class Template:
    """A parsed template; renders examples to text and to token ids."""

    def __init__(self, text: str, *, require_mask: bool = True):
        self.text = text
        self.segments = parse(text, require_mask=require_mask)
        self.trigger_ids: list[int] | None = None  # set by AutoPrompt search; default filler otherwise

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    # ------------------------------------------------------------------ properties
    @property
    def n_soft(self) -> int:
        return sum(s.count for s in self.segments if s.kind == "soft")

    @property
    def n_trigger(self) -> int:
        return sum(s.count for s in self.segments if s.kind == "trigger")

    @property
    def fields(self) -> set[str]:
        return {s.value for s in self.segments if s.kind == "field"}

    @property
    def has_label(self) -> bool:
        return "label" in self.fields

    # ------------------------------------------------------------------ rendering
    def render(self, example: dict, mask: str = "[MASK]", *, label: str | None = None,
               soft: str = "[SOFT]", trigger: str = "[T]") -> str:
        """Plain text (for display and demonstrations): ``mask`` stands for the {mask}."""
        out = []
        for s in self.segments:
            if s.kind == "lit":
                out.append(s.value)
            elif s.kind == "field":
                out.append(_field(example, s.value, label))
            elif s.kind == "mask":
                out.append(mask)
            elif s.kind == "soft":
                out.append(soft * s.count)
            else:
                out.append(trigger * s.count)
        return "".join(out)

    def encode(self, tokenizer, example: dict, *, causal: bool, n_masks: int = 1, max_length: int = 512,
               prefix: str = "", label: str | None = None, trigger_filler: int | None = None,
               special_tokens: bool = True) -> Encoded:
        """Token ids of ``prefix`` + the rendered template.

        Masked LMs: ``n_masks`` mask tokens stand at {mask}; text after it is kept. Causal
        LMs: the prompt ends just before {mask} (trailing whitespace moves to the label
        word, see ``Encoded.prefix_space``) and the scored position is the last one. Text
        fields are cut (longest first) so that the whole fits ``max_length``.
        """
        segs = list(self.segments)
        prefix_space = False
        if causal:
            cut = next(i for i, s in enumerate(segs) if s.kind == "mask")
            segs = segs[:cut]
            if segs and segs[-1].kind == "lit" and segs[-1].value != segs[-1].value.rstrip():
                prefix_space = True
                stripped = segs[-1].value.rstrip()
                segs[-1] = replace(segs[-1], value=stripped)
        values = {name: _field(example, name, label) for name in self.fields}
        field_ids = {k: tokenizer(v, add_special_tokens=False)["input_ids"] for k, v in values.items()}
        lead, trail = special_affixes(tokenizer) if special_tokens else ([], [])
        ids = self._assemble(tokenizer, segs, values, prefix, n_masks, trigger_filler, lead, trail)
        excess = len(ids) - max_length
        if excess > 0 and field_ids:  # shorten the longest text field(s), then re-render
            lengths = {k: len(v) for k, v in field_ids.items() if k != "label"}
            while excess > 0 and lengths and max(lengths.values()) > 0:
                longest = max(lengths, key=lengths.get)
                take = min(excess, lengths[longest])
                lengths[longest] -= take
                excess -= take
            for k, keep in lengths.items():
                values[k] = tokenizer.decode(field_ids[k][:keep])
            ids = self._assemble(tokenizer, segs, values, prefix, n_masks, trigger_filler, lead, trail)
            if len(ids) > max_length:  # templates/prefix alone too long: keep the end (the query)
                ids = ids[len(ids) - max_length:]
        soft_index, slots, masks = [], [], []
        k = 0
        out = []
        for pos, t in enumerate(ids):
            soft_index.append(-1)
            if t == SOFT:
                soft_index[-1] = k
                k += 1
                t = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            elif t == TRIGGER:
                slots.append(pos)
                t = trigger_filler if trigger_filler is not None else _default_filler(tokenizer)
            elif t == MASK:
                masks.append(pos)
                t = tokenizer.mask_token_id
            out.append(t)
        if causal:
            masks = [len(out) - 1]
        if self.trigger_ids is not None:
            for pos, t in zip(slots, self.trigger_ids):
                out[pos] = t
        return Encoded(out, masks, soft_index, slots, prefix_space)

    def _assemble(self, tokenizer, segs, values, prefix, n_masks, trigger_filler, lead, trail) -> list[int]:
        ids: list[int] = list(lead)
        chunk = prefix
        for s in segs:
            if s.kind in ("lit", "field"):
                chunk += s.value if s.kind == "lit" else values[s.value]
                continue
            if chunk:
                ids += tokenizer(chunk, add_special_tokens=False)["input_ids"]
                chunk = ""
            if s.kind == "mask":
                if tokenizer.mask_token_id is None:
                    raise RecipeError("this tokenizer has no mask token; masked-LM prompts need one")
                ids += [MASK] * n_masks
            elif s.kind == "soft":
                ids += [SOFT] * s.count
            else:
                ids += [TRIGGER] * s.count
        if chunk:
            ids += tokenizer(chunk, add_special_tokens=False)["input_ids"]
        return ids + list(trail)


def _field(example: dict, name: str, label: str | None) -> str:
    if name == "label":
        if label is None:
            raise RecipeError("template uses {label}: it is filled per candidate label (zero-shot NLI style)")
        return label
    value = example.get(name)
    return "" if value is None else str(value)


def _default_filler(tokenizer) -> int:
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    ids = tokenizer(" the", add_special_tokens=False)["input_ids"]
    return ids[-1] if ids else 0


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after a text ([CLS] … [SEP], <s> …)."""
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(probe) + 1):
        if full[start:start + len(probe)] == probe:
            return full[:start], full[start + len(probe):]
    return [], []


def compose(*templates: str, sep: str = " ") -> Template:
    """Composition (Liu et al. 2021 survey, §6.3): sub-templates joined into one.

    Sub-templates may leave out {mask}; the joined template must have exactly one.
    """
    for t in templates:
        parse(t, require_mask=False)  # errors name the sub-template's own column
    return Template(sep.join(templates))


def truncate_text(tokenizer, text: str, max_tokens: int | None) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (for demonstrations)."""
    if not max_tokens or not text:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])
