"""The experiments: which cells (runs, as :class:`~bmdbench.spec.RunSpec`) make each of them.

A paper table (Tables 1–4, with the values the paper reports for its cells, and ``sota``:
the paper's methods and later ones), a label-budget curve (Oliver et al., 2018: each
method at several numbers of labels, :mod:`bmdbench.budgets` reports it) or a custom grid
(methods × backbones). ``bmdbench grid`` runs the cells (:mod:`bmdbench.grid`) and
``bmdbench table`` reports them (:mod:`bmdbench.tables`, :mod:`bmdbench.budgets`): both
name them here, so that a report finds exactly the runs the grid made without importing
what runs them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bmdbench import store
from bmdbench.errors import ConfigError
from bmdbench.options import check_positive
from bmdbench.spec import RunSpec, check_names

PAPER_BACKBONE = "vgg11_bn_se"  # the backbone of Tables 2–4 (VGG-11-BN with SE blocks)


@dataclass(frozen=True)
class TableCell:
    label: str  # the paper's name for the cell
    method: str
    backbone: str | None = None  # None: the table's backbone (PAPER_BACKBONE unless replaced)
    sets: tuple[tuple[str, str], ...] = ()  # --set overrides that define the cell
    paper_r: float | None = None  # the paper's reported test R and RMSE (g/cm²)
    paper_rmse: float | None = None
    group: str = ""  # Table 3: the column group (Triplet Loss | ATL)
    control: str | None = None  # label of the cell of this stage-2 cell's supervised control


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    cells: tuple[TableCell, ...]
    reference: str  # label of the cell every other cell is tested against
    layout: str  # "columns": cells are columns (Tables 1, 2); "rows"; "groups" (Table 3)
    raw_scale: bool = False  # z-scored runs: show the raw-target-scale λ and m beside each margin


def _margins(method: str, group: str, rs: list[float], rmses: list[float]) -> list[TableCell]:
    return [
        TableCell(f"{m}", method, None, ((f"{method}.margin", str(m)),), r, e, group)
        for m, r, e in zip((0.1, 0.3, 0.5, 0.7, 1.0), rs, rmses, strict=True)
    ]


_BASELINE = TableCell("Baseline", "baseline", None, (), 0.8520, 0.0831)
# the equal-compute supervised controls (bmdbench.methods.control): each stage-2 row's ΔR
# against the control of its own parent is the gain from the unlabeled images
_CONTROL = TableCell("Control", "control")
_CONTROL_ATL = TableCell("Control (ATL)", "control_atl")
TABLE2_CELLS = (
    _BASELINE,
    _CONTROL,
    TableCell("Π-model", "pi_model", None, (), 0.8637, 0.0828, control="Control"),
    TableCell("Temp. Ensemble", "temporal_ensembling", None, (), 0.8722, 0.0832, control="Control"),
    TableCell("Mean Teacher", "mean_teacher", None, (), 0.8600, 0.0817, control="Control"),
    _CONTROL_ATL,
    TableCell("Proposed", "proposed", None, (), 0.8805, 0.0758, control="Control (ATL)"),
)

TABLES: dict[str, PaperTable] = {
    "table1": PaperTable(
        "table1",
        "Table 1. The baseline (MSE) on different backbones",
        (
            TableCell("VGG-11", "baseline", "vgg11_bn", (), 0.8520, 0.0831),
            TableCell("VGG-13", "baseline", "vgg13_bn", (), 0.8501, 0.0855),
            TableCell("VGG-16", "baseline", "vgg16_bn", (), 0.8335, 0.1158),
            TableCell("ResNet-18", "baseline", "resnet18", (), 0.8398, 0.0883),
            TableCell("ResNet-34", "baseline", "resnet34", (), 0.8445, 0.0946),
            TableCell("ResNet-50", "baseline", "resnet50", (), 0.8448, 0.1047),
        ),
        reference="VGG-11",
        layout="columns",
    ),
    "table2": PaperTable(
        "table2",
        "Table 2. Semi-supervised methods",
        TABLE2_CELLS,
        reference="Baseline",
        layout="columns",
    ),
    "table3": PaperTable(
        "table3",
        "Table 3. Triplet loss vs adaptive triplet loss (ATL) over margins",
        (
            *_margins(
                "triplet",
                "Triplet Loss",
                [0.8515, 0.8459, 0.8538, 0.8549, 0.8522],
                [0.0917, 0.1000, 0.0866, 0.0823, 0.0829],
            ),
            *_margins(
                "atl",
                "ATL",
                [0.8563, 0.8657, 0.8670, 0.8565, 0.8524],
                [0.1013, 0.0814, 0.0806, 0.0836, 0.1215],
            ),
            TableCell("Baseline", "baseline", None, (), 0.8520, 0.0831, "Baseline"),
        ),
        reference="Baseline",
        layout="groups",
        raw_scale=True,
    ),
    "table4": PaperTable(
        "table4",
        "Table 4. Ablation of the adaptive triplet loss and self-training",
        (
            _BASELINE,
            TableCell("Baseline + ATL", "atl", None, (), 0.8670, 0.0806),
            _CONTROL,
            TableCell("SSL", "pseudo_label", None, (), 0.8605, 0.0809, control="Control"),
            _CONTROL_ATL,
            TableCell(
                "SSL + ATL", "pseudo_label_atl", None, (), 0.8772, 0.0767, control="Control (ATL)"
            ),
            TableCell(
                "Proposed w/o Consistency",
                "proposed_no_consistency",
                None,
                (),
                0.8776,
                0.0761,
                control="Control (ATL)",
            ),
            TableCell("Proposed", "proposed", None, (), 0.8805, 0.0758, control="Control (ATL)"),
        ),
        reference="Baseline",
        layout="rows",
    ),
    "sota": PaperTable(
        "sota",
        "Semi-supervised regression methods since the paper, beside the paper's",
        (
            *TABLE2_CELLS,
            TableCell("UCVME", "ucvme", control="Control"),
            TableCell("MixMatch", "mixmatch", control="Control"),
            TableCell("RDA", "rda", control="Control"),
            TableCell("RankUp", "rankup", control="Control"),
            TableCell("RankUp + RDA", "rankup_rda", control="Control"),
            TableCell("HPL", "hpl", control="Control"),
            TableCell("CLSS", "clss", control="Control"),
        ),
        reference="Baseline",
        layout="rows",
    ),
}

PAPER = ("table1", "table2", "table3", "table4")
"""The paper's own tables: what ``all`` names."""

