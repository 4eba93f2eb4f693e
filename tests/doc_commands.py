"""The shell commands the documentation shows, and how the docs harness (tests/test_docs.py) runs each one.

``extract_commands()`` reads README.md, docs/*.md, experiments/README.md and the module docstrings of configs/*.py
and experiments/*.py. A command is a line of a fenced (```, ```bash) or indented code block, or an inline `code`
span with arguments, that starts with a program (python, bash, pip, srun, ...); backslash continuations are
joined and ``# comments`` dropped.

``plan(commands)`` decides for each one, by the rules below:

* **not run here**: a SKIP rule names why (a GPU, a TPU VM, a SLURM cluster, the network, the Python environment);
* **run** in smoke form (``REGNET_JAX_SMOKE=1``, docs/training.md): placeholders are bound (``DIR``, ``NAME``,
  ``ID``, ...), optional ``[--flags]`` are dropped, a ``for`` loop runs its first iteration, absolute paths move
  under the document's scratch directory, and the files a reader brings (a ``.pyth`` download, ``cat.jpg``, a
  weights or sweep directory no earlier command made) are generated stand-ins (``ensures``);
* **parse**: a command that differs from a fully run one only in its arguments gets its flags parsed, its config
  loaded and validated, but does not run (the harness's time budget);
* **same**: identical to an earlier command, whose result it shares.

A command that no rule covers is returned as *unclassified* and fails the harness's first test: a new documented
command is run or listed, never silently ignored. Commands of one document share a working directory and run in
document order where one uses what another makes (``deps``); the others run in parallel.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = ("python", "python3", "bash", "pip", "srun", "sbatch", "gcloud", "tfds", "tensorboard", "for")
_ENV_PREFIX = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*")
_SHELL_FENCES = ("", "bash", "sh", "shell", "console")

# (pattern, why it is not run here); the first matching rule wins.
SKIP_RULES: list[tuple[str, str]] = [
    (r"^pip\b", "changes the Python environment; CI installs the project itself (.ci/run: pip install -e '.[test]')"),
    (r"\bpytest\b", "the test suite itself, which runs this harness"),
    (r"^(srun|sbatch)\b", "needs a SLURM cluster"),
    (r"^gcloud\b", "needs Google Cloud (gcloud: an account, the network; TPU VMs for `ssh --worker`)"),
    (r"\bgs://", "needs a Cloud Storage bucket (gs://); tests/test_gcs_emulator.py runs these paths against an emulator"),
    (r"gpu_check\.sh|--devices=gpu:|--device=cuda", "needs an NVIDIA GPU"),
    (r"--devices=tpu:", "needs TPU chips"),
    (r"^tfds build\b", "downloads a dataset (needs the network, or ImageNet's tar files)"),
    (r"^tensorboard\b", "a server that runs until it is stopped"),
    (r"^python3? benchmarks/(side_by_side|input_pipeline|prepared_data|gpu_check|profile_step|conv_layers)\.py", "a full-size speed measurement of PyTorch and JAX "
     "(minutes on 2 CPU cores): REGNET_JAX_SMOKE does not shrink these scripts yet"),
    (r"^python3? benchmarks/time_to_first_step\.py", "six full-size training starts of RegNetY-400MF per repeat (minutes on 2 CPU cores); "
     "tests/test_compilation_cache.py runs the cache's rerun at the tiny size"),
    (r"^python3? benchmarks/memory_breakdown\.py", "a full-size memory measurement of PyTorch and JAX, stage by stage (minutes on 2 CPU "
     "cores); tests/test_memory.py checks what it relies on"),
    (r"^python3? benchmarks/recipe_cost\.py", "a speed and memory measurement of several recipe layouts (minutes on 2 CPU cores; "
     "the layouts' math is tested by tests/test_recipe.py)"),
    (r"^python3? benchmarks/docs_figures\.py", "measures the figures the docs quote: full-size runs, minutes on an idle machine"),
    (r"(^|\s)\.\.\.(\s|$)", "a synopsis with elided arguments (...); the complete commands are run from the same document"),
]  # fmt: skip
if importlib.util.find_spec("torch") is None:  # the optional 'torch' extra; tests/test_convert*.py skip likewise
    SKIP_RULES.insert(
        0,
        (
            r"\.(pyth|pth|pt)\b",
            "reads or writes a PyTorch checkpoint: needs the optional 'torch' extra, not installed here",
        ),
    )

# Placeholders and what they stand for (DIR depends on the flag: see _bind_dir).
PLACEHOLDERS = {"NAME": "fig9_regnetx", "ID": "000000", "FIG": "fig9"}
_STANDIN_DIRS = ("WEIGHTS_DIR", "DIR", "A", "B", "C")  # become directories of the scratch (made by ensures)
_PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9_.])[A-Z][A-Z0-9_]*(?![A-Za-z0-9_])")
_KNOWN_TOOLS = re.compile(r"^python3? -m regnet_jax\.[a-z_.]+|^bash experiments/miniature\.sh|^for \w+ in ")


@dataclasses.dataclass(frozen=True)
class DocCommand:
    """One documented command: where it is written and its text (continuations joined, comments dropped)."""

    doc: str  # repository-relative file
    line: int
    text: str

    @property
    def source(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclasses.dataclass
class Plan:
    """How the harness treats one documented command (see the module docstring)."""

    cmd: DocCommand
    action: str  # 'run', 'parse', 'same' or 'skip'
    shell: str = ""  # the command line run (bash), relative to the document's scratch directory
    notes: list[str] = dataclasses.field(default_factory=list)  # what binding changed, or why it is not run
    ensures: list[tuple[str, str, dict]] = dataclasses.field(default_factory=list)  # (kind, path, params) stand-ins
    produces: set[str] = dataclasses.field(default_factory=set)
    consumes: set[str] = dataclasses.field(default_factory=set)
    deps: list[int] = dataclasses.field(default_factory=list)  # indices of plans that must finish first
    same_as: int = -1

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["produces"], d["consumes"] = sorted(self.produces), sorted(self.consumes)
        return d


# ---------------------------------------------------------------- extraction


def _is_command(text: str, inline: bool) -> bool:
    rest = text[_ENV_PREFIX.match(text).end() :]
    words = rest.split()
    if not words or not (words[0] in PROGRAMS or (not inline and words[0].startswith("benchmarks/"))):
        return False
    module_args = words[3:] if words[:2] in (["python", "-m"], ["python3", "-m"]) else words[1:]
    return not inline or bool(module_args)  # an inline `python -m regnet_jax.models` is a mention, not a command


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _block_commands(doc: str, lines: list[tuple[int, str]]) -> list[DocCommand]:
    out, current = [], None
    for number, raw in lines:
        text = _strip_comment(raw.strip())
        if current is not None:
            current[1] += " " + text.rstrip("\\").strip()
            if not text.endswith("\\"):
                out.append(DocCommand(doc, *current))
                current = None
        elif _is_command(text, inline=False):
            if text.endswith("\\"):
                current = [number, text[:-1].strip()]
            else:
                out.append(DocCommand(doc, number, text))
    return out


def markdown_commands(doc: str, text: str) -> list[DocCommand]:
    """The commands of one Markdown file (fenced and indented code blocks, inline code spans)."""
    out: list[DocCommand] = []
    fence, block, indented = None, [], []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if fence is None:
                out += _block_commands(doc, indented)
                fence, block, indented = line.strip()[3:].strip(), [], []
            else:
                out += _block_commands(doc, block) if fence in _SHELL_FENCES else []
                fence = None
            continue
        if fence is not None:
            block.append((number, line))
        elif line.startswith("    ") or (indented and not line.strip()):
            indented.append((number, line))
        else:
            out += _block_commands(doc, indented)
            indented = []
            out += [
                DocCommand(doc, number, m.group(1))
                for m in re.finditer(r"`([^`]+)`", line)
                if _is_command(m.group(1), inline=True)
            ]
    return out + _block_commands(doc, indented)


def docstring_commands(doc: str, source: str) -> list[DocCommand]:
    """The commands of a Python file's module docstring (line numbers counted within the file)."""
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree, clean=False)
    if not docstring:
        return []
    first = tree.body[0].lineno
    return _block_commands(doc, [(first + i, line) for i, line in enumerate(docstring.splitlines())])


