"""The settings several stages must agree on, and the rules that tie fields together.

Each shared setting has one home: the field a user sets. Its readers (the copies
that embedders and trainers carry, so each can be built from its own section) are
filled from the home when the config is loaded; a reader set explicitly to another
value is refused in one line that names both fields. The rules below then check the
numbers that must fit together. Both run on every `load_config`, so a contradiction
stops a run before any stage starts; `nyx config --check` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shared:
    home: str
    readers: tuple[str, ...]
    why: str


SHARED = (
    Shared("chunk.image_placeholder",
           ("mine.embedder.image_placeholder", "mine.text_embedder.image_placeholder",
            "train_stage1.image_placeholder", "train_stage2.image_placeholder",
            "feedback.embedder.image_placeholder", "evaluate.embedder.image_placeholder"),
           "chunk writes it for each image; every later reader finds the images by it"),
    Shared("train_stage1.query_instruction",
           ("train_stage2.query_instruction", "feedback.embedder.query_instruction",
            "evaluate.embedder.query_instruction"),
           "the Nyx embedder is queried with the instruction it was trained with"),
    Shared("train_stage1.prompt_format",
           ("train_stage2.prompt_format", "feedback.embedder.prompt_format", "evaluate.embedder.prompt_format"),
           "the Nyx embedder reads inputs in the format it was trained with"),
)


class ConfigContradiction(ValueError):
    """Two fields of one config disagree; the message names both."""


def _at(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def share_settings(cfg) -> None:
    """Fill every reader from its home, in place; refuse a reader set explicitly to another value."""
    for s in SHARED:
        value = _at(cfg, s.home)
        for reader in s.readers:
            parent_path, field = reader.rsplit(".", 1)
            parent = _at(cfg, parent_path)
            own = getattr(parent, field)
            if own == value:
                continue
            if field in parent.model_fields_set:
                raise ConfigContradiction(
                    f"{reader} ({own!r}) contradicts {s.home} ({value!r}): {s.why}; set {s.home} only")
            setattr(parent, field, value)


def shared_lines(cfg) -> list[str]:
    """The shared settings as `nyx config --check` prints them."""
    return [f"{s.home} ({_at(cfg, s.home)!r}) is the one home of {', '.join(s.readers)}" for s in SHARED]


def check_rules(cfg) -> list[str]:
    """Check the numbers that must fit together. Returns the rules checked, as lines for `nyx config
    --check`; raises ConfigContradiction naming the fields of the first rule that does not hold."""
    m, fb, ev = cfg.mine, cfg.feedback, cfg.evaluate
    rules = [(m.num_negatives <= m.range_max - m.range_min,
              f"mine.num_negatives ({m.num_negatives}) <= mine.range_max - mine.range_min "
              f"({m.range_max} - {m.range_min}): the negatives are taken from that window"),
             (fb.window_size <= fb.top_k,
              f"feedback.window_size ({fb.window_size}) <= feedback.top_k ({fb.top_k}): windows slide over the top K")]
    for name in ("train_stage1", "train_stage2"):
        tr = getattr(cfg, name)
        kinds = {s.kind for s in tr.sources}
        if kinds & {"mine", "negatives"}:
            rules.append((tr.negatives.per_query <= m.num_negatives,
                          f"{name}.negatives.per_query ({tr.negatives.per_query}) <= mine.num_negatives "
                          f"({m.num_negatives}): what mining keeps per query"))
        if "feedback" in kinds:
            rules.append((tr.negatives.per_query <= fb.num_negatives,
                          f"{name}.negatives.per_query ({tr.negatives.per_query}) <= feedback.num_negatives "
                          f"({fb.num_negatives}): what feedback keeps per query"))
    for model in ev.models:
        trained = getattr(cfg, f"train_{model}").loss.dims
        rules.append((ev.untrained_dims or set(ev.dims) <= set(trained),
                      f"evaluate.dims ({ev.dims}) are among train_{model}.loss.dims ({trained}): the {model} "
                      "model is evaluated at the Matryoshka dims it was trained at"))
    if fb.embedder.kind == "nyx" and fb.embedder.dim is not None:
        trained = cfg.train_stage1.loss.dims
        rules.append((fb.embedder.dim in trained, f"feedback.embedder.dim ({fb.embedder.dim}) is among "
                      f"train_stage1.loss.dims ({trained}): feedback embeds with the stage-1 model"))
    for ok, rule in rules:
        if not ok:
            raise ConfigContradiction(f"{rule}: does not hold")
    return [rule for _, rule in rules]


def hidden_size_rules(cfg, hidden_size_of) -> list[str]:
    """The Matryoshka dims against the embedder's hidden width, read from the model's config
    (`hidden_size_of(model) -> int | None`; None when the config cannot be read here)."""
    lines = []
    for name in ("train_stage1", "train_stage2"):
        tr = getattr(cfg, name)
        width = hidden_size_of(tr.base_model)
        if width is None:
            lines.append(f"not checked: {name}.loss.dims against the width of {tr.base_model!r} (no config of it here)")
            continue
        if max(tr.loss.dims) > width:
            raise ConfigContradiction(f"{name}.loss.dims ({tr.loss.dims}) <= the hidden width of "
                                      f"{name}.base_model ({tr.base_model!r}: {width}): does not hold")
        lines.append(f"{name}.loss.dims ({tr.loss.dims}) <= the hidden width of {name}.base_model "
                     f"({tr.base_model!r}: {width})")
    return lines
