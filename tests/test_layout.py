"""The package's layout: every module imports on its own, the import graph has no cycle and
follows the layers of ARCHITECTURE.md, and the names modules had before the regrouping
(``spksep_modules._MOVED``) still import, in Python and in yaml files."""

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

import spksep_modules
from spksep_modules import SpkSepError

PACKAGE = "spksep_modules"
PACKAGE_DIR = Path(spksep_modules.__file__).resolve().parent

# ARCHITECTURE.md, "Layers": a module may import its own level and the levels below;
# within level 2 a stage imports only itself (or an edge of ALLOWED).
LEVELS = {
    "audio": 0, "checkpoints": 0, "configurable": 0, "metrics": 0, "allocator": 0,
    "nnet": 0, "features": 0, "speakers": 0, "losses": 0, "data": 0, "models": 0,
    "loading": 1,
    "training": 2, "deploy": 2, "reports": 2,
    "cli": 3, "demo": 3,
}
ALLOWED = {
    # The spectrogram figure separates its test mixture exactly as `spksep separate` does
    # (chunked, fp32): one function, not a copy of it in reports/.
    ("spksep_modules.reports.plots", "spksep_modules.deploy.separate"),
}


# ------------------------------------------------------------------ the graph
def module_files(directory=PACKAGE_DIR, prefix=PACKAGE):
    """``{module name: (path, is_package)}`` of every module of the package, read from the
    file system (nothing imported)."""
    found = {prefix: (Path(directory) / "__init__.py", True)}
    for info in pkgutil.iter_modules([str(directory)]):
        name = f"{prefix}.{info.name}"
        if info.ispkg:
            found.update(module_files(Path(directory) / info.name, name))
        else:
            found[name] = (Path(directory) / f"{info.name}.py", False)
    return found