def documented_files(repo: pathlib.Path = REPO) -> list[pathlib.Path]:
    """The files the docs harness reads, README first."""
    md = [repo / "README.md", *sorted((repo / "docs").glob("*.md")), repo / "experiments" / "README.md"]
    return md + sorted((repo / "configs").glob("*.py")) + sorted((repo / "experiments").glob("*.py"))


def extract_commands(repo: pathlib.Path = REPO) -> list[DocCommand]:
    """Every documented command, in file order (README, docs/, experiments/README.md, config docstrings)."""
    out = []
    for path in documented_files(repo):
        rel, text = str(path.relative_to(repo)), path.read_text(encoding="utf-8")
        out += markdown_commands(rel, text) if path.suffix == ".md" else docstring_commands(rel, text)
    return out


# ---------------------------------------------------------------- binding


def _skip_reason(text: str) -> str | None:
    body = text[_ENV_PREFIX.match(text).end() :]
    for pattern, reason in SKIP_RULES:
        if re.search(pattern, body):
            return reason
    return None


def _flag(args: list[str], name: str) -> str | None:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def _bind_dir(args: list[str], line: int) -> list[str]:
    """DIR is a fresh training workdir after --workdir=, that workdir after --checkpoint=, the folder dataset after
    data_dir=, and one sweep (or scratch) directory named DIR anywhere else."""
    out = []
    for a in args:
        if a == "--workdir=DIR":
            a = f"--workdir=DIR_{line}"
        elif a == "--checkpoint=DIR":
            a = "--checkpoint=DIR_WORKDIR"  # resolved to the latest --workdir=DIR_* of the document in plan()
        elif a.endswith("data_dir=DIR"):
            a = a[: -len("DIR")] + "FOLDER_DATA"
        out.append(a)
    return out