METHOD_TABLES = ("table2", "table4", "sota")
"""The tables of semi-supervised methods: their comparisons form one Holm family."""


def family(table: PaperTable) -> tuple[str, tuple[TableCell, ...]]:
    """The Holm family of ``table``'s comparisons: its name and every cell it covers.

    The methods tables (:data:`METHOD_TABLES`) share one family, the union of their cells:
    a method's ΔR against its control (or the baseline) is one comparison, with one p, in
    every table that shows it. Tables 1 and 3 are families of their own.
    """
    if table.name not in METHOD_TABLES:
        return table.name, table.cells
    cells: dict[TableCell, None] = {}
    for name in METHOD_TABLES:
        cells.update(dict.fromkeys(TABLES[name].cells))
    return "methods", tuple(cells)


def select(name: str) -> list[PaperTable]:
    """``table1`` … ``table4``, ``all`` (those four) or ``sota``."""
    if name == "all":
        return [TABLES[t] for t in PAPER]
    if name not in TABLES:
        raise ConfigError(f"unknown table {name!r}", f"use one of: {', '.join(TABLES)}, all")
    return [TABLES[name]]


# Label-budget curves: every method at every budget (``split.train``) over the seeds, and
# one fully supervised ceiling, the baseline with every labeled training image. What a
# budget leaves out of the labeled training images becomes unlabeled images
# (:mod:`bmdbench.data.splits`); the validation and test images are the same at every budget
# (they depend on ``split.seed`` only), and each budget has its own stage-1 parents (the
# budget is part of their identity).

REFERENCE = "baseline"  # every budget's methods are compared with the baseline at that budget
CEILING = "all"  # the budget label of the fully supervised ceiling


