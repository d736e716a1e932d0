"""Drift test: every keyword the lab passes to transformers, peft, bitsandbytes, datasets or TRL must exist
in the installed versions.

Why: notebooks of projects like this one broke most often on renamed arguments (`torch_dtype` -> `dtype`,
`evaluation_strategy` -> `eval_strategy`, `tokenizer=` -> `processing_class=`), and many of these APIs take
`**kwargs`, so a stale name is silently ignored or only fails deep inside a long run. The scan is static
(`ast`), so it costs no model load: it reads the notebooks' code cells, `reflection_lab/**/*.py` and
`benchmarks/**/*.py`, finds calls whose callee is in `TARGETS`, and checks each keyword against what the
installed library accepts. Where a library takes open-ended `**kwargs`, the accepted set is read from the
installed library's own source (the keys its `from_pretrained` or `__init__` pops from `kwargs`), never from a
list written here, so the test follows the installed versions.

`**name` expansions are checked when `name` is built in the same function or at module level from a dict
literal, `dict(k=...)` or `name["k"] = ...`; other expansions (parameters, call results) cannot be seen
statically and are skipped, except the sampling presets' `hf_kwargs()`, which a separate test evaluates.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import re
import textwrap
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Receivers whose `.generate(...)` is a transformers model; on anything else (a backend of the llm layer:
# `base.generate`, `v.generate` of a viewer) `.generate` is the lab's own and takes the lab's arguments.
HF_MODEL_RECEIVERS = frozenset({"model", "lm", "tuned", "merged", "student", "base_model", "peft_model"})


# -- what the installed libraries accept -------------------------------------------------------------------

def _named_params(fn: Callable[..., Any]) -> set[str]:
    """Named parameters of a callable (not *args/**kwargs, not self/cls)."""
    sig = inspect.signature(fn)
    return {n for n, p in sig.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in ("self", "cls")}


def _init_fields(cls: type) -> set[str]:
    """Dataclass init fields plus named `__init__` parameters: what a config class takes as keywords."""
    names = _named_params(cls.__init__)
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls) if f.init}
    return names


def _kwargs_read(*fns: Callable[..., Any]) -> set[str]:
    """String keys a function reads out of a `*kwargs` mapping (`kwargs.pop("x")`, `kwargs["x"]`, `"x" in kwargs`).

    This is how the installed library itself defines its open-ended keywords, so reading them from its source
    keeps the accepted set tied to the installed version.
    """
    keys: set[str] = set()
    for fn in fns:
        fn = inspect.unwrap(getattr(fn, "__func__", fn))
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        except (OSError, TypeError, SyntaxError):
            continue

        def is_kwargs(node: ast.AST) -> bool:
            return isinstance(node, ast.Name) and node.id.endswith("kwargs")

        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("pop", "get", "setdefault") and is_kwargs(node.func.value)
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                keys.add(node.args[0].value)
            elif (isinstance(node, ast.Subscript) and is_kwargs(node.value) and isinstance(node.slice, ast.Constant)
                  and isinstance(node.slice.value, str)):
                keys.add(node.slice.value)
            elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
                  and isinstance(node.left.value, str) and any(isinstance(o, ast.In) for o in node.ops)
                  and any(is_kwargs(c) for c in node.comparators)):
                keys.add(node.left.value)
    return keys


def _config_keys(cls: type) -> set[str]:
    """A transformers model config: its fields, attribute aliases and the legacy keys its methods convert."""
    keys = _init_fields(cls) | set(getattr(cls, "attribute_map", {}))
    for klass in cls.__mro__:
        if klass.__module__.startswith("transformers"):
            keys |= _kwargs_read(*[f for f in vars(klass).values() if inspect.isfunction(f)])
    return keys


def _tokenizer_init_keys() -> set[str]:
    """Keywords a fast tokenizer's `__init__` (and so `from_pretrained`) understands."""
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    keys = set(PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES)
    for klass in PreTrainedTokenizerFast.__mro__:
        if "__init__" in vars(klass) and klass.__module__.startswith("transformers"):
            keys |= _named_params(klass.__init__) | _kwargs_read(klass.__init__)
    return keys


def _from_pretrained_model() -> set[str]:
    from transformers import PreTrainedConfig, PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    fn = inspect.unwrap(PreTrainedModel.from_pretrained.__func__)
    # Keywords left over after loading are applied to the model's config, so config fields are valid too.
    return (_named_params(fn) | _kwargs_read(fn, _BaseAutoModelClass.from_pretrained)
            | _config_keys(PreTrainedConfig))


def _from_pretrained_tokenizer() -> set[str]:
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    base = PreTrainedTokenizerBase
    return (_named_params(base.from_pretrained) | _kwargs_read(AutoTokenizer.from_pretrained, base.from_pretrained,
                                                                 base._from_pretrained) | _tokenizer_init_keys())


def _generate() -> set[str]:
    """`generate`'s own parameters, every GenerationConfig field, and model inputs forwarded to `forward`."""
    from transformers import GenerationConfig, GPT2LMHeadModel, LlamaForCausalLM
    from transformers.generation.utils import GenerationMixin

    return (_named_params(GenerationMixin.generate) | _kwargs_read(GenerationMixin.generate)
            | set(GenerationConfig().to_dict()) | _named_params(LlamaForCausalLM.forward)
            | _named_params(GPT2LMHeadModel.forward))


def _generation_config() -> set[str]:
    from transformers import GenerationConfig

    return set(GenerationConfig().to_dict()) | _kwargs_read(GenerationConfig.__init__)


def _save_pretrained() -> set[str]:
    """The receiver may be a model, a peft model or a tokenizer: accept what any of them names."""
    from peft import PeftModel
    from transformers import PreTrainedModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    return (_named_params(PreTrainedModel.save_pretrained) | _named_params(PeftModel.save_pretrained)
            | _named_params(PreTrainedTokenizerBase.save_pretrained))


def _streamer(name: str) -> Callable[[], set[str]]:
    def accepted() -> set[str]:
        import transformers
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase

        # extra keywords go to tokenizer.decode
        return _named_params(getattr(transformers, name).__init__) | _named_params(PreTrainedTokenizerBase.decode)
    return accepted


def _cls(module: str, name: str, how: Callable[[Any], set[str]] = _init_fields) -> Callable[[], set[str]]:
    """Accepted keywords of `module.name`, imported only when a call to it was found (TRL alone takes 6 s)."""
    def accepted() -> set[str]:
        obj = getattr(__import__(module, fromlist=[name]), name)
        return how(obj)
    return accepted


def _method(module: str, owner: str, attr: str, with_kwargs_read: bool = False) -> Callable[[], set[str]]:
    def accepted() -> set[str]:
        fn = getattr(getattr(__import__(module, fromlist=[owner]), owner), attr)
        return _named_params(fn) | (_kwargs_read(fn) if with_kwargs_read else set())
    return accepted


def _union(*parts: Callable[[], set[str]]) -> Callable[[], set[str]]:
    return lambda: set().union(*(p() for p in parts))


# Callee -> accepted keywords. A key without a dot matches a call whose name ends in it (`TrainingArguments(`,
# `transformers.TrainingArguments(`); "A.b" matches the last two parts; ".b" matches the method on any receiver.
# Open-ended **kwargs handled strictly (only named parameters): load_dataset (builder options; none used),
# apply_chat_template (extra keywords become template variables, so a typo there is silently ignored).
TARGETS: dict[str, Callable[[], set[str]]] = {
    # transformers
    "TrainingArguments": _cls("transformers", "TrainingArguments"),
    "Trainer": _cls("transformers", "Trainer"),
    "BitsAndBytesConfig": _cls("transformers", "BitsAndBytesConfig"),
    "GenerationConfig": _generation_config,
    "AutoModelForCausalLM.from_pretrained": _from_pretrained_model,
    "AutoTokenizer.from_pretrained": _from_pretrained_tokenizer,
    "PreTrainedTokenizerFast": _tokenizer_init_keys,
    "LlamaConfig": _cls("transformers", "LlamaConfig", _config_keys),
    "GPT2Config": _cls("transformers", "GPT2Config", _config_keys),
    "TextIteratorStreamer": _streamer("TextIteratorStreamer"),
    "TextStreamer": _streamer("TextStreamer"),
    "DataCollatorForLanguageModeling": _cls("transformers", "DataCollatorForLanguageModeling"),
    "DataCollatorWithPadding": _cls("transformers", "DataCollatorWithPadding"),
    "DataCollatorForSeq2Seq": _cls("transformers", "DataCollatorForSeq2Seq"),
    ".generate": _generate,
    ".apply_chat_template": _method("transformers.tokenization_utils_base", "PreTrainedTokenizerBase",
                                    "apply_chat_template"),
    ".save_pretrained": _save_pretrained,
    # peft (bitsandbytes is reached through BitsAndBytesConfig and prepare_model_for_kbit_training)
    "LoraConfig": _cls("peft", "LoraConfig"),
    "get_peft_model": _cls("peft", "get_peft_model", _named_params),
    "prepare_model_for_kbit_training": _cls("peft", "prepare_model_for_kbit_training", _named_params),
    "PeftModel.from_pretrained": _union(_method("peft", "PeftModel", "from_pretrained", True),
                                        _method("peft", "PeftModel", "load_adapter", True)),
    # datasets
    "Dataset.from_list": _method("datasets", "Dataset", "from_list"),
    "Dataset.from_dict": _method("datasets", "Dataset", "from_dict"),
    "load_dataset": _cls("datasets", "load_dataset", _named_params),
    "load_from_disk": _cls("datasets", "load_from_disk", _named_params),
    ".save_to_disk": _union(_method("datasets", "Dataset", "save_to_disk"),
                            _method("datasets", "DatasetDict", "save_to_disk")),
    # TRL (not used today; listed so a notebook that starts using it is checked)
    "SFTConfig": _cls("trl", "SFTConfig"),
    "SFTTrainer": _cls("trl", "SFTTrainer"),
}


@functools.cache
def accepted_keywords(target: str) -> frozenset[str]:
    """The installed libraries' accepted keywords for one TARGETS entry (cached: each is built once)."""
    return frozenset(TARGETS[target]())


# -- finding the calls -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One call to a library API: where it is, which TARGETS key, and the keywords it passes."""

    where: str
    target: str
    keywords: tuple[str, ...]


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None (calls on call results have no stable name)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _match_target(name: str, aliases: dict[str, str]) -> str | None:
    """Which TARGETS key a dotted callee name stands for, if any."""
    parts = name.split(".")
    if parts[-1] in aliases:  # a local subclass of a target class, e.g. `class LabTrainer(Trainer)`
        return aliases[parts[-1]]
    if len(parts) >= 2 and f"{parts[-2]}.{parts[-1]}" in TARGETS:
        return f"{parts[-2]}.{parts[-1]}"
    if "." not in parts[-1] and parts[-1] in TARGETS and (len(parts) == 1 or parts[0] in (
            "transformers", "peft", "datasets", "trl", "bitsandbytes")):
        return parts[-1]
    if len(parts) >= 2 and f".{parts[-1]}" in TARGETS:
        if parts[-1] == "generate" and parts[-2] not in HF_MODEL_RECEIVERS:
            return None
        return f".{parts[-1]}"
    return None


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """Nodes of one scope, not descending into nested functions or classes (their names are theirs)."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


def _literal_keys(scope: ast.AST, name: str) -> set[str]:
    """Constant string keys a dict called `name` gets in one scope: `{...}`, `dict(k=...)`, `name["k"] = ...`."""
    keys: set[str] = set()

    def from_value(value: ast.AST | None) -> None:
        if isinstance(value, ast.Dict):
            keys.update(k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
            keys.update(k.arg for k in value.keywords if k.arg)
        elif isinstance(value, ast.IfExp):
            from_value(value.body)
            from_value(value.orelse)

    for node in _own_nodes(scope):
        plain = isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        annotated = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name
        if plain or annotated:
            from_value(node.value)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == name
                        and isinstance(t.slice, ast.Constant) and isinstance(t.slice.value, str)):
                    keys.add(t.slice.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == name):
            keys.update(k.arg for k in node.keywords if k.arg)
            for arg in node.args:
                from_value(arg)
    return keys


def _is_bound_in(scope: ast.AST, name: str) -> bool:
    """True when `name` is assigned (or a parameter) in this scope, so module-level lookup must stop."""
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = scope.args
        if name in {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p}:
            return True
    return any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store) for n in _own_nodes(scope))


def find_calls(source: str, label: str, line_label: Callable[[int], str] | None = None) -> list[Call]:
    """Every TARGETS call in one module's source, with explicit keywords plus those from literal **dicts."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):  # subclasses without their own __init__ take the base's keywords
        if isinstance(node, ast.ClassDef) and not any(
                isinstance(b, ast.FunctionDef) and b.name == "__init__" for b in node.body):
            for base in node.bases:
                target = _match_target(_dotted(base) or "", {})
                if target and "." not in target:
                    aliases[node.name] = target
    calls: list[Call] = []

    def visit(scope: ast.AST) -> None:
        for node in _own_nodes(scope):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                visit(node)
            if not isinstance(node, ast.Call):
                continue
            func, keywords = node.func, node.keywords
            if _dotted(func) in ("functools.partial", "partial") and node.args:  # partial(f, k=...) is f(k=...)
                func = node.args[0]
            target = _match_target(_dotted(func) or "", aliases)
            if target is None:
                continue
            names = [k.arg for k in keywords if k.arg]
            for k in keywords:
                if k.arg is None and isinstance(k.value, ast.Name):
                    source_scope = scope if _is_bound_in(scope, k.value.id) else tree
                    names += sorted(_literal_keys(source_scope, k.value.id))
            where = f"{label}:{line_label(node.lineno) if line_label else node.lineno}"
            calls.append(Call(where, target, tuple(names)))

    visit(tree)
    return calls


def _notebook_source(path: Path) -> tuple[str, Callable[[int], str]]:
    """All code cells as one module (cells share one namespace), magics blanked; maps lines back to cells."""
    lines: list[str] = []
    origin: list[str] = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):  # i counts every cell, as Jupyter shows them
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for j, line in enumerate(src.splitlines(), 1):
            lines.append("" if line.lstrip().startswith(("%", "!")) else line)
            origin.append(f"cell {i} line {j}")
        lines.append("")
        origin.append(f"cell {i} end")
    return "\n".join(lines), lambda n: origin[n - 1]


def scan_project() -> list[Call]:
    """Calls in the notebooks, the package and the benchmarks."""
    calls: list[Call] = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        source, line_label = _notebook_source(nb)
        calls += find_calls(source, str(nb.relative_to(ROOT)), line_label)
    for folder in ("reflection_lab", "benchmarks"):
        for py in sorted((ROOT / folder).rglob("*.py")):
            calls += find_calls(py.read_text(), str(py.relative_to(ROOT)))
    return calls


def drift(calls: Iterable[Call]) -> list[str]:
    """One line per keyword the installed library does not accept, with the closest real names."""
    problems = []
    for call in calls:
        accepted = accepted_keywords(call.target)
        for kw in call.keywords:
            if kw not in accepted:
                near = difflib.get_close_matches(kw, accepted, n=3)
                problems.append(f"{call.where}: {call.target}({kw}=...) is not accepted by the installed version"
                                + (f"; did you mean {', '.join(near)}?" if near else ""))
    return problems


_DEPRECATION = re.compile(r"deprecated alias|will be removed|\bis deprecated\b", re.IGNORECASE)


@functools.cache
def deprecated_keywords(target: str) -> dict[str, str]:
    """Dataclass fields the installed library documents as deprecated (still accepted, so not drift yet)."""
    cls_name = target if target in ("TrainingArguments", "LoraConfig", "BitsAndBytesConfig", "SFTConfig") else None
    if cls_name is None:
        return {}
    module = {"LoraConfig": "peft", "SFTConfig": "trl"}.get(cls_name, "transformers")
    cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
    return {f.name: str(f.metadata["help"]) for f in dataclasses.fields(cls)
            if _DEPRECATION.search(str(f.metadata.get("help", "")))}


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("transformers", "peft", "bitsandbytes", "datasets", "trl"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} missing")
    return ", ".join(out)


# -- tests -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project_calls() -> list[Call]:
    return scan_project()


def test_every_library_keyword_exists_in_the_installed_versions(project_calls: list[Call]) -> None:
    t0 = time.perf_counter()
    problems = drift(project_calls)
    assert not problems, f"keyword drift against {_versions()}:\n" + "\n".join(problems)
    assert time.perf_counter() - t0 < 20


def test_deprecated_keywords_are_reported_not_failed(project_calls: list[Call]) -> None:
    """Names kept only as deprecated aliases still work, so they do not fail; a warning lists them, because
    they are the next release's drift."""
    found = sorted({f"{c.where}: {c.target}({kw}=): {deprecated_keywords(c.target)[kw]}" for c in project_calls
                    for kw in c.keywords if kw in deprecated_keywords(c.target)})
    if found:
        warnings.warn("deprecated keywords in use (" + _versions() + "):\n" + "\n".join(found), UserWarning,
                      stacklevel=1)


def test_scan_is_not_vacuous(project_calls: list[Call]) -> None:
    """The scan must keep seeing the calls that matter, or a broken matcher would pass silently."""
    found = {c.target for c in project_calls}
    must = {"TrainingArguments", "Trainer", "LoraConfig", "BitsAndBytesConfig", "get_peft_model",
            "prepare_model_for_kbit_training", "PeftModel.from_pretrained", "AutoModelForCausalLM.from_pretrained",
            "AutoTokenizer.from_pretrained", ".generate", ".apply_chat_template", "Dataset.from_list",
            "load_dataset", "load_from_disk", ".save_to_disk", "LlamaConfig"}
    assert must <= found, f"no longer found: {sorted(must - found)}"
    n_kw = sum(len(c.keywords) for c in project_calls)
    assert len(project_calls) >= 30 and n_kw >= 100, (len(project_calls), n_kw)
    gen = [c for c in project_calls if c.target == ".generate"]
    assert any(c.where.startswith("notebooks/") for c in gen)  # notebook cells are scanned too
    # keys from literal dicts behind **: models.load_model's kwargs["quantization_config"], tiny.py's **ids
    loads = [c for c in project_calls if c.target == "AutoModelForCausalLM.from_pretrained"]
    assert any("quantization_config" in c.keywords for c in loads)
    assert any("bos_token_id" in c.keywords for c in project_calls if c.target == "LlamaConfig")


def test_every_target_resolves_in_the_installed_libraries() -> None:
    """A class or function renamed or removed upstream fails here, not only when someone first calls it."""
    for target in TARGETS:
        if target.startswith("SFT"):  # TRL costs 6 s to import; checked only when a call to it exists
            continue
        assert accepted_keywords(target), target


def test_a_misspelled_keyword_is_reported() -> None:
    """The check can fail: wrong names are reported with a hint, right ones are not."""
    src = textwrap.dedent('''
        import functools
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
        LORA = {"lora_alfa": 16}
        cfg = LoraConfig(rank=8, r=8, lora_dropout=0.1, **LORA)

        def load(path):
            kwargs = {"dtype": "auto"}
            kwargs["torch_dtyp"] = "auto"
            return AutoModelForCausalLM.from_pretrained(path, device_map="cpu", **kwargs)

        class MyTrainer(Trainer):
            pass

        MyTrainer(args=TrainingArguments(output_dir="x", evaluation_strategy="steps"), tokenizer=None)
        model.generate(max_new_token=5, do_sample=False, attention_mask=None)
        teacher.generate(anything=1)  # the lab's own generate: not checked
        functools.partial(model.save_pretrained, save_embeding_layers=False)
    ''')
    problems = drift(find_calls(src, "selftest"))
    text = "\n".join(problems)
    for bad, hint in [("rank", None), ("lora_alfa", "lora_alpha"), ("torch_dtyp", "torch_dtype"),
                      ("evaluation_strategy", "eval_strategy"), ("tokenizer", None),
                      ("max_new_token", "max_new_tokens"), ("save_embeding_layers", "save_embedding_layers")]:
        assert f"({bad}=...)" in text, (bad, text)
        if hint:
            assert hint in next(p for p in problems if f"({bad}=...)" in p)
    assert len(problems) == 7, text  # r, lora_dropout, dtype, device_map, do_sample, output_dir, anything: fine


def test_a_notebook_cell_is_scanned_with_magics_skipped(tmp_path: Path) -> None:
    """Notebook cells share one namespace: a dict from an earlier cell is checked where it is expanded."""
    nb = {"cells": [{"cell_type": "markdown", "source": ["LoraConfig(rank=1)"]},
                    {"cell_type": "code", "source": ["%pip install peft\n", "GEN = dict(max_new_token=3)\n"]},
                    {"cell_type": "code", "source": "!ls\nout = model.generate(input_ids=ids, **GEN)\n"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "probe.ipynb"
    path.write_text(json.dumps(nb))
    source, line_label = _notebook_source(path)
    problems = drift(find_calls(source, path.name, line_label))
    assert problems == [problems[0]] and problems[0].startswith("probe.ipynb:cell 2 line 2: .generate(max_new_token=")


def test_sampling_presets_pass_only_generate_keywords() -> None:
    """`**preset.hf_kwargs()` is built at run time, so its keys are checked by calling it."""
    from reflection_lab.llm.sampling import PRESETS

    accepted = accepted_keywords(".generate")
    for name, preset in PRESETS.items():
        unknown = set(preset.hf_kwargs()) - accepted
        assert not unknown, f"preset {name!r} passes {sorted(unknown)} to generate"