def _remap_absolute(arg: str) -> str:
    """Absolute paths (/tmp/x, /data/tfds, ...) move under the document's scratch directory: _abs/tmp/x."""
    return re.sub(r"(^|[=:,])/(?!/)", r"\1_abs/", arg)


def _split_and(text: str) -> list[str]:
    """The commands of ``a && b`` (an ``&&`` inside quotes belongs to its argument)."""
    parts, start, quote = [], 0, None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif text.startswith(" && ", i):
            parts.append(text[start:i].strip())
            start = i + 4
    return parts + [text[start:].strip()]


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./$-]+", word) else shlex.quote(word)  # $s stays a shell variable


def _bind_simple(part: str, line: int) -> tuple[str | None, str | None]:
    """(bound text, None) of one simple command, or (None, why it is unclassified)."""
    env = _ENV_PREFIX.match(part).group(0)
    if not _KNOWN_TOOLS.match(part[len(env) :]):
        return None, f"unclassified: no rule runs or skips `{part}`"
    try:
        words = _bind_dir(shlex.split(part[len(env) :]), line)
    except ValueError as e:  # e.g. an unbalanced quote
        return None, f"unclassified: `{part}` is not a shell command line ({e})"
    words = ["--only=0" if w == "--only=k" else w.replace(",...", "") for w in words]
    for name, value in PLACEHOLDERS.items():
        words = [_PLACEHOLDER.sub(lambda t: value if t.group(0) == name else t.group(0), w) for w in words]
    words = [_remap_absolute(w) for w in words]
    found = {t for w in words[1:] for t in _PLACEHOLDER.findall(w.split("=", 1)[-1])}
    unknown = sorted(
        t for t in found if t not in _STANDIN_DIRS + ("DIR_WORKDIR", "FOLDER_DATA") and not re.fullmatch(r"DIR_\d+", t)
    )
    if unknown:
        return (
            None,
            f"unclassified: unknown placeholder(s) {unknown} in `{part}`: bind them in tests/doc_commands.py or list the command",
        )
    return env + " ".join(map(_quote, words)), None