def _ancestors(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _known(dotted, modules):
    """The longest prefix of ``dotted`` that is a module of the package, or None."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imported_modules(name, path, is_package, modules):
    """The package's modules that ``name`` imports, at module level or inside functions.

    ``from P import X`` counts as an import of ``P.X`` when that is a module, of ``P``
    otherwise; importing ``P.Q.R`` also runs the ``__init__`` of every package above it,
    except the packages ``name`` itself is in (already being imported). Strings (the
    ``_MOVED`` table, doctests) are data, not imports.
    """
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            named = [_known(alias.name, modules) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            named = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                     else _known(source, modules) for alias in node.names]
        else:
            continue
        for target in filter(None, named):
            targets.add(target)
            targets |= _ancestors(target) - _ancestors(name) - {name}
    targets.discard(name)
    return targets


def import_graph():
    modules = module_files()
    return {name: imported_modules(name, path, is_pkg, modules)
            for name, (path, is_pkg) in modules.items()}


def find_cycle(graph):
    """One import cycle of ``graph`` (``{node: set of nodes}``) as ``[a, b, ..., a]``, or
    None when there is none."""
    state = {}  # node -> "active" (on the current path) or "done"
    path = []

    def visit(node):
        state[node] = "active"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "active":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def level_of(module):
    if module == PACKAGE:
        return 0  # SpkSepError, one_line: below everything
    return LEVELS.get(module.split(".")[1])


def layer_violations(graph, allowed=ALLOWED):
    """The edges ``a -> b`` of ``graph`` that go up a level, or across stages of level 2,
    and are not in ``allowed``."""
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            la, lb = level_of(a), level_of(b)
            stage_a, stage_b = a.split(".")[1:2], b.split(".")[1:2]
            if lb < la or (lb == la and (la != 2 or stage_a == stage_b)):
                continue
            if any(x == a and (b == y or b in _ancestors(y)) for x, y in allowed):
                continue  # an allowed edge, or the packages its import runs
            bad.append(f"{a} (level {la}) -> {b} (level {lb})")
    return bad


# ------------------------------------------------------------------ 1. every module imports
def test_every_module_imports_in_a_fresh_interpreter():
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import spksep_modules
        failed = []
        names = [m.name for m in pkgutil.walk_packages(
            spksep_modules.__path__, "spksep_modules.", onerror=lambda n: failed.append(n))]
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as err:
                failed.append(f"{name}: {type(err).__name__}: {err}")
        print(len(names))
        print("\\n".join(failed))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, *failed = proc.stdout.strip().splitlines()
    assert not [line for line in failed if line], failed
    assert int(count) == len(module_files()) - 1  # all of them (the root is not listed)


# ------------------------------------------------------------------ 2. the import graph
def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    # module level, function level, a package through `from package import submodule`
    assert "spksep_modules.loading" in graph["spksep_modules.deploy.separate"]
    assert "spksep_modules.deploy.separate" in graph["spksep_modules.cli"]  # in _separate()
    assert "spksep_modules.models" in graph["spksep_modules.loading"]  # runs models/__init__
    assert "spksep_modules.models.conv_tasnet" in graph["spksep_modules.models"]
    # the _MOVED table's strings are no imports
    assert not any(m.startswith(("spksep_modules.training", "spksep_modules.deploy"))
                   for m in graph["spksep_modules"])


def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "d"}, "b": set(), "d": {"e"}, "e": {"d"}}) == ["d", "e", "d"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_follow_the_layers():
    graph = import_graph()
    unplaced = sorted(m for m in graph if level_of(m) is None)
    assert not unplaced, f"modules with no level (LEVELS, ARCHITECTURE.md): {unplaced}"
    bad = layer_violations(graph)
    assert not bad, "imports against the layers of ARCHITECTURE.md:\n" + "\n".join(bad)
    used = {(a, b) for a, targets in graph.items() for b in targets}
    assert ALLOWED <= used, f"allowed edges no module uses any more: {ALLOWED - used}"


def test_the_checks_catch_an_injected_upward_import():
    graph = {name: set(targets) for name, targets in import_graph().items()}
    graph["spksep_modules.models.speechbrain_folder"].add("spksep_modules.loading")  # as before
    cycle = find_cycle(graph)
    assert cycle is not None and "spksep_modules.loading" in cycle
    assert layer_violations(graph) == [
        "spksep_modules.models.speechbrain_folder (level 0) -> spksep_modules.loading (level 1)"]
    graph["spksep_modules.deploy.package"].add("spksep_modules.training.recipe")
    assert any("deploy.package" in edge for edge in layer_violations(graph))


# ------------------------------------------------------------------ 3. the old names
@pytest.mark.parametrize("old", sorted(spksep_modules._MOVED))
def test_an_old_module_name_is_the_module_itself(old):
    new = spksep_modules._MOVED[old]
    assert new not in spksep_modules._MOVED  # no chains
    assert not (PACKAGE_DIR / (old.split(".", 1)[1].replace(".", "/") + ".py")).exists()
    assert importlib.import_module(old) is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]
    parent, name = old.rsplit(".", 1)
    assert getattr(sys.modules[parent], name) is sys.modules[new]


def test_old_names_in_a_fresh_interpreter():
    code = textwrap.dedent("""
        import spksep_modules.brains
        import spksep_modules.training.brains
        assert spksep_modules.brains is spksep_modules.training.brains
        from spksep_modules.inference import PretrainedSeparator
        from spksep_modules.deploy.separate import PretrainedSeparator as NewName
        assert PretrainedSeparator is NewName
        from spksep_modules.runs import budget_spent
        import spksep_modules.reports.run_logs as run_logs
        assert budget_spent is run_logs.budget_spent
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_unknown_names_still_fail_to_import():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("spksep_modules.no_such_module")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("spksep_modules.brainz")
    with pytest.raises(ModuleNotFoundError):  # an old name is a module, not a package
        importlib.import_module("spksep_modules.brains.nothing")
    with pytest.raises(ImportError):
        exec("from spksep_modules.inference import load_nothing", {})


def test_old_names_in_yaml_tags():
    from spksep_modules.deploy.separate import separate_waveform
    from spksep_modules.training.budget import TrainingBudget

    built = load_hyperpyyaml(textwrap.dedent("""
        separate: !name:spksep_modules.inference.separate_waveform
        budget: !new:spksep_modules.budget.TrainingBudget
            minutes: 2
    """))
    assert built["separate"] is separate_waveform
    assert isinstance(built["budget"], TrainingBudget)
    with pytest.raises(ImportError):
        load_hyperpyyaml("f: !name:spksep_modules.inference.nothing_of_that_name\n")


TINY = dict(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
OLD_YAML = """sample_rate: 8000
init_from: null
training_budget: !new:spksep_modules.budget.TrainingBudget
    minutes: 5
separator: !apply:spksep_modules.models.speechbrain_folder.initialised
    separator: !new:spksep_modules.models.ConvTasNet
""" + "".join(f"        {k}: {v}\n" for k, v in TINY.items()) + """    init_from: !ref <init_from>
    sample_rate: !ref <sample_rate>
"""


def _old_run(folder, yaml_text):
    """A run folder as spksep 0.1 saved it: its checkpoint describes no model."""
    from spksep_modules.checkpoints import AtomicCheckpointer
    from spksep_modules.models import ConvTasNet

    model = ConvTasNet(**TINY)
    os.makedirs(folder)
    Path(folder, "hyperparams.yaml").write_text(yaml_text)
    saver = AtomicCheckpointer(os.path.join(folder, "save"), {"separator": model})
    path = saver.save_checkpoint(meta={"loss": -5.0}).paramfiles["separator"]
    state = torch.load(path, weights_only=False)
    del state["_extra_state"]
    torch.save(state, path)
    return model


def test_an_old_run_folder_naming_moved_functions_still_loads(tmp_path):
    from spksep_modules.loading import load_separator

    model = _old_run(tmp_path / "old", OLD_YAML)
    loaded, rate = load_separator(str(tmp_path / "old"))
    mix = torch.randn(1, 800)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mix), model.eval()(mix))
    assert rate == 8000
    # a name no version of this code has: refused in the one "retrain" line
    _old_run(tmp_path / "gone", OLD_YAML.replace("speechbrain_folder.initialised",
                                                 "speechbrain_folder.initialized"))
    with pytest.raises(SpkSepError, match=r"gone: saved by an older spksep whose weights this "
                                          r"version cannot load; retrain it with"):
        load_separator(str(tmp_path / "gone"))


def test_a_run_started_before_the_move_resumes(tmp_path):
    """A run folder's hyperparams.yaml written with the old names is the same run as the
    recipe's yaml now (resuming it is not refused as changed hyperparameters)."""
    from spksep_modules.training.recipe import check_same_run, compose_hparams

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(OLD_YAML.replace("spksep_modules.budget.", "spksep_modules.training.budget.")
                      .replace("spksep_modules.models.speechbrain_folder.initialised",
                               "spksep_modules.loading.initialised"))
    run = tmp_path / "run"
    (run / "save" / "CKPT+1").mkdir(parents=True)
    (run / "hyperparams.yaml").write_text(OLD_YAML)
    assert check_same_run(compose_hparams(recipe), recipe, "", str(run)) == []
    # and a user's yaml with the old names composes to today's
    old_recipe = tmp_path / "old_recipe.yaml"
    old_recipe.write_text(OLD_YAML)
    assert compose_hparams(old_recipe) == compose_hparams(recipe)
    (run / "hyperparams.yaml").write_text(OLD_YAML.replace("minutes: 5", "minutes: 6"))
    with pytest.raises(SpkSepError, match=r"changed: training_budget"):
        check_same_run(compose_hparams(recipe), recipe, "", str(run))