def parse_budgets(text: str | None) -> list[float]:
    """``"50,100,200"`` → ``[50.0, 100.0, 200.0]``: counts (≥ 1) or fractions (< 1), each once."""
    try:
        budgets = [float(v) for v in (text or "").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--n-labeled {text!r} is not a list of numbers", "give e.g. --n-labeled 50,100,200"
        ) from None
    if not budgets or len(set(budgets)) != len(budgets) or min(budgets) <= 0:
        raise ConfigError(
            f"--n-labeled {text!r} needs distinct positive budgets",
            "give e.g. --n-labeled 50,100,200",
        )
    return sorted(budgets)


def methods_with_reference(methods: Sequence[str], base: RunSpec) -> list[str]:
    """The methods, the baseline first (added when missing): it is every budget's reference;
    then, for each stage-2 method, the control of its stage-1 parent (its equal-compute
    supervised control, :mod:`bmdbench.methods.control`), each once."""
    from bmdbench.methods.control import control_for  # torch: once a curve is resolved

    listed = [REFERENCE, *(m for m in methods if m != REFERENCE)]
    controls = []
    for method in listed:
        parent = base.but(method=method).config.parent
        control = control_for(parent.method) if parent is not None else None
        if control is not None and control not in listed and control not in controls:
            controls.append(control)
    return [*listed, *controls]


def control_of(method: str, base: RunSpec) -> str | None:
    """The control a method of the curve is compared with (None for a stage-1 method)."""
    from bmdbench.methods.control import control_for  # torch: once a curve is resolved

    parent = base.but(method=method).config.parent
    if parent is None or base.but(method=method).config.method == control_for(parent.method):
        return None
    return control_for(parent.method)