def _bind(cmd: DocCommand, previous: dict[str, str]) -> tuple[str | None, list[str], str | None]:
    """(bound shell text or None, notes, why it is not run: a skip reason or an 'unclassified: ...' message)."""
    notes, kept, reasons = [], [], []
    for part in _split_and(cmd.text):
        reason = _skip_reason(part)
        if reason and not re.match(r"^python3? -m \S+ \.\.\. ", part):
            notes.append(f"not run: `{part}` ({reason})")
            reasons.append(reason)
        else:
            kept.append(part)
    if not kept:
        return None, [], "; ".join(reasons)
    bound = []
    for part in kept:
        m = re.match(r"^(python3? -m (\S+)) \.\.\. (.*)$", part)
        if m:  # `python -m M ... --more`: the previous command of M in this document, with more flags
            if m.group(2) not in previous:
                return None, notes, f"unclassified: '...' continues a command of {m.group(2)}, but none precedes it"
            base = re.sub(r"(--workdir=\S+)", rf"\1_{cmd.line}", previous[m.group(2)])  # a run of its own
            part = f"{base} {m.group(3)}"
            notes.append(f"`...` is the previous {m.group(2)} command of the document (in a workdir of its own)")
        if re.search(r"\s\[[^\]]*\]", part):
            part = re.sub(r"\s+\[[^\]]*\]", "", part)
            notes.append("optional [flags] dropped")
        loop = re.fullmatch(r"for (\w+) in (\S+)((?: \S+)*); do (.*); done", part)
        if loop:
            text, why = _bind_simple(loop.group(4), cmd.line)
            text = text and f"for {loop.group(1)} in {loop.group(2)}; do {text}; done"
            if loop.group(3):
                notes.append("the loop's first iteration")
        else:
            text, why = _bind_simple(part, cmd.line)
            if re.match(r"^python3? -m ", part):
                previous[part.split()[2]] = part
        if text is None:
            return None, notes, why
        bound.append(text)
    return " && ".join(bound), notes, None


# ---------------------------------------------------------------- what a command makes and uses


def _python_args(shell: str) -> tuple[str, list[str]] | None:
    """(module or script, arguments) of a bound `python -m M args` / `for ...; do python -m M args; done`."""
    body = re.sub(r"^for \w+ in \S+; do (.*); done$", r"\1", shell)
    words = shlex.split(body[_ENV_PREFIX.match(body).end() :])
    if words[:2] in (["python", "-m"], ["python3", "-m"]):
        return words[2], words[3:]
    if words[:1] == ["bash"]:
        return words[1], words[2:]
    return None


def _usage(shell: str) -> tuple[set[str], list[tuple[str, str, dict]]]:
    """(paths the command writes, stand-ins it needs: (kind, path, params)) from its flags."""
    parsed = _python_args(shell)
    if parsed is None:
        return set(), []
    tool, args = parsed
    sub = args[0] if args and not args[0].startswith("-") else ""
    produces, ensures = set(), []
    config = _flag(args, "config") or ""
    config_file, _, config_arg = config.partition(":")
    params = {"config": config} if config else {}
    if (w := _flag(args, "workdir")) and tool == "regnet_jax.train":
        produces.add(w)
    if (o := _flag(args, "output")) and tool in ("regnet_jax.convert", "regnet_jax.export"):
        produces.add(o)
    if (o := _flag(args, "out")) and tool == "regnet_jax.prepare":
        produces.add(o)
    if prepared := _flag(args, "config.dataset.prepared_dir") or _flag(args, "prepared_dir"):
        ensures.append(("prepared", prepared, params))
    if tool == "regnet_jax.sweep":
        out = _flag(args, "out")
        if sub == "setup" and out:
            produces.add(out)
        elif out:
            ensures.append(("sweep", out, {}))
            produces.add(out)
        for s in (_flag(args, "sweeps") or "").split(","):
            if s:
                ensures.append(("trained_sweep", s, {}))
        if r := _flag(args, "report_dir"):
            produces.add(r)
    if tool == "experiments/miniature.sh" and args:
        produces.add(args[0])
    if "/configs/" in config_file and not (REPO / config_file).exists():
        ensures.append(("sweep", config_file.split("/configs/")[0], {}))
    if config_file.endswith("finetune_example.py") and config_arg:
        ensures.append(("weights", config_arg, params))
    if init := _flag(args, "config.init_from"):
        ensures.append(("weights", init, params))
    if (d := _flag(args, "config.dataset.data_dir")) and _flag(args, "config.dataset.name") == "folder":
        ensures.append(("folder", d, {}))
    if ckpt := _flag(args, "checkpoint"):
        if tool == "regnet_jax.convert":
            ensures.append(("state_dict", ckpt, {"layout": _flag(args, "from"), **params}))
        else:
            ensures.append(("weights", ckpt, params))
    if tool == "regnet_jax.predict":
        ensures += [("image", a, {}) for a in args if not a.startswith("-")]
    return produces, ensures


def _group_key(p: Plan) -> tuple | None:
    """Commands that differ only in argument values share a key: of a python -m tool (one runs, the others parse),
    or of a script whose arguments are only where it writes (one runs, the others share its result)."""
    if p.ensures or " && " in p.shell:
        return None
    tool, args = _python_args(p.shell) or (None, [])
    if tool is None or (p.shell.startswith("bash ") and any(a.startswith("-") for a in args)):
        return None
    sub = args[0] if args and not args[0].startswith("-") else ""
    flags = tuple(sorted(a.split("=", 1)[0] for a in args if a.startswith("-")))
    return (
        tool,
        sub if tool.startswith("regnet_jax") else "",
        flags,
        sum(not a.startswith("-") for a in args) if tool.startswith("regnet_jax") else 0,
    )


def plan(commands: list[DocCommand]) -> tuple[list[Plan], list[tuple[DocCommand, str]]]:
    """The plan of every command, and the unclassified ones with the reason (see the module docstring)."""
    plans, unclassified = [], []
    previous: dict[str, dict[str, str]] = {}
    latest_workdir: dict[str, str] = {}
    for cmd in commands:
        shell, notes, why = _bind(cmd, previous.setdefault(cmd.doc, {}))
        if shell is None:
            if why.startswith("unclassified"):
                unclassified.append((cmd, why))
            else:
                plans.append(Plan(cmd, "skip", notes=notes or [why]))
            continue
        if "DIR_WORKDIR" in shell:
            shell = shell.replace("DIR_WORKDIR", latest_workdir.get(cmd.doc, "DIR"))
        if m := re.search(r"--workdir=(DIR_\d+)", shell):
            latest_workdir[cmd.doc] = m.group(1)
        produces, ensures = _usage(shell)
        plans.append(Plan(cmd, "run", shell, notes, ensures, produces, {path for _, path, _ in ensures}))
    _link(plans)
    return plans, unclassified


def _overlap(a: str, b: str) -> bool:
    """Whether two paths are the same or one lies inside the other."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _link(plans: list[Plan]) -> None:
    """Dependencies within each document; identical commands shared; arguments-only variants parsed or shared."""
    makers: dict[tuple[str, str], int] = {}
    needed: set[int] = set()
    for i, p in enumerate(plans):
        if p.action != "run":
            continue
        for (doc, made), j in makers.items():
            if doc == p.cmd.doc and any(_overlap(made, path) for path in p.consumes | p.produces):
                p.deps.append(j)
                needed.add(j)
        for path in p.produces:
            makers[(p.cmd.doc, path)] = i
        for path in p.consumes:  # the first user of a path nothing makes creates its stand-in
            makers.setdefault((p.cmd.doc, path), i)
    free = [i for i, p in enumerate(plans) if p.action == "run" and not p.deps and i not in needed]
    runs = [i for i, p in enumerate(plans) if p.action == "run"]
    first_of_text: dict[str, int] = {}
    first_of_group: dict[tuple, int] = {}
    for i in sorted(runs, key=lambda i: (i not in needed, i)):  # a command that must run anyway represents its copies
        first_of_text.setdefault(plans[i].shell, i)
    for i in sorted(runs, key=lambda i: (not (i in needed and plans[i].shell.startswith("bash ")), i)):
        if (key := _group_key(plans[i])) is not None:  # the first of a tool's commands runs in full
            first_of_group.setdefault(key, i)
    for i in free:
        p = plans[i]
        key = _group_key(p)
        if first_of_text[p.shell] != i:
            p.action, p.same_as = "same", first_of_text[p.shell]
        elif key is None or first_of_group[key] == i:
            continue
        elif p.shell.startswith("bash "):
            p.action, p.same_as = "same", first_of_group[key]
            p.notes.append(
                f"differs only in where it writes from {plans[first_of_group[key]].cmd.source}, whose result it shares"
            )
        else:
            p.action, p.same_as = "parse", first_of_group[key]
    for p in plans:
        p.deps = sorted(set(p.deps))