def budget_cells(
    methods: Sequence[str],
    budgets: Sequence[float],
    seeds: int,
    sets: dict[str, str],
    base: RunSpec,
) -> list[RunSpec]:
    """Every method × budget × seed (the baseline included), then the ceiling's seeds."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} is not a positive count", "give --seeds 1 or more")
    if "split.train" in sets:
        raise ConfigError(
            "--set split.train is the budget a label-budget grid varies",
            "give the budgets with --n-labeled 50,100,200",
        )
    cells = [
        base.but(method=m, seed=s, settings={**sets, "split.train": b})
        for b in budgets
        for m in methods_with_reference(methods, base)
        for s in range(seeds)
    ]
    return cells + [base.but(method=REFERENCE, seed=s, settings=sets) for s in range(seeds)]


def cells_for(
    table: str | None,
    methods: Sequence[str],
    backbones: Sequence[str],
    seeds: int,
    sets: dict[str, str],
    base: RunSpec,
    budgets: Sequence[float] = (),
) -> list[RunSpec]:
    """The cells ``bmdbench grid`` (and ``bmdbench table``) names: a paper table's
    (``table``: table1..table4, all or sota; ``backbones`` at most one, replacing the paper's in
    Tables 2–4), a label-budget grid's (``table`` "labels": every method at every one of
    ``budgets``, on one backbone, :func:`budget_cells`) or a custom grid's (every method ×
    backbone), each over seeds 0..seeds-1."""
    check_positive("--seeds", seeds)
    check_names(methods, backbones)  # every name before any cell is resolved
    if table == "labels":
        if not methods or not budgets or len(backbones) > 1:
            raise ConfigError(
                "a label-budget grid needs --methods, --n-labeled and at most one --backbones",
                "e.g. bmdbench grid labels --methods baseline,mean_teacher "
                "--n-labeled 50,100,200 --seeds 3",
            )
        backbone = backbones[0] if backbones else PAPER_BACKBONE
        return budget_cells(methods, budgets, seeds, sets, replace(base, backbone=backbone))
    if budgets:
        raise ConfigError(
            "--n-labeled with a list of budgets goes with the label-budget grid",
            "run bmdbench grid labels --methods ... --n-labeled 50,100,200, "
            "or set one budget with --set split.train=N",
        )
    if table is not None:
        if methods:
            raise ConfigError(
                "a paper table and --methods were both given",
                "give either TABLE (table1..table4, all) or --methods/--backbones",
            )
        if len(backbones) > 1:
            raise ConfigError(
                "a paper table takes at most one --backbones name",
                "give one backbone to replace vgg11_bn_se in Tables 2–4",
            )
        return table_cells(select(table), seeds, sets, base, backbones[0] if backbones else None)
    if not methods or not backbones:
        raise ConfigError(
            "a custom grid needs --methods and --backbones",
            "e.g. bmdbench grid --methods baseline,atl --backbones vgg11_bn --seeds 3, "
            "or name a paper table: bmdbench grid table2",
        )
    return custom_cells(methods, backbones, seeds, sets, base)


def custom_cells(
    methods: Sequence[str],
    backbones: Sequence[str],
    seeds: int,
    sets: dict[str, str],
    base: RunSpec,
) -> list[RunSpec]:
    """Every method × backbone × seed, with the same ``sets``."""
    return [
        base.but(method=m, backbone=b, seed=s, settings=sets)
        for m in methods
        for b in backbones
        for s in range(seeds)
    ]


def table_cells(
    tables: Sequence[PaperTable],
    seeds: int,
    sets: dict[str, str],
    base: RunSpec,
    backbone: str | None,
) -> list[RunSpec]:
    """The cells of the paper's tables; ``backbone`` replaces the paper's in Tables 2–4."""
    cells = []
    for table in tables:
        for tc in table.cells:
            for seed in range(seeds):
                chosen = tc.backbone or backbone or PAPER_BACKBONE
                cells.append(
                    base.but(
                        method=tc.method,
                        backbone=chosen,
                        seed=seed,
                        settings={**sets, **dict(tc.sets)},
                    )
                )
    return cells


def with_parents(cells: Sequence[RunSpec]) -> list[RunSpec]:
    """The cells plus their stage-1 parents, stage-1 cells first, each once, order kept."""
    stage1: dict[str, RunSpec] = {}
    stage2: dict[str, RunSpec] = {}
    for cell in cells:
        parent = cell.parent()
        if parent is None:
            stage1.setdefault(cell.key, cell)
        else:
            stage1.setdefault(parent.key, parent)
            stage2.setdefault(cell.key, cell)
    return [*stage1.values(), *stage2.values()]


@dataclass(frozen=True)
class Request:
    """What a ``bmdbench grid`` was asked for: enough to name its cells again
    (:meth:`cells`) and so to report it (``bmdbench report`` reads every request of a store).
    Written beside the grid's event log, ``OUT/grids/<grid>.request.json``."""

    table: str | None  # table1..table4, all, sota, labels; None: a custom grid
    methods: tuple[str, ...]
    backbones: tuple[str, ...]
    seeds: int
    sets: dict[str, str] = field(default_factory=dict)
    budgets: tuple[float, ...] = ()
    preset: str = "quick"
    data: str = "synthetic"
    unlabeled: str | None = None

    @property
    def base(self) -> RunSpec:
        """The spec the cells start from (method and backbone set per cell)."""
        return RunSpec("", "", self.preset, self.data, self.unlabeled, 0, "auto")

    def cells(self) -> list[RunSpec]:
        return cells_for(
            self.table,
            self.methods,
            self.backbones,
            self.seeds,
            self.sets,
            self.base,
            self.budgets,
        )

    def write(self, out: Path, grid: str) -> None:
        store.write_text(request_path(out, grid), json.dumps(asdict(self), indent=1) + "\n")


def request_path(out: Path, grid: str) -> Path:
    return out / "grids" / f"{grid}.request.json"


def read_requests(out: Path) -> list[Request]:
    """Every grid request under ``out/grids``, oldest first, each once (a grid run again
    with the same options writes the same request)."""
    paths = sorted((out / "grids").glob("*.request.json"), key=lambda p: p.stat().st_mtime)
    requests: list[Request] = []
    for path in paths:
        raw = json.loads(path.read_text())
        request = Request(
            **{
                **raw,
                "methods": tuple(raw["methods"]),
                "backbones": tuple(raw["backbones"]),
                "budgets": tuple(raw["budgets"]),
            }
        )
        if request not in requests:
            requests.append(request)
    return requests
